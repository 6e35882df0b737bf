"""The next training stage's launcher, started ahead by the local supervisor while the stage before ends.

The launchers here are a stand-in script that keeps the protocol (llmops.procs.STANDBY_ENV: wait for "go" on
stdin, or exit 0 at anything else) and writes the records a training stage writes; the real launcher's side
is exercised by every multi-stage CPU run (tests/model/train/test_loop.py checks the tiny example's)."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import psutil
import pytest

from llmops_testing import tiny_spec

FAKE_LAUNCHER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    run, stage = Path(sys.argv[1]), os.environ["LLMOPS_STAGE"]
    record = {"stage": stage, "restart": int(os.environ["LLMOPS_RESTART"]), "pid": os.getpid(), "began": time.time()}
    if os.environ.get("LLMOPS_STANDBY") == "1":
        if os.environ.get("FAKE_STANDBY_DIES") == stage:
            print("out of memory while standing by", flush=True)
            sys.exit(3)
        if sys.stdin.readline().strip() != "go":
            record["dismissed"] = time.time()
            with open(run / "launches.jsonl", "a") as f:
                f.write(json.dumps(record) + "\\n")
            sys.exit(0)
        record["released"] = time.time()
    with open(run / "launches.jsonl", "a") as f:
        f.write(json.dumps(record) + "\\n")
    folder = run / "stages" / stage
    folder.mkdir(parents=True, exist_ok=True)
    for step in range(1, 11):  # 0.05 s steps: all within STANDBY_LEAD of the last
        (folder / "progress.json").write_text(json.dumps({"step": step, "steps": 10, "step_time": 0.05,
                                                           "restart": record["restart"], "time": time.time()}))
        time.sleep(0.05)
    code = int(os.environ.get("FAKE_EXIT_" + stage.upper(), "0"))
    if os.environ.get("FAKE_CRASH_ONCE") == stage and record["restart"] == 0:
        code = 1
    if code == 0:
        (run / "last_exit.json").write_text(json.dumps({"code": 0, "step": 10, "time": time.time()}))
    time.sleep(1.0)  # samples, teardown: the next stage's launcher stands by meanwhile
    sys.exit(code)
""")


@pytest.fixture
def supervised(tmp_path, monkeypatch):
    """Run a pretrain -> sft -> dpo spec's supervisor here, its launchers the stand-in; returns the launches."""
    from llmops.backends.local import supervisor
    from llmops.prepare import align_corpus
    from llmops.prepare.tokenizer import train
    from llmops.runs.rundir import RunDir
    from llmops.spec.load import parse_spec
    from llmops.spec.prepare import TokenizerSpec

    script = tmp_path / "fake_launcher.py"
    script.write_text(FAKE_LAUNCHER)
    tokenizer = tmp_path / "tok.model"  # the align stages' rules read it; the stand-in never does
    texts = [f"{e.summary}\n{e.name}" for e in align_corpus.entries(400)]
    train(TokenizerSpec(vocab_size=500, byte_fallback=False), iter(texts), out=tokenizer, threads=1)
    monkeypatch.setattr(supervisor, "launch_command", lambda spec, path: [sys.executable, str(script), str(path)])
    monkeypatch.setattr(supervisor.report, "write", lambda run: None)
    stage = {"data": {"builtin": "python-docstrings"}, "steps": 10, "global_batch_size": 8, "micro_batch_size": 2,
             "tokenizer": str(tokenizer)}

    def supervise(crash_once: str | None = None, standby_dies: str | None = None,
                  **exits: int) -> tuple[RunDir, list[dict]]:
        for name, code in exits.items():
            monkeypatch.setenv(f"FAKE_EXIT_{name.upper()}", str(code))
        if crash_once:
            monkeypatch.setenv("FAKE_CRASH_ONCE", crash_once)
        if standby_dies:
            monkeypatch.setenv("FAKE_STANDBY_DIES", standby_dies)
        spec = parse_spec(tiny_spec("standby", align=[{"method": "sft", **stage}, {"method": "dpo", **stage}],
                                    restarts={"max_restarts": 1}))
        run = RunDir.create(spec, tmp_path / "runs" / "standby-1")
        supervisor.Supervisor(run).supervise()
        launches = [json.loads(line) for line in (run.path / "launches.jsonl").read_text().splitlines()]
        return run, launches

    return supervise


