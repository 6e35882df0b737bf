"""Reading: every format and compression, and every kind of bad record, counted and never raised."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from llmops.prepare.document import Document
from llmops.prepare.sources import discover
from llmops.prepare.steps.readers import Bad, Reader, read_unit
from llmops.spec.prepare import InputSpec
from llmops_testing.prepare import make_corpus, write_jsonl


def records(path: Path, **spec) -> list[Document | Bad]:
    units, _ = discover(InputSpec(paths=[str(path)], **spec))
    return [r for u in units for r, _ in read_unit(u, InputSpec(paths=[str(path)], **spec))]


def test_each_bad_jsonl_record_gets_its_reason_and_the_good_ones_survive(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"id": "ok-1", "text": "first good document"}).encode(),
        b'{"id": "bad-utf8", "text": "caf\xe9"}',
        b'{"id": "truncated", "text": "no end',
        b'["a list", "not an object"]',
        json.dumps({"id": "no-text", "body": "x"}).encode(),
        json.dumps({"id": "number", "text": 42}).encode(),
        json.dumps({"id": "blank", "text": "  \n\t "}).encode(),
        json.dumps({"id": "huge", "text": "x" * 5000}).encode(),
        b'{"id": "surrogate", "text": "\\ud800 lone"}',
        b"",
        json.dumps({"text": "good document without an id"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    got = records(path, max_document_bytes=1000)
    reasons = [r.reason if isinstance(r, Bad) else r.id for r in got]
    offset = sum(len(x) + 1 for x in lines[:10])
    assert reasons == ["ok-1", "invalid_utf8", "malformed_json", "malformed_json", "missing_text_field",
                       "text_not_a_string", "empty", "too_large", "invalid_utf8", f"{path}#{offset}"]
    bad = got[1]
    assert bad.source == str(path) and bad.position == len(lines[0]) + 1 and "caf" in bad.raw


def test_a_line_longer_than_the_limit_is_skipped_without_losing_the_next(tmp_path):
    # Past 3 x max_document_bytes + 1 MiB a line is not even parsed: it is skipped in pieces.
    path = write_jsonl(tmp_path / "long.jsonl", [{"text": "y" * 1_200_000}, {"text": "z" * 5000},
                                                 {"id": "after", "text": "still read"}])
    got = records(path, max_document_bytes=1000)
    assert isinstance(got[0], Bad) and got[0].reason == "too_large" and got[0].detail == "a line of 1,200,013 bytes"
    assert isinstance(got[1], Bad) and got[1].reason == "too_large" and got[1].detail.startswith("5,000 bytes")
    assert isinstance(got[2], Document) and got[2].id == "after"


def test_compressed_files_read_like_plain_ones(tmp_path):
    docs = make_corpus(30, seed=1)
    plain = write_jsonl(tmp_path / "a.jsonl", docs)
    data = plain.read_bytes()
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    texts = {name: [(d.id, d.text, d.position) for d in records(tmp_path / name)]
             for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst")}
    assert texts["a.jsonl"] == texts["b.jsonl.gz"] == texts["c.jsonl.zst"]
    assert [t[0] for t in texts["a.jsonl"]] == [d["id"] for d in docs]


def test_a_truncated_archive_keeps_what_was_read_and_quarantines_the_rest(tmp_path):
    data = gzip.compress(b"".join(json.dumps(d).encode() + b"\n" for d in make_corpus(200, seed=2)))
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    got = records(tmp_path / "cut.jsonl.gz")
    assert 0 < sum(isinstance(r, Document) for r in got) < 200
    assert isinstance(got[-1], Bad) and got[-1].reason == "unreadable_file" and "EOFError" in got[-1].detail


def test_chunks_of_a_large_file_read_every_line_exactly_once(tmp_path):
    docs = make_corpus(200, seed=4)
    path = write_jsonl(tmp_path / "big.jsonl", docs)
    units, _ = discover(InputSpec(paths=[str(path)], chunk_bytes=65536))
    assert len(units) > 2 and units[0].end == units[1].start
    got = [r for u in units for r, _ in read_unit(u, InputSpec(paths=[str(path)]))]
    assert [d.id for d in got] == [d["id"] for d in docs]


def test_text_files_are_one_document_each_and_bad_bytes_are_quarantined(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("A whole file is one document.\nWith two lines.")
    (tmp_path / "docs" / "sub" / "b.md").write_bytes("b file \u00e9".encode())
    (tmp_path / "docs" / "sub" / "c.rst").write_bytes(b"latin-1 \xe9 bytes")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "docs" / ".hidden.txt").write_text("never read")
    units, skipped = discover(InputSpec(paths=[str(tmp_path / "docs")]))
    assert [Path(u.path).name for u in units] == ["a.txt", "b.md", "c.rst"]
    assert [Path(p).name for p in skipped] == ["image.png"]
    got = [r for u in units for r, _ in read_unit(u, InputSpec(paths=["x"]))]
    assert got[0].text.endswith("With two lines.") and got[0].id == units[0].source
    assert got[1].text == "b file \u00e9"
    assert isinstance(got[2], Bad) and got[2].reason == "invalid_utf8"


def test_parquet_row_groups_are_units_with_ids_and_missing_texts_reported(tmp_path):
    table = pa.table({"id": ["p0", "p1", "p2", "p3"], "text": ["zero", None, "two", "three"]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    units, _ = discover(InputSpec(paths=[str(tmp_path / "t.parquet")]))
    assert [(u.start, u.end) for u in units] == [(0, 1), (1, 2)]
    got = records(tmp_path / "t.parquet")
    assert [r.id if isinstance(r, Document) else r.reason for r in got] == ["p0", "missing_text_field", "p2", "p3"]
    assert got[3].position == 3
    pq.write_table(pa.table({"body": ["x", "y"]}), tmp_path / "wrong.parquet")
    assert [r.reason for r in records(tmp_path / "wrong.parquet")] == ["missing_text_field"] * 2
    got = records(tmp_path / "wrong.parquet", text_field="body")
    assert [r.id for r in got] == [f"{tmp_path / 'wrong.parquet'}#0", f"{tmp_path / 'wrong.parquet'}#1"]


def test_a_large_parquet_row_group_is_read_in_batches(tmp_path):
    """A row group of 64 MB of text is read a few MB at a time, not whole and then again as Python strings."""
    import tracemalloc

    texts = [f"{i:05d} " + "word " * 3_200 for i in range(4_000)]  # 16 kB each
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts}), tmp_path / "big.parquet",
                   row_group_size=len(texts))
    spec = InputSpec(paths=[str(tmp_path / "big.parquet")])
    (unit,), _ = discover(spec)
    tracemalloc.start()
    try:
        count = 0
        for i, (r, _) in enumerate(read_unit(unit, spec)):  # one at a time, as the clean phase takes them
            assert r.id == f"d{i}" and r.text.startswith(f"{i:05d} ") and r.position == i
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == len(texts)
    assert peak < 24 << 20, f"peak {peak:,} bytes"  # the row group as Python strings: 64 MB


def test_the_builtin_corpus_is_this_pythons_docstrings():
    units, _ = discover(InputSpec(builtin="python-docstrings"))
    assert not any("/test/" in f"/{u.source}" or u.source.startswith("test") for u in units)
    json_unit = next(u for u in units if u.source == "json/__init__.py")
    docs = {d.id: d.text for d, _ in read_unit(json_unit, InputSpec(builtin="python-docstrings"))}
    import json as module

    assert docs["python-docstrings:json/__init__.py:<module>"] == module.__doc__.strip()
    assert "python-docstrings:json/__init__.py:dumps" in docs


def test_the_reader_step_counts_quarantines_and_reports_progress(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "good one"}, "oops", {"text": "good two"}])
    units, _ = discover(InputSpec(paths=[str(path)]))
    quarantined, progress = [], []
    reader = Reader(units, InputSpec(paths=[str(path)]), quarantined.append, progress.append)
    docs = list(reader.run(None, 0, 1))
    assert [d.text for d in docs] == ["good one", "good two"]
    assert [q.reason for q in quarantined] == ["malformed_json"]
    s = reader.stats
    assert (s.docs_in, s.docs_out, dict(s.dropped)) == (3, 2, {"malformed_json": 1})
    assert s.bytes_in == path.stat().st_size and sum(progress) == path.stat().st_size


@pytest.mark.parametrize("entry, message", [
    ("missing.jsonl", "no such file or folder"),
    ("*.nothing", "matches no file"),
    ("data.csv", "cannot tell the format"),
])
def test_bad_input_paths_name_the_entry_and_the_problem(tmp_path, monkeypatch, entry, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("a,b\n")
    from llmops.errors import UserError

    with pytest.raises(UserError, match=message) as exc:
        discover(InputSpec(paths=[entry]))
    assert "input.paths[0]" in exc.value.message and exc.value.fix


def test_input_that_could_crash_a_reader_is_quarantined_instead(tmp_path):
    good = [json.dumps({"id": f"ok-{i}", "text": f"document number {i}"}) for i in range(200)]
    deep = tmp_path / "deep.jsonl"
    deep.write_text("\n".join([good[0], "[" * 100_000 + "]" * 100_000, good[1]]) + "\n")
    got = records(deep)
    assert [r.reason if isinstance(r, Bad) else r.id for r in got] == ["ok-0", "malformed_json", "ok-1"]

    garbage = tmp_path / "garbage.jsonl.zst"
    garbage.write_bytes(b"this is not zstd data" * 100)
    (bad,) = records(garbage)
    assert bad.reason == "unreadable_file" and "not zstd" in bad.detail

    whole = zstandard.ZstdCompressor().compress(("\n".join(good) + "\n").encode())
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(whole[: len(whole) * 2 // 3])  # a download that stopped early
    got = records(cut)
    assert isinstance(got[-1], Bad) and got[-1].reason == "unreadable_file" and "truncated" in got[-1].detail
    assert all(isinstance(r, Document) for r in got[:-1])


def test_a_symlink_loop_reads_each_file_once(tmp_path):
    folder = tmp_path / "corpus" / "a"
    write_jsonl(folder / "docs.jsonl", make_corpus(3))
    (folder / "up").symlink_to("..")  # a/up -> corpus: glob.glob's ** followed it forty levels deep
    for entry in (str(tmp_path / "corpus" / "**" / "*.jsonl"), str(tmp_path / "corpus")):
        units, _ = discover(InputSpec(paths=[entry]))
        assert [u.path for u in units] == [str(folder / "docs.jsonl")], entry


def test_ids_and_file_names_that_are_not_utf8_are_quarantined_or_escaped(tmp_path):
    """An id with a lone surrogate (a "\\ud800" escape) is quarantined like such a text; a file name that is
    not UTF-8 names its documents with the bytes escaped (no output file could hold it as it is)."""
    path = tmp_path / "ids.jsonl"
    path.write_text("\n".join([json.dumps({"id": "fine", "text": "a document"}),
                               '{"id": "\\ud800", "text": "its id cannot be written"}',
                               json.dumps({"id": "also-fine", "text": "another document"})]) + "\n")
    got = records(path, id_field="id")
    assert [r.reason if isinstance(r, Bad) else r.id for r in got] == ["fine", "invalid_utf8", "also-fine"]
    import os

    odd = Path(os.fsdecode(bytes(tmp_path / "corpus") + b"/caf\xe9.jsonl"))  # Latin-1's e acute
    odd.parent.mkdir()
    odd.write_text(json.dumps({"text": "from a file named in Latin-1"}) + "\n")
    (doc,) = records(odd.parent)
    assert doc.source.endswith("caf\\xe9.jsonl") and doc.id.encode("utf-8")


def test_a_unit_inside_one_huge_line_skips_it_in_bounded_pieces(tmp_path):
    """A unit that starts inside a line (a minified JSON file of tens of MB read as JSONL) skips the rest of
    that line a piece at a time, not by reading it whole into memory."""
    import tracemalloc

    path = tmp_path / "one-line.jsonl"
    with open(path, "w") as f:
        f.write('{"text": "' + "x" * (40 << 20) + '"}\n')
        f.write(json.dumps({"id": "after", "text": "the line after it"}) + "\n")
    spec = InputSpec(paths=[str(path)], chunk_bytes=8 << 20, max_document_bytes=1 << 20)
    units, _ = discover(spec)
    assert len(units) > 2
    tracemalloc.start()
    try:
        got = [r for u in units[1:] for r, _ in read_unit(u, spec)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.id for r in got] == ["after"]  # in the unit where it starts; the huge line is the first unit's
    assert peak < 8 << 20, f"peak {peak:,} bytes"
    assert [r.reason for r, _ in read_unit(units[0], spec)] == ["too_large"]


def test_a_zstd_bomb_is_read_in_bounded_pieces(tmp_path):
    """zstd expands up to ~32,768 times: 512 MiB of one byte is a file of a few kilobytes. The reader hands it
    on in bounded pieces (the line is quarantined as too large) instead of decompressing it whole into memory."""
    import tracemalloc

    frame = zstandard.ZstdCompressor().compress(b"x" * (1 << 20))  # frame after frame, as the reader reads them
    path = tmp_path / "bomb.jsonl.zst"
    path.write_bytes(frame * 512 + zstandard.ZstdCompressor().compress(
        b"\n" + json.dumps({"id": "after", "text": "the line after it"}).encode() + b"\n"))
    assert path.stat().st_size < 64 << 10
    spec = {"max_document_bytes": 1 << 20}
    tracemalloc.start()
    try:
        got = records(path, **spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.reason if isinstance(r, Bad) else r.id for r in got] == ["too_large", "after"]
    assert f"{(512 << 20) + 1:,} bytes" in got[0].detail  # the line and its newline
    assert peak < 128 << 20, f"peak {peak:,} bytes"  # 1 GiB before: the whole output, then a copy


def test_a_small_parquet_file_of_huge_decoded_text_is_read_a_few_rows_at_a_time(tmp_path):
    """A dictionary page holds a value once for any number of rows: 500 rows of one 1 MB text are a file of
    ~1 MB and 500 MB decoded. Batches were sized from the file's bytes (1,024 rows: all of it decoded at once,
    80 GB for a 50 kB file); a few rows a time, and a value over max_document_bytes never leaves Arrow."""
    import subprocess
    import sys
    import textwrap

    big = ("lorem ipsum dolor sit amet " * 40_000)[:1_000_000]
    column = pa.DictionaryArray.from_arrays(pa.array([0] * 500, pa.int32()), pa.array([big]))
    path = tmp_path / "dict.parquet"
    table = pa.table({"text": column, "id": pa.array([f"d{i}" for i in range(500)])})
    # without the Arrow schema in the file, as most writers do: read back as plain strings, not categories
    pq.write_table(table, path, use_dictionary=["text"], compression="zstd", store_schema=False)
    assert path.stat().st_size < 200_000
    code = textwrap.dedent(f"""
        import json, pyarrow as pa
        from llmops.prepare.sources import discover
        from llmops.prepare.steps.readers import read_unit
        from llmops.spec.prepare import InputSpec
        out = {{}}
        for limit in (5_000_000, 100_000):
            spec = InputSpec(paths=[{str(path)!r}], max_document_bytes=limit)
            (unit,) = discover(spec)[0]
            kinds = [getattr(r, "reason", "doc") for r, _ in read_unit(unit, spec)]
            out[limit] = {{k: kinds.count(k) for k in set(kinds)}}
        out["peak"] = pa.default_memory_pool().max_memory()
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["5000000"] == {"doc": 500} and got["100000"] == {"too_large": 500}
    assert got["peak"] < 100 << 20, got  # Arrow's own allocations, at most: was over 500 MB


