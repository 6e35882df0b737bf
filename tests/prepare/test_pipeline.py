"""The phases end to end: outputs, sharded == unsharded, resume, ordering and bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zstandard

from llmops.errors import UserError
from llmops.prepare import phases
from llmops.prepare.executor import run_all
from llmops.prepare.pipeline import PHASES, run_phase
from llmops.prepare.progress import Display
from llmops.spec.prepare import EOS_ID
from llmops_testing.prepare import make_corpus, prepare_spec, write_jsonl


def run_sharded(spec, n: int, threads: int = 1) -> None:
    """Every phase, shard by shard, as a cluster array job would (`threads`: each task's CPUs)."""
    for phase in PHASES:
        for shard in range(n if phase in ("clean", "tokenize") else 1):
            run_phase(spec, phase=phase, shard=shard, num_shards=n, threads=threads)


def read_tokens(prefix: str) -> list[np.ndarray]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    return [np.array(ds[i]) for i in range(len(ds))]  # copies: the arrays map a file that closes with ds


def read_documents(out: Path) -> list[dict]:
    with open(out / "documents.jsonl.zst", "rb") as f:
        text = zstandard.ZstdDecompressor().stream_reader(f).read().decode()
    return [json.loads(line) for line in text.splitlines()]


def test_outputs_agree_with_each_other_and_the_stats(tmp_path, corpus_file):
    bad = ['{"id": "broken", "text": ', '{"id": "no-text"}', '{"text": ""}']
    write_jsonl(corpus_file.parent / "bad.jsonl", bad)
    out = tmp_path / "out"
    spec = prepare_spec([str(corpus_file.parent)], out)
    run_sharded(spec, 2)

    meta = json.loads((out / "metadata.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    docs = read_documents(out)
    tokens = read_tokens(meta["prefix"])
    assert meta["eod_id"] == EOS_ID and meta["vocab_size"] == 400 and meta["pad_id"] == 3
    assert set(meta["special_tokens"]) == {"<|system|>", "<|user|>", "<|assistant|>", "<|end|>"}
    assert len(docs) == len(tokens) == meta["documents"] == stats["output"]["documents"]
    assert sum(len(t) for t in tokens) == meta["tokens"] == stats["output"]["tokens"]
    assert all(t[-1] == EOS_ID and EOS_ID not in t[:-1] for t in tokens)
    # 343 records read: 3 quarantined, 40 duplicates of the 300 distinct documents dropped.
    steps = {s["name"]: s for s in stats["steps"]}
    assert steps["read"]["docs_in"] == 343 and sum(steps["read"]["dropped"].values()) == 3
    assert steps["dedup"]["dropped"] == {"exact_duplicate": 20, "near_duplicate": 20}
    assert steps["filter"]["dropped"] == {}, "the generated documents pass every quality rule"
    group = {d["id"]: d.get("copy_of", d["id"]) for d in make_corpus(300, exact_dups=20, near_dups=20)}
    assert sorted(group[d["id"]] for d in docs) == sorted(f"doc-{i}" for i in range(300)), "one of each group kept"
    quarantine = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert sorted(q["reason"] for q in quarantine) == ["empty", "malformed_json", "missing_text_field"]
    duplicates = [json.loads(x) for x in (out / "duplicates.jsonl").read_text().splitlines()]
    assert len(duplicates) == 40 and all(group[d["id"]] == group[d["duplicate_of"]] for d in duplicates)


def test_any_shard_count_gives_the_same_output(tmp_path):
    # Three files, one split into byte-range chunks, so shards cut through files.
    docs = make_corpus(240, seed=3, exact_dups=10, near_dups=10)
    inputs = tmp_path / "in"
    for k, part in enumerate((docs[:60], docs[60:200], docs[200:])):
        write_jsonl(inputs / f"part-{k}.jsonl", part)
    outputs = {}
    for n in (1, 3):
        out = tmp_path / f"out-{n}"
        spec = prepare_spec([str(inputs)], out, input={"chunk_bytes": 65536})
        run_sharded(spec, n, threads=n)  # a BPE tokenizer trained on 3 threads is the same file as on one
        outputs[n] = out
    one, three = outputs[1], outputs[3]
    assert json.loads((three / "work" / "plan.json").read_text())["num_shards"] == 3
    assert len(json.loads((one / "work" / "plan.json").read_text())["units"]) > 3  # the chunked file
    for name in ("corpus_text_document.bin", "corpus_text_document.idx", "tokenizer.model", "duplicates.jsonl",
                 "quarantine.jsonl"):
        assert (one / name).read_bytes() == (three / name).read_bytes(), name
    assert read_documents(one) == read_documents(three)


def test_an_interrupted_shard_is_redone_and_finished_ones_are_not(tmp_path, corpus_file, monkeypatch):
    out = tmp_path / "out"
    spec = prepare_spec([str(corpus_file)], out, input={"chunk_bytes": 65536})
    run_phase(spec, phase="clean", shard=0, num_shards=2)
    marker0 = (out / "work" / "done" / "clean-00000-of-00002.json").read_text()

    real_writer = phases.store.DocWriter

    class Crashing(real_writer):
        def add(self, doc):
            if self.count + len(self.pending) >= 50:
                raise KeyboardInterrupt  # as if the job were killed mid-shard
            super().add(doc)

    monkeypatch.setattr(phases.store, "DocWriter", Crashing)
    with pytest.raises(KeyboardInterrupt):
        run_phase(spec, phase="clean", shard=1, num_shards=2)
    work = out / "work"
    assert not (work / "done" / "clean-00001-of-00002.json").exists()
    assert not (work / "clean" / "shard-00001.arrow").exists()
    assert not list((work / "clean").glob(".*tmp*")), "temporary files are removed"
    with pytest.raises(UserError, match=r"needs phase clean .* shard\(s\) 1 of 2"):
        run_phase(spec, phase="dedup")

    monkeypatch.setattr(phases.store, "DocWriter", real_writer)
    report = run_all(spec, display=Display(interval=60))
    assert (work / "done" / "clean-00000-of-00002.json").read_text() == marker0, "shard 0 was not redone"
    reference = tmp_path / "reference"
    run_all(prepare_spec([str(corpus_file)], reference, input={"chunk_bytes": 65536}, num_shards=2),
            display=Display(interval=60))
    assert (out / "corpus_text_document.bin").read_bytes() == (reference / "corpus_text_document.bin").read_bytes()
    assert report["output"]["documents"] == 300


def test_a_finished_run_is_not_redone_and_work_files_are_removed(tmp_path, corpus_file):
    out = tmp_path / "out"
    spec = prepare_spec([str(corpus_file)], out)
    first = run_all(spec, display=Display(interval=60))
    assert not (out / "work" / "clean").exists() and (out / "work" / "done").is_dir()
    mtime = (out / "corpus_text_document.bin").stat().st_mtime_ns
    assert run_phase(spec, phase="finalize")["skipped"] is True
    assert run_all(spec, display=Display(interval=60)) == first
    assert (out / "corpus_text_document.bin").stat().st_mtime_ns == mtime


def test_a_finalize_stopped_before_its_marker_is_done_again_from_the_shard_files(tmp_path, corpus_file, monkeypatch):
    """Killed after merging but before its marker (a time limit during the work files' removal, on a slow
    file system): the rerun finalizes again from the shard files, which are still there, and writes what an
    uninterrupted run writes; the work files go only once the marker is down."""
    from llmops.prepare.workdir import WorkDir

    out, reference = tmp_path / "out", tmp_path / "reference"
    spec = prepare_spec([str(corpus_file)], out)
    real = WorkDir.mark_done

    def killed_at_finalize(self, phase, shard, num_shards, payload):
        if phase == "finalize":
            raise KeyboardInterrupt
        real(self, phase, shard, num_shards, payload)

    monkeypatch.setattr(WorkDir, "mark_done", killed_at_finalize)
    with pytest.raises(KeyboardInterrupt):
        run_all(spec, display=Display(interval=60))
    assert (out / "work" / "clean").is_dir()  # nothing removed before the marker
    monkeypatch.setattr(WorkDir, "mark_done", real)
    run_all(spec, display=Display(interval=60))
    run_all(prepare_spec([str(corpus_file)], reference), display=Display(interval=60))
    for name in ("corpus_text_document.bin", "corpus_text_document.idx", "documents.jsonl.zst", "quarantine.jsonl"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert read_documents(out) and not (out / "work" / "clean").exists()


def test_a_shard_is_on_disk_before_its_marker(tmp_path, corpus_file, monkeypatch):
    """A marker stands for data a crash of the host cannot take back: every file a phase wrote is synced before
    it is renamed into place, the folder after the rename, and both before the marker is renamed into place."""
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("sync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), real_replace(a, b)))
    out = tmp_path / "out"
    run_phase(prepare_spec([str(corpus_file)], out), phase="clean")
    clean, done = out / "work" / "clean", out / "work" / "done"
    marker = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2].startswith(str(done)))
    renames = [(i, e) for i, e in enumerate(events) if e[0] == "replace" and e[2].startswith(str(clean))]
    assert {Path(e[2]).name for _, e in renames} == {
        f"shard-00000{s}" for s in (".arrow", ".exact", ".sig", ".quarantine.jsonl")}, events
    for i, (_, tmp, final) in renames:
        assert ("sync", tmp) in events[:i], f"{final} renamed into place unsynced"
    last = max(i for i, _ in renames)
    assert ("sync", str(clean)) in events[last:marker], "the renames were not synced before the marker"
    assert ("sync", str(done)) in events[marker:], "the marker's rename was not synced"


def test_a_work_folder_given_by_hand_keeps_what_llmops_did_not_write(tmp_path, corpus_file):
    out, work = tmp_path / "out", tmp_path / "scratch"
    (work / "clean").mkdir(parents=True)
    (work / "clean" / "notes.txt").write_text("the user's own")
    spec = prepare_spec([str(corpus_file)], out)
    for phase in PHASES:
        run_phase(spec, phase=phase, workdir=str(work))
    assert (work / "clean" / "notes.txt").read_text() == "the user's own"
    assert not list((work / "clean").glob("shard-*")) and (out / "metadata.json").exists()


def test_an_output_folder_of_other_files_is_refused_and_an_earlier_dataset_replaced(tmp_path, corpus_file):
    """finalize renames its files over whatever has their names: a new preparation into a folder whose files
    llmops did not write is refused before any work, and leaves them as they were; a dataset llmops prepared
    there before (its metadata.json) is replaced."""
    import shutil

    out = tmp_path / "out"
    out.mkdir()
    (out / "stats.json").write_text("the user's own")
    (out / "tokenizer.json").write_text("another model's")
    (out / "notes.txt").write_text("kept: no name finalize writes")
    spec = prepare_spec([str(corpus_file)], out)
    with pytest.raises(UserError, match=r"already holds stats.json, tokenizer.json, not from a preparation") as e:
        run_all(spec, display=Display(interval=60))
    assert "choose a new or empty folder" in e.value.fix
    assert (out / "stats.json").read_text() == "the user's own" and not (out / "work").exists()
    for name in ("stats.json", "tokenizer.json"):
        (out / name).unlink()
    first = run_all(spec, display=Display(interval=60))
    shutil.rmtree(out / "work")  # a finished dataset whose work folder is gone: prepared again, over itself
    assert run_all(spec, display=Display(interval=60))["output"] == first["output"]
    assert (out / "notes.txt").exists() and json.loads((out / "metadata.json").read_text())["vocab_size"]


def test_the_work_folder_refuses_a_changed_config_or_shard_count(tmp_path, corpus_file):
    out = tmp_path / "out"
    run_phase(prepare_spec([str(corpus_file)], out), phase="clean", shard=0, num_shards=2)
    changed = prepare_spec([str(corpus_file)], out, dedup={"threshold": 0.9})
    with pytest.raises(UserError, match=r"different prepare config \(changed: dedup\)"):
        run_phase(changed, phase="clean", shard=1, num_shards=2)
    with pytest.raises(UserError, match="started with 2 shard"):
        run_phase(prepare_spec([str(corpus_file)], out), phase="clean", shard=0, num_shards=4)
    with pytest.raises(UserError, match="outside 0..1"):
        run_phase(prepare_spec([str(corpus_file)], out), phase="clean", shard=2, num_shards=2)
    with pytest.raises(UserError, match="not a phase"):
        run_phase(prepare_spec([str(corpus_file)], out), phase="shuffle")


def test_too_many_bad_records_fail_the_run_until_the_threshold_allows_them(tmp_path):
    good = make_corpus(40, seed=5)
    write_jsonl(tmp_path / "in" / "a.jsonl", good + ["not json"] * 10)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"10 of 50 input records \(20.0%\).*malformed_json 10"):
        run_all(prepare_spec([str(tmp_path / "in")], out), display=Display(interval=60))
    assert not (out / "metadata.json").exists()
    report = run_all(prepare_spec([str(tmp_path / "in")], out, max_error_rate=0.25), display=Display(interval=60))
    assert report["quarantined"] == {"malformed_json": 10} and report["output"]["documents"] == 40


def test_filters_that_drop_everything_say_so_before_training_a_tokenizer(tmp_path, corpus_file):
    with pytest.raises(UserError, match="no document is left after cleaning, filtering and deduplication"):
        run_all(prepare_spec([str(corpus_file)], tmp_path / "out", filters={"min_words": 10_000}),
                display=Display(interval=60))


def test_an_unwritable_output_folder_is_one_clear_error(tmp_path, corpus_file):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"prepare.output.dir = .*: cannot write there"):
        run_all(prepare_spec([str(corpus_file)], blocker / "out"), display=Display(interval=60))


def test_without_a_tokenizer_only_documents_are_written(tmp_path, corpus_file):
    out = tmp_path / "out"
    report = run_all(prepare_spec([str(corpus_file)], out, tokenizer=None, output={"compression": "none"}),
                     display=Display(interval=60))
    assert report["output"] == {"documents": 300, "tokens": 0}
    lines = (out / "documents.jsonl").read_text().splitlines()
    assert len(lines) == 300 and json.loads(lines[0]).keys() == {"id", "text", "source"}
    assert not (out / "metadata.json").exists() and not (out / "corpus_text_document.bin").exists()


def test_worker_processes_give_the_same_output_as_one_process(tmp_path, corpus_file):
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out-{workers}"
        run_all(prepare_spec([str(corpus_file)], out, workers=workers, num_shards=4, input={"chunk_bytes": 65536}),
                display=Display(interval=60))
        outs.append(out)
    assert (outs[0] / "corpus_text_document.bin").read_bytes() == (outs[1] / "corpus_text_document.bin").read_bytes()


def test_a_worker_killed_mid_phase_fails_the_run_instead_of_hanging_and_a_rerun_finishes(tmp_path, corpus_file,
                                                                                        monkeypatch):
    import os
    import signal

    from llmops.prepare import executor
    from llmops.prepare.workers import WorkerDied

    out = tmp_path / "out"
    spec = prepare_spec([str(corpus_file)], out, workers=2, num_shards=4, input={"chunk_bytes": 65536})
    real_phase = executor.run_phase

    def killed_at_shard_2(config, *, phase, shard=0, **kw):
        if phase == "clean" and shard == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
        return real_phase(config, phase=phase, shard=shard, **kw)

    monkeypatch.setattr(executor, "run_phase", killed_at_shard_2)  # the forked workers inherit it
    with pytest.raises(WorkerDied, match="prepare clean died") as died:
        run_all(spec, display=Display(interval=60))
    assert died.value.exit_code == 1 and "run the same command again" in died.value.fix
    assert not (out / "work" / "done" / "clean-00002-of-00004.json").exists()

    # What a finalize killed before its renames leaves (its temporary files), beside a user's file of that shape
    stale = [".corpus_text_document.tmp-999-0123456789ab.bin", ".stats.json.tmp-999-0123456789ab"]
    for name in [*stale, ".notes.txt.tmp-999-0123456789ab"]:
        (out / name).write_text("left behind")
    monkeypatch.setattr(executor, "run_phase", real_phase)
    run_all(spec, display=Display(interval=60))
    assert not [n for n in stale if (out / n).exists()] and (out / ".notes.txt.tmp-999-0123456789ab").exists()
    reference = tmp_path / "reference"
    run_all(prepare_spec([str(corpus_file)], reference, workers=1, num_shards=4, input={"chunk_bytes": 65536}),
            display=Display(interval=60))
    assert (out / "corpus_text_document.bin").read_bytes() == (reference / "corpus_text_document.bin").read_bytes()


def test_a_hugging_face_tokenizer_is_used_as_it_is_and_copied_with_the_data(tmp_path, corpus_file):
    """`prepare.tokenizer: hf:DIR` (continued pre-training of a Llama 3 style model): nothing is trained, every
    document is the tokenizer's encoding of its text and the tokenizer's eos, special-token text stays text,
    and the output folder is itself a tokenizer folder transformers loads."""
    from transformers import AutoTokenizer

    from llmops_testing.hf_tokenizer import SPECIALS, llama3_style

    docs = make_corpus(100)
    docs[0]["text"] += " A document may mention <|eot_id|> and <|end_of_text|> without ending anything."
    write_jsonl(corpus_file, docs)
    folder = llama3_style(tmp_path / "llama3", [d["text"] for d in docs[:50]], vocab_size=700)
    out = tmp_path / "out"
    spec = prepare_spec([str(corpus_file)], out, tokenizer=f"hf:{folder}")
    assert spec.tokenizer.model == f"hf:{folder}" and spec.tokenizer_path == f"hf:{out}"
    run_all(spec, display=Display(interval=60))

    meta = json.loads((out / "metadata.json").read_text())
    eos = SPECIALS.index("<|end_of_text|>")
    assert meta["eod_id"] == eos and meta["vocab_size"] == 700 and meta["bos_id"] == 1
    assert meta["tokenizer_model"] == f"hf:{out}" and "<|eot_id|>" in meta["special_tokens"]
    assert sorted(p.name for p in out.glob("tokenizer*")) == ["tokenizer.json", "tokenizer_config.json"]
    tok = AutoTokenizer.from_pretrained(out)
    texts = {d["text"] for d in read_documents(out)}
    tokens = read_tokens(meta["prefix"])
    assert len(tokens) == len(texts) == 100
    special_ids = set(range(len(SPECIALS)))
    for ids in tokens:
        assert ids[-1] == eos and not special_ids & set(ids[:-1].tolist())
        assert tok.decode(ids[:-1]) in texts
    assert any("<|eot_id|>" in tok.decode(ids[:-1]) for ids in tokens)


def test_a_file_added_to_a_finished_input_is_prepared_on_the_next_run(tmp_path, corpus_file, capsys):
    """A resubmission of the same spec after the input folder gained a file: every phase runs again on the
    whole input (the old markers are of another plan), instead of reporting the old dataset as done."""
    out = tmp_path / "out"
    spec = prepare_spec([str(corpus_file.parent)], out, num_shards=2)
    assert run_all(spec, display=Display(interval=60))["output"]["documents"] == 300
    write_jsonl(corpus_file.parent / "more.jsonl", make_corpus(40, seed=9))
    run_sharded(spec, 2)  # as the cluster's array tasks would
    assert json.loads((out / "metadata.json").read_text())["documents"] == 340
    assert len(read_documents(out)) == 340
    assert f"1 added: {corpus_file.parent / 'more.jsonl'}" in capsys.readouterr().err


def test_input_fixed_after_too_many_bad_records_is_read_again(tmp_path):
    """The error-rate failure says to fix the input and run again: the fixed input is what the rerun reads
    (shards cleaned from the bad input are not kept), while an unchanged input resumes from its markers."""
    bad = tmp_path / "in" / "a.jsonl"
    write_jsonl(bad, make_corpus(40, seed=5) + ["not json"] * 10)
    out = tmp_path / "out"
    spec = prepare_spec([str(tmp_path / "in")], out, num_shards=2)
    with pytest.raises(UserError, match=r"10 of 50 input records") as failed:
        run_all(spec, display=Display(interval=60))
    assert "fix or drop the bad input" in failed.value.fix
    marker = out / "work" / "done" / "clean-00000-of-00002.json"
    before = marker.stat().st_mtime_ns
    with pytest.raises(UserError, match=r"10 of 50 input records"):
        run_sharded(spec, 2)  # nothing changed: the clean shards are kept, the failure is the same
    assert marker.stat().st_mtime_ns == before
    write_jsonl(bad, make_corpus(40, seed=5))  # fixed as told
    run_sharded(spec, 2)
    assert json.loads((out / "stats.json").read_text())["quarantined"] == {}
    assert json.loads((out / "metadata.json").read_text())["documents"] == 40


def test_a_finished_dataset_is_done_for_any_shard_count_and_an_unfinished_one_names_the_setting(tmp_path,
                                                                                                corpus_file):
    out = tmp_path / "out"
    spec = prepare_spec([str(corpus_file)], out, num_shards=3)
    first = run_all(spec, display=Display(interval=60))
    mtime = (out / "metadata.json").stat().st_mtime_ns
    assert run_all(prepare_spec([str(corpus_file)], out, num_shards=2), display=Display(interval=60)) == first
    for phase in PHASES:  # as a cluster's tasks with 2 shards would run it
        sharded = phase in ("clean", "tokenize")
        assert run_phase(spec, phase=phase, shard=int(sharded), num_shards=2 if sharded else 1)["skipped"]
    assert (out / "metadata.json").stat().st_mtime_ns == mtime

    unfinished = tmp_path / "unfinished"
    run_phase(prepare_spec([str(corpus_file)], unfinished), phase="clean", shard=0, num_shards=3)
    for phase in ("clean", "tokenize"):
        with pytest.raises(UserError, match="started with 3 shard") as e:
            run_phase(prepare_spec([str(corpus_file)], unfinished), phase=phase, shard=0, num_shards=2)
        assert "prepare.num_shards: 3" in e.value.fix
