"""The run directory keeps the spec a run was submitted with: read back, never resolved again."""

from __future__ import annotations

from llmops import runner
from llmops.runs.rundir import RunDir
from llmops.spec.load import parse_spec
from llmops_testing import llmops, tiny_spec


def _aligned_spec(tmp_path) -> dict:
    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "docs.jsonl").write_text('{"text": "a document"}\n')
    spec = tiny_spec("kept")
    spec["prepare"] = {"input": {"paths": [str(tmp_path / "raw")]}, "output": {"dir": str(tmp_path / "prepared")},
                       "tokenizer": {"vocab_size": 512}}
    spec["align"] = {"method": "sft", "data": {"path": str(data)}, "steps": 2, "global_batch_size": 8,
                     "micro_batch_size": 2}
    return spec


def test_the_resolved_spec_is_read_back_as_written_even_when_its_files_are_gone(tmp_path, monkeypatch):
    spec = parse_spec(_aligned_spec(tmp_path))
    request = runner.plan(spec, path=tmp_path / "runs" / "kept-1")
    run = RunDir.create(request.spec, request.run_path)
    (tmp_path / "sft.jsonl").unlink()  # the spec would no longer validate as a new run
    monkeypatch.chdir(tmp_path / "runs")  # nor would relative paths resolve the same
    again = run.read_spec()
    assert again == request.spec
    assert again.data.indexed.paths == [str(tmp_path / "prepared" / "corpus_text_document")]
    res = llmops("status", str(run.path))
    assert res.returncode == 0, res.stderr


def test_a_run_is_found_by_exact_id_or_exact_name_never_by_prefix(tmp_path):
    from llmops.runs.rundir import resolve_run

    root = tmp_path / "runs"
    for name, run_id in (("tiny-cpu", "tiny-cpu-20261203-100000"), ("tiny-cpu", "tiny-cpu-20261203-100000-2"),
                         ("tiny-cpu-synthetic", "tiny-cpu-synthetic-20261203-110000")):
        RunDir.create(parse_spec(tiny_spec(name)), root / run_id)
    assert resolve_run("tiny-cpu", root).id == "tiny-cpu-20261203-100000-2"  # the newest of exactly that name
    assert resolve_run("tiny-cpu-synthetic", root).id == "tiny-cpu-synthetic-20261203-110000"
    assert resolve_run("tiny-cpu-20261203-100000", root).id == "tiny-cpu-20261203-100000"
    res = llmops("status", "tiny", "--runs-dir", str(root))
    assert res.returncode == 2 and "no run 'tiny'" in res.stderr and "tiny-cpu-synthetic-20261203-110000" in res.stderr


def test_logs_pass_over_a_missing_restart_and_read_a_huge_line_in_pieces(tmp_path):
    """A missing restart-0.log made `llmops logs` print nothing at all (exit 0) though restart-1.log was there;
    a line of 200 MB without a newline (a process printing progress) was read whole, 900 MB of memory."""
    from llmops.runs import logs

    run = RunDir.create(parse_spec(tiny_spec("logs")), tmp_path / "logs-20270115-093000")
    run.log_path("pretrain", 1).write_text("first line of restart 1\nsecond\n")
    run.log_path("pretrain", 2).write_text("x" * (3 * logs.PIECE + 10) + "\nlast, no newline")
    got = list(logs.follow_logs(run, stage="pretrain", follow=False, is_done=lambda: True))
    assert got[0].startswith("[llmops] the log of restart 0 is missing") and got[1:3] == ["first line of restart 1",
                                                                                          "second"]
    assert [len(line) for line in got[3:7]] == [logs.PIECE] * 3 + [10] and got[7:] == ["last, no newline"]
