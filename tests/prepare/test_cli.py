"""`llmops prepare` as a user runs it: exit codes, one-paragraph errors, the sharded form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmops_testing import llmops
from llmops_testing.prepare import make_corpus, write_jsonl


def write(path: Path, inputs: str, out: Path, **prepare) -> Path:
    spec = {"name": "prep", "resources": {"cpu": True},
            "prepare": {"input": {"paths": [inputs]}, "filters": {"min_words": 20},
                        "tokenizer": {"vocab_size": 400}, "output": {"dir": str(out)}, **prepare}}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_prepare_runs_every_phase_and_prints_a_summary(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", make_corpus(120, exact_dups=5) + ["{broken"])
    spec = write(tmp_path / "s.yaml", str(tmp_path / "in.jsonl"), tmp_path / "out", workers=2)
    res = llmops("prepare", str(spec))
    assert res.returncode == 0, res.stderr
    assert "prepare clean: started" in res.stderr and "prepare finalize: done in" in res.stderr
    assert "dedup dropped: exact_duplicate 5" in res.stdout and "read dropped: malformed_json 1" in res.stdout
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())["documents"] == 120


def test_phases_run_shard_by_shard_as_a_cluster_would(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", make_corpus(120))
    spec = str(write(tmp_path / "s.yaml", str(tmp_path / "in.jsonl"), tmp_path / "out", input={
        "paths": [str(tmp_path / "in.jsonl")], "chunk_bytes": 65536}))
    res = llmops("prepare", spec, "--phase", "dedup")
    assert res.returncode == 2 and "the clean phase has not started" in res.stderr
    for args in (["clean", "--shard", "1"], ["clean", "--shard", "0"], ["dedup"], ["tokenizer"],
                 ["tokenize", "--shard", "0"], ["tokenize", "--shard", "1"], ["finalize"]):
        res = llmops("prepare", spec, "--phase", *args, "--num-shards", "2")
        assert res.returncode == 0, (args, res.stderr)
    assert (tmp_path / "out" / "corpus_text_document.idx").is_file()
    again = llmops("prepare", spec, "--phase", "clean", "--shard", "1", "--num-shards", "2")
    assert again.returncode == 0 and "done earlier, skipped" in again.stderr


@pytest.mark.parametrize("problem", ["missing input", "no prepare section", "bad phase", "shard without phase",
                                     "too many bad records", "unknown key"])
def test_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path, problem):
    write_jsonl(tmp_path / "in.jsonl", make_corpus(20) + ["nope"] * 5)
    spec = write(tmp_path / "s.yaml", str(tmp_path / "in.jsonl"), tmp_path / "out")
    args = ["prepare", str(spec)]
    expected = {
        "missing input": "prepare.input.paths.0 = ",
        "no prepare section": "has no prepare: section",
        "bad phase": "is not a phase",
        "shard without phase": "--shard 1 needs --phase",
        "too many bad records": "5 of 25 input records (20.0%) could not be used",
        "unknown key": "prepare.dedup.treshold: is not a known field. Fix: did you mean 'threshold'?",
    }[problem]
    if problem == "missing input":
        spec = write(tmp_path / "s.yaml", str(tmp_path / "nowhere.jsonl"), tmp_path / "out")
    elif problem == "no prepare section":
        spec.write_text(yaml.safe_dump({"name": "x", "resources": {"cpu": True},
                                        "train": {"steps": 1, "global_batch_size": 1}}))
    elif problem == "bad phase":
        args += ["--phase", "shuffle"]
    elif problem == "shard without phase":
        args += ["--shard", "1"]
    elif problem == "unknown key":
        spec = write(tmp_path / "s.yaml", str(tmp_path / "in.jsonl"), tmp_path / "out", dedup={"treshold": 0.5})
    res = llmops(*args)
    assert res.returncode == 2, res.stderr
    assert expected in " ".join(res.stderr.split()) and "Traceback" not in res.stderr
