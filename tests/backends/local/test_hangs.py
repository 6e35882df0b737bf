"""Hangs that the step watchdog of tests/backends/local/test_faults.py does not see, on real runs and real signals.

Each must end within a bound the user set (restarts.hang_timeout, restarts.collective_timeout), say what it was,
and recover from the latest complete checkpoint with the loss curve of an uninterrupted run; none may leave a
run RUNNING for good. The runs are started side by side in one fixture to keep the file's wall time down.

1. Every rank stuck loading the checkpoint a restart resumes from (a test-only sitecustomize,
   tests/llmops_testing/inject): no rank waits in a collective, so no process-group timeout ends it; the
   watchdog's start-up watch does, after restarts.collective_timeout.
2. The launcher stopped (SIGSTOP) late in the stage: its watchdog is one of its threads, and the workers, done,
   wait for it to collect them. The supervisor finds it stopped for restarts.hang_timeout.
3. A data-preparation worker stopped: preparation has no watchdog; the supervisor finds it the same way and the
   stage starts again.
4. The supervisor stopped: `llmops status` says so (the run would read RUNNING for good), it says the run's own
   message again once it goes on, and `llmops cancel` still stops the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from llmops.runs.report import summarize
from llmops.runs.rundir import RunDir
from llmops_testing import llmops, run_processes, same_curve, start, status, tiny_spec, wait_step, write_spec

STEPS = 20
INTERVAL = 5
HANG_TIMEOUT = 10.0
STARTUP_TIMEOUT = 20.0  # restarts.collective_timeout: the bound of a silent start-up
INJECT = Path(__file__).resolve().parents[2] / "llmops_testing" / "inject"
ENDED = {"SUCCEEDED", "FAILED", "CANCELLED"}


def _spec(name: str, **restarts) -> dict:
    spec = tiny_spec(name, tp=2, steps=STEPS, checkpoint={"interval": INTERVAL, "keep_last": 5},
                     restarts={"max_restarts": 2, "hang_timeout": HANG_TIMEOUT, **restarts})
    spec["train"]["log_interval"] = 1
    return spec


def _inject(**env: str) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(INJECT), os.environ.get("PYTHONPATH", "")]), **env}


def _stop_a_preparation_worker(run: Path, timeout: float = 120) -> None:
    """SIGSTOP one of data preparation's pool workers, as soon as it has them."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            pool = psutil.Process(status(run)["job_pgid"]).children()
        except (KeyError, TypeError, psutil.Error):
            pool = []
        if len(pool) >= 2:
            pool[0].suspend()
            return
        time.sleep(0.05)
    raise AssertionError(f"data preparation of {run.name} never started its workers: {status(run)}")