def test_the_next_stage_launcher_stands_by_and_goes_when_the_stage_before_has_succeeded(supervised):
    run, launches = supervised()
    st = run.read_status()
    assert st.state == "SUCCEEDED" and [r["stage"] for r in launches] == ["pretrain", "sft", "dpo"]
    for before, after in zip(launches, launches[1:]):
        ended = st.stages[before["stage"]]["ended_at"]
        assert after["began"] < ended, f"{after['stage']}'s launcher did not start ahead"
        assert after["released"] >= ended, f"{after['stage']} went before {before['stage']} ended"
    assert "released" not in launches[0]  # nothing before pretrain to stand by beside
    assert [st.stages[s]["launched_ahead"] for s in ("pretrain", "sft", "dpo")] == [False, True, True]
    assert sorted(p.name for p in run.logs.iterdir()) == ["dpo.restart-0.log", "pretrain.restart-0.log",
                                                          "sft.restart-0.log"]
    assert not any(psutil.pid_exists(r["pid"]) for r in launches)


def test_a_failed_stage_dismisses_the_launcher_standing_by_and_removes_its_log(supervised):
    run, launches = supervised(sft=1)  # SFT crashes on each attempt (max_restarts 1) after DPO's launcher started
    st = run.read_status()
    assert st.state == "FAILED" and st.stages["sft"]["state"] == "FAILED" and "dpo" not in st.stages
    (dpo,) = [r for r in launches if r["stage"] == "dpo"]
    assert "dismissed" in dpo and "released" not in dpo
    assert not (run.logs / "dpo.restart-0.log").exists()
    deadline = time.time() + 10
    while psutil.pid_exists(dpo["pid"]) and time.time() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(dpo["pid"])


def test_a_restart_of_the_stage_before_keeps_the_launcher_standing_by(supervised):
    run, launches = supervised(crash_once="sft")  # SFT crashes after DPO's launcher started; its restart succeeds
    st = run.read_status()
    assert st.state == "SUCCEEDED" and st.stages["sft"]["restarts"] == 1
    assert [(r["stage"], r["restart"]) for r in launches] == [("pretrain", 0), ("sft", 0), ("sft", 1), ("dpo", 0)]
    (dpo,) = [r for r in launches if r["stage"] == "dpo"]
    (sft_restart,) = [r for r in launches if r["stage"] == "sft" and r["restart"] == 1]
    assert dpo["began"] < sft_restart["began"] and "released" in dpo  # the one launcher, started before the crash
    assert sorted(p.name for p in run.logs.iterdir()) == ["dpo.restart-0.log", "pretrain.restart-0.log",
                                                          "sft.restart-0.log", "sft.restart-1.log"]


def test_a_launcher_that_died_standing_by_is_replaced_and_its_log_kept(supervised):
    run, launches = supervised(standby_dies="sft")  # its output is the only account of why it died
    st = run.read_status()
    assert st.state == "SUCCEEDED" and st.stages["sft"]["launched_ahead"] is False
    (sft,) = [r for r in launches if r["stage"] == "sft"]  # the one started afresh, for the same attempt
    assert sft["restart"] == 0 and "released" not in sft
    assert "out of memory while standing by" in (run.logs / "sft.restart-0.log").read_text()



@pytest.mark.parametrize(("variable", "stdin", "expected"), [
    ("1", "pipe", True), ("1", "devnull", False), (None, "pipe", False)], ids=["asked", "leaked", "unasked"])
def test_a_launcher_stands_by_only_when_asked_with_a_pipe_to_hear_go_on(variable, stdin, expected):
    """The variable alone (leaked into a Slurm or Kubernetes launch, say) would make a launcher exit 0 having
    trained nothing, its stage then marked SUCCEEDED: a launcher stands by only with its stdin a pipe."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "LLMOPS_STANDBY"} | ({"LLMOPS_STANDBY": variable}
                                                                          if variable else {})
    command = [sys.executable, "-c", "from llmops.procs import standing_by; print(standing_by())"]
    if stdin == "pipe":
        res = subprocess.run(command, input="", capture_output=True, text=True, env=env)
    else:
        res = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(expected)
