"""The launcher's watchdog over heartbeat files: when it arms, what timeout it learns, whom it names.

(The whole path, a frozen rank found, its stacks written and the stage restarted, is a fault test:
tests/backends/local/test_faults.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

from llmops_model.train import heartbeat


def _beat(folder: Path, rank: int, step: int, phase: str, at: float) -> None:
    (folder / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "pid": 1, "step": step, "phase": phase,
                                                          "time": at}))


def _dog(folder: Path, timeout: float | None = None) -> heartbeat.Watchdog:
    return heartbeat.Watchdog(folder, ranks=2, timeout=timeout, workers=list, on_hang=lambda s: None)


def test_it_arms_once_every_rank_has_beaten_and_names_the_rank_behind(tmp_path):
    dog = _dog(tmp_path, timeout=10)
    _beat(tmp_path, 0, 5, "step", at=100.0)
    assert dog.check(now=1000.0) is None  # rank 1 has not finished a step: start-up is not watched
    _beat(tmp_path, 1, 4, "checkpoint", at=95.0)
    assert dog.check(now=109.0) is None
    found = dog.check(now=111.0)
    assert (found.rank, found.step, found.phase, found.timeout) == (1, 4, "checkpoint", 10)
    assert (found.behind, found.ahead) == ((1,), (5, "step", 0))
    assert round(found.seconds) == 11  # since the newest heartbeat: the node as a whole went quiet
    assert ("rank 1 is behind, after step 4 (checkpoint), while rank 0 is further, after step 5 (step): the others "
            "are most likely waiting for it") in found.describe()


def test_ranks_stopped_together_are_told_apart_from_ranks_left_behind(tmp_path):
    dog = heartbeat.Watchdog(tmp_path, ranks=4, timeout=10, workers=list, on_hang=lambda s: None)
    for rank in range(4):  # all four inside the same save: a wait they share
        _beat(tmp_path, rank, 7, "checkpoint", at=100.0 + rank)
    found = dog.check(now=120.0)
    assert found.behind == () and (found.step, found.phase) == (7, "checkpoint")
    assert "all its ranks stopped at the same point, after step 7 (checkpoint)" in found.describe()
    _beat(tmp_path, 0, 8, "step", at=105.0)  # rank 0 got out of the save and through a step; 1-3 did not
    _beat(tmp_path, 2, 8, "step", at=104.0)
    found = dog.check(now=120.0)
    assert (found.behind, found.ahead) == ((1, 3), (8, "step", 0)), found
    assert "ranks 1, 3 are behind, after step 7 (checkpoint)" in found.describe()
    assert found.describe().endswith("waiting for them")


def test_unset_the_timeout_grows_with_the_slowest_step_and_save(tmp_path):
    dog = _dog(tmp_path)
    assert dog.timeout() == heartbeat.MIN_AUTO_TIMEOUT
    t = 0.0
    for step, took in ((1, 20.0), (2, 45.0), (3, 30.0)):
        t += took
        for rank in (0, 1):
            _beat(tmp_path, rank, step, "step", at=t)
        dog.check(now=t)
    assert dog.slowest_step == 45.0 and dog.timeout() == 450.0
    for rank in (0, 1):
        _beat(tmp_path, rank, 3, "checkpoint", at=t + 1)
    dog.check(now=t + 1)
    for rank in (0, 1):
        _beat(tmp_path, rank, 3, "step", at=t + 201)  # a 200 s save
    dog.check(now=t + 201)
    assert dog.slowest_save == 200.0 and dog.timeout() == 600.0


def test_beats_are_written_only_under_a_launcher_that_watches(tmp_path, monkeypatch):
    monkeypatch.delenv(heartbeat.ENV, raising=False)
    heartbeat.beat(3, "step")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(heartbeat.ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "7")
    heartbeat.beat(3, "step")
    beat = json.loads((tmp_path / "rank-7.json").read_text())
    assert (beat["rank"], beat["step"], beat["phase"]) == (7, 3, "step")


def test_ranks_that_finished_their_stage_are_not_hung_only_slow_to_exit(tmp_path):
    dog = _dog(tmp_path, timeout=10)
    _beat(tmp_path, 0, 30, heartbeat.DONE, at=100.0)
    _beat(tmp_path, 1, 30, "step", at=99.0)
    found = dog.check(now=111.0)  # rank 1 has not finished: silence there is a hang
    assert (found.rank, found.phase, found.finished, found.behind) == (1, "step", False, (1,))
    assert "rank 1 is behind, after step 30 (step), while rank 0 has finished its stage" in found.describe()
    (tmp_path / "rank-1.json").write_text(json.dumps({"rank": 1, "pid": 1, "step": 30, "phase": heartbeat.DONE,
                                                      "time": 101.0, "code": 75}))
    assert dog.check(now=110.0) is None
    found = dog.check(now=112.0)  # both finished, still there a timeout later: stopped, with the stage's code
    assert found.finished and found.code == 75
    assert "finished its stage (exit code 75), but the workers have not exited 11s later" in found.describe()


def test_a_stage_ends_with_a_done_beat_carrying_its_exit_code(tmp_path, monkeypatch):
    monkeypatch.setenv(heartbeat.ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "0")
    heartbeat.beat(12, heartbeat.DONE, code=0)
    beat = json.loads((tmp_path / "rank-0.json").read_text())
    assert (beat["step"], beat["phase"], beat["code"]) == (12, heartbeat.DONE, 0)


_WORKER = """
import os, sys, time
from llmops_model.train import heartbeat

def rank_{rank}_waits_here():
    heartbeat.install()
    heartbeat.beat(3, "step")
    print("ready", flush=True)
    time.sleep(120)

rank_{rank}_waits_here()
"""


def test_each_ranks_stacks_reach_the_log_as_one_labelled_block_even_from_a_stopped_worker(tmp_path, capfd):
    """Two real workers (one stopped, as a frozen rank is), dumped by the watchdog: each dump lands under its
    rank's heading with every line labelled, so that dumps of several launchers writing into one log (Slurm
    interleaves the nodes' lines) can still be read rank by rank; then both are killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    env = {**os.environ, heartbeat.ENV: str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER.format(rank=rank)], env={**env, "RANK": str(rank)},
                              stdout=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        for proc in procs:
            assert proc.stdout.readline() == "ready\n"
        os.kill(procs[1].pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10  # a signal is delivered when the kernel next schedules the process
        while psutil.Process(procs[1].pid).status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.01)
        dog = heartbeat.Watchdog(tmp_path, ranks=2, timeout=1, workers=lambda: [p.pid for p in procs],
                                 on_hang=lambda s: None)
        dog.read()
        dog.dump_and_kill()
        assert [p.wait(timeout=10) for p in procs] == [-signal.SIGKILL] * 2
    finally:
        for proc in procs:
            proc.kill()
    log = capfd.readouterr().err
    blocks = log.split("[llmops] stacks of rank ")[1:]
    assert [b.split(",")[0] for b in blocks] == ["0", "1"], log
    assert "(it was stopped, SIGSTOP: continued to write them)" in blocks[1].splitlines()[0], log
    for rank, block in enumerate(blocks):
        lines = block.splitlines()[1:]
        assert lines and all(line.startswith(f"[rank {rank}] ") for line in lines), block
        assert "most recent call first" in block and f"rank_{rank}_waits_here" in block, block
        assert f"rank_{1 - rank}_waits_here" not in block, block