def _settle(runs: list[Path], timeout: float) -> None:
    """Wait until every run has ended, for `timeout` seconds in all; one still running is left to its test to fail
    (a hang that nothing ends must fail its own test, not every test of the file) and killed afterwards."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(status(r).get("state") not in ENDED for r in runs):
        time.sleep(0.3)


@pytest.fixture(scope="module")
def hung(tmp_path_factory):
    work = tmp_path_factory.mktemp("hangs")
    runs = work / "runs"
    facts: dict = {}
    prepare = {"input": {"builtin": "python-docstrings"}, "filters": {"min_words": 20}, "num_shards": 4,
               "workers": 2, "tokenizer": {"vocab_size": 512}, "output": {"dir": str(work / "prepared")}}
    prep = {"name": "prepare-stopped", "prepare": prepare, "resources": {"cpu": True, "processes_per_node": 1},
            "restarts": {"max_restarts": 1, "hang_timeout": HANG_TIMEOUT}}
    facts["prepare"] = start(write_spec(work / "prepare.yaml", prep), runs)
    facts["reference"] = start(write_spec(work / "ref.yaml", _spec("reference")), runs)
    # every rank blocks in the checkpoint load of the first restart (attempt 1)
    facts["load"] = load = start(write_spec(work / "load.yaml", _spec("load-hung", collective_timeout=STARTUP_TIMEOUT)),
                                 runs, env=_inject(LLMOPS_TEST_BLOCK="load", LLMOPS_TEST_BLOCK_ATTEMPT="1"))
    facts["launcher"] = launcher = start(write_spec(work / "launcher.yaml", _spec("launcher-stopped")), runs)
    supervised = tiny_spec("supervisor-stopped", steps=400, restarts={"max_restarts": 0})
    facts["supervisor"] = sup = start(write_spec(work / "supervisor.yaml", supervised), runs)
    try:
        _stop_a_preparation_worker(facts["prepare"])

        wait_step(load, INTERVAL + 2)
        os.kill(status(load)["job_pgid"], signal.SIGTERM)  # a preemption: checkpointed, then the restart that loads it

        wait_step(launcher, STEPS - 5)  # its workers go on: most likely they finish and wait to be collected
        os.kill(status(launcher)["job_pgid"], signal.SIGSTOP)
        facts["launcher_stopped_at"] = time.time()

        wait_step(sup, 3)
        pid = status(sup)["supervisor_pid"]
        os.kill(pid, signal.SIGSTOP)
        facts["shown_stopped"] = llmops("status", sup.name, "--runs-dir", str(runs)).stdout
        os.kill(pid, signal.SIGCONT)
        deadline = time.time() + 10
        while "supervisor process is stopped" in status(sup)["message"] and time.time() < deadline:
            time.sleep(0.2)
        facts["message_continued"] = status(sup)["message"]
        os.kill(pid, signal.SIGSTOP)
        began = time.time()
        facts["cancel"] = llmops("cancel", sup.name, "--runs-dir", str(runs))
        facts["cancel_seconds"] = time.time() - began

        _settle([facts["prepare"], facts["reference"], load, launcher], timeout=180)
        yield facts
    finally:
        for run in runs.iterdir():  # nothing of a run left behind, whatever the outcome
            if status(run).get("state") not in ENDED or run_processes(run):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    llmops("cancel", "--force", run.name, "--runs-dir", str(runs), timeout=30)
            for p in run_processes(run):
                with contextlib.suppress(psutil.Error):
                    p.kill()


def _events(run: Path, stage: str = "pretrain") -> list[dict]:
    return [json.loads(line) for line in (run / "stages" / stage / "events.jsonl").read_text().splitlines()]


def test_every_rank_stuck_loading_its_checkpoint_is_found_after_the_start_up_timeout(hung):
    run = hung["load"]
    st = status(run)
    assert st["state"] == "SUCCEEDED", st
    why = st["stages"]["pretrain"]["why"]
    assert why == {"1": "preempted", "2": "hung in start-up (no progress within the start-up timeout; stacks in "
                   "pretrain.restart-1.log)"}, why
    stuck = (run / "logs" / "pretrain.restart-1.log").read_text()
    assert "[test] rank 0 blocks in load" in stuck and "[test] rank 1 blocks in load" in stuck
    said = stuck.split("[llmops] hung: ")[1].splitlines()[0]
    assert said.startswith("no progress from any rank of this node for ") and (
        f"s (start-up timeout {STARTUP_TIMEOUT:.0f}s); all its ranks stopped at the same point, in start-up, loading "
        "its checkpoint") in said, said
    assert "[llmops] stacks of rank 0, pid" in stuck and "[llmops] stacks of rank 1, pid" in stuck
    assert "in resume" in stuck  # their stacks show where: llmops_model.train.loop.resume
    (event,) = [e for e in _events(run) if e["event"] == "hung"]
    assert event["restart"] == 1 and event["phase"] == "load" and event["timeout"] == STARTUP_TIMEOUT
    assert STARTUP_TIMEOUT <= event["silent"] <= STARTUP_TIMEOUT + 10
    # the restart after it resumed from the checkpoint the preemption wrote; nothing was lost
    saved = int((run / "logs" / "pretrain.restart-0.log").read_text().split("saved checkpoint step=")[-1].split()[0])
    assert f"resumed from iter_{saved:07d}" in (run / "logs" / "pretrain.restart-2.log").read_text()
    same_curve(run, hung["reference"], STEPS)
    (stage,) = [s for s in summarize(RunDir(run))["stages"] if s.name == "pretrain"]
    assert stage.lost_steps == 0
    shown = " ".join(llmops("status", run.name, "--runs-dir", str(run.parent)).stdout.split())
    assert "pretrain: restart 2: hung in start-up (no progress within the start-up timeout" in shown, shown


def test_a_stopped_launcher_is_found_and_its_job_ended(hung):
    run = hung["launcher"]
    st = status(run)
    assert st["state"] == "SUCCEEDED", st
    assert st["ended_at"] - hung["launcher_stopped_at"] <= HANG_TIMEOUT + 15  # found within the timeout and a margin
    log = (run / "logs" / "pretrain.restart-0.log").read_text()
    assert "[llmops] hung: the launcher (pid" in log and f"hang timeout {HANG_TIMEOUT:.0f}s" in log, log[-2000:]
    if st["restarts"]:  # stopped before its workers had finished: the stage restarted from its checkpoint
        assert st["stages"]["pretrain"]["why"]["1"].startswith("hung (the launcher stayed stopped"), st
    else:  # they had finished and waited to be collected
        assert "the stage has finished: its last step and final checkpoint are complete" in log
    same_curve(run, hung["reference"], STEPS)
    assert not run_processes(run)


def test_a_stopped_preparation_worker_is_found_and_the_stage_started_again(hung):
    run = hung["prepare"]
    st = status(run)
    assert st["state"] == "SUCCEEDED" and st["stages"]["prepare"]["restarts"] == 1, st
    assert st["stages"]["prepare"]["why"]["1"].startswith("hung (a data-preparation worker stayed stopped"), st
    log = (run / "logs" / "prepare.restart-0.log").read_text()
    assert "[llmops] hung: a data-preparation worker (pid" in log and "restarts from its finished shards" in log
    out = run.parent.parent / "prepared"
    stats, meta = (json.loads((out / name).read_text()) for name in ("stats.json", "metadata.json"))
    assert stats["output"]["documents"] == meta["documents"] > 0
    assert not run_processes(run)


def test_a_stopped_supervisor_is_shown_and_the_run_can_still_be_cancelled(hung):
    run = hung["supervisor"]
    shown = " ".join(hung["shown_stopped"].split())
    assert "RUNNING" in shown and "the supervisor process is stopped (pid" in shown, shown
    assert f"`llmops cancel {run.name}` continues it and stops the run" in shown, shown
    assert "stopped" not in hung["message_continued"]  # once it went on, the note went
    res = hung["cancel"]
    assert res.returncode == 0, res.stderr
    assert hung["cancel_seconds"] < 60, hung["cancel_seconds"]  # not the 120 s wait for a run that never stops
    st = status(run)
    assert st["state"] == "CANCELLED" and "checkpointed" in st["message"], st
    time.sleep(1.0)
    assert not run_processes(run), [p.info["cmdline"] for p in run_processes(run)]