def test_one_bad_parquet_value_costs_its_row_alone_and_odd_files_are_quarantined_not_raised(tmp_path):
    texts = [f"document number {i} with some words" for i in range(100)]
    raw = [t.encode() for t in texts]
    raw[40] = b"caf\xe9 in latin-1"
    path = tmp_path / "mixed.parquet"
    # a writer that does not check UTF-8 (Arrow does not): the bytes as a string column
    pq.write_table(pa.table({"text": pa.array(raw, pa.binary()).view(pa.string()),
                             "id": pa.array([f"d{i}" for i in range(100)])}), path, store_schema=False)
    got = records(path)
    assert [r.reason for r in got if isinstance(r, Bad)] == ["invalid_utf8"]
    assert [r.text for r in got if isinstance(r, Document)] == texts[:40] + texts[41:]
    assert [r.id for r in got if isinstance(r, Document)][40] == "d41"

    twice = tmp_path / "twice.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a b c"]), pa.array(["d e f"])], names=["text", "text"]), twice)
    (bad,) = records(twice)
    assert bad.reason == "unreadable_file" and "appears 2 times" in bad.detail

    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"text": "saved by an editor that marks UTF-8"}\n{"text": "second"}\n')
    assert [r.text for r in records(bom)] == ["saved by an editor that marks UTF-8", "second"]
