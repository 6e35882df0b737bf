"""Units and shards: every unit in exactly one shard, contiguous, balanced by bytes."""

from __future__ import annotations

from llmops.prepare.sources import Unit, assign


def units(*sizes: int) -> list[Unit]:
    return [Unit(f"f{i}", "jsonl", "none", f"f{i}", size) for i, size in enumerate(sizes)]


def test_shards_are_contiguous_runs_covering_every_unit_once():
    us = units(*([10] * 37))
    for n in (1, 2, 5, 37, 50):
        shards = assign(us, n)
        assert len(shards) == n
        assert [i for s in shards for i in s] == list(range(37))


def test_shards_balance_bytes_not_unit_counts():
    shards = assign(units(100, 1, 1, 1, 1, 100, 1, 1), 2)
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7]]  # 103 bytes each: the big units sit at opposite ends


def test_more_shards_than_units_leaves_some_empty():
    assert assign(units(5, 5), 4) == [[], [0], [], [1]]


def test_what_a_folder_or_pattern_finds_lies_inside_it_and_a_literal_name_is_itself(tmp_path, monkeypatch):
    """Data folders come from elsewhere: a link in one to /proc/self/environ or to a credentials file put the
    prepare process's environment and the file into the dataset. Such links, pipes and devices are skipped and
    listed; a file named with glob characters is read as named, not as a pattern."""
    import os

    import pytest

    from llmops.errors import UserError
    from llmops.prepare.sources import discover
    from llmops.spec.prepare import InputSpec

    data, outside = tmp_path / "data", tmp_path / "secret"
    (data / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "credentials").write_text('{"text": "aws_secret_access_key=..."}\n')
    (data / "ok.jsonl").write_text('{"text": "fine"}\n')
    (data / "sub" / "also.jsonl").write_text('{"text": "fine too"}\n')
    (data / "same.jsonl").symlink_to(data / "sub" / "also.jsonl")  # inside: read once, by either name
    (data / "notes.jsonl").symlink_to(outside / "credentials")
    (data / "env.jsonl").symlink_to("/proc/self/environ")
    (data / "zero.jsonl").symlink_to("/dev/zero")
    os.mkfifo(data / "fifo.jsonl")
    for entry in (str(data), str(data / "*.jsonl")):
        units, skipped = discover(InputSpec(paths=[entry]))
        assert {os.path.realpath(u.path) for u in units} <= {str(data / "ok.jsonl"), str(data / "sub" / "also.jsonl")}
        assert {os.path.basename(p) for p in skipped} == {"notes.jsonl", "env.jsonl", "zero.jsonl", "fifo.jsonl"}
    with pytest.raises(UserError, match="not a data file"):
        discover(InputSpec(paths=["/proc/self/environ"], format="text"))
    # A folder of links to a shared store, on purpose: follow_links reads them, but never /proc, /sys or /dev
    units, skipped = discover(InputSpec(paths=[str(data)], follow_links=True))
    assert str(outside / "credentials") in {os.path.realpath(u.path) for u in units}
    assert {os.path.basename(p) for p in skipped} == {"env.jsonl", "zero.jsonl", "fifo.jsonl"}
    links = tmp_path / "links"
    links.mkdir()
    (links / "a.jsonl").symlink_to(outside / "credentials")
    with pytest.raises(UserError, match=r"1 link\(s\) out of it") as refused:
        discover(InputSpec(paths=[str(links)]))
    assert "set prepare.input.follow_links: true" in refused.value.fix

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data1.jsonl").write_text('{"text": "another file"}\n')
    (tmp_path / "data[1].jsonl").write_text('{"text": "the one named"}\n')
    units, _ = discover(InputSpec(paths=["data[1].jsonl"]))
    assert [u.path for u in units] == ["data[1].jsonl"]
