"""Data preparation fanned out as submitit job arrays on the dev cluster: what a cancel does to its shards.

Start the cluster with `cluster/slurm/dev-cluster.sh up`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from llmops_testing import llmops, write_spec
from llmops_testing.slurm import status, submit, tail_logs, wait_state

pytestmark = pytest.mark.slurm
SLOW_SHARD = Path(__file__).parent / "slow_shard"


def prepare_spec(name: str, tmp_path: Path, **env: str) -> dict:
    """Preparation alone, 2 shards of one CPU each, `env` in the jobs."""
    return {"name": name, "backend": "slurm", "profile": "slurm-dev",
            "resources": {"nodes": 1, "cpu": True, "processes_per_node": 1},
            "prepare": {"input": {"builtin": "python-docstrings"}, "tokenizer": {"vocab_size": 1024},
                        "output": {"dir": str(tmp_path / "data")}},
            "slurm": {"prepare_shards": 2, "prepare_cpus_per_task": 1, "env": env}}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _slow_shard(name: str, shard: str, tmp_path: Path) -> tuple[Path, int]:
    """Submit a prepare run whose `shard` (e.g. clean-0) is held slow by SLOW_SHARD's hook; (its run folder, the
    shard's pid) once the shard runs."""
    pid_file = tmp_path / "slow.pid"
    spec = prepare_spec(name, tmp_path, PYTHONPATH=str(SLOW_SHARD), LLMOPS_TEST_SLOW_SHARD=shard,
                        LLMOPS_TEST_SLOW_PID=str(pid_file))
    run_dir = submit(write_spec(tmp_path / "spec.yaml", spec), tmp_path / "runs")
    deadline = time.time() + 90
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline, f"the slow shard never started: {status(run_dir)}\n{tail_logs(run_dir)}"
        time.sleep(0.2)
    return run_dir, int(pid_file.read_text())


def test_cancel_ends_running_shards_before_it_says_cancelled(slurm_env, tmp_path: Path) -> None:
    """submitit ignores SIGTERM, so a plain scancel left a shard running for KillWait (30 s) while status said
    CANCELLED at once, and a resume ran a second copy of it beside it."""
    run_dir, pid = _slow_shard("prep-cancel", "clean-0", tmp_path)
    assert alive(pid)

    started = time.monotonic()
    res = llmops("cancel", run_dir.name, "--runs-dir", str(tmp_path / "runs"), timeout=150)
    took = time.monotonic() - started
    assert res.returncode == 0 and "CANCELLED" in res.stderr, res.stderr
    assert not alive(pid), "the run was said to be CANCELLED while its shard still ran"
    assert took < 20, f"the shard was left to Slurm's KillWait ({took:.0f} s)"
    assert status(run_dir)["state"] == "CANCELLED"


def test_a_killed_shard_is_named_with_submitits_evidence(slurm_env, tmp_path: Path) -> None:
    """kill -9 of a shard read "arrays ... ended as CANCELLED" (the later phases, which Slurm cancelled), the
    shard unnamed, and its evidence was only in submitit's log, which `llmops logs` never showed."""
    run_dir, pid = _slow_shard("prep-killed", "clean-1", tmp_path)
    os.kill(pid, 9)

    final = wait_state(run_dir, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=60)
    assert final["state"] == "FAILED", final
    assert final["message"].startswith("task clean-00001 ended without finishing"), final["message"]
    assert "task 0: Killed; see slurm/submitit/" in final["message"], final["message"]
    res = llmops("logs", run_dir.name, "--stage", "prepare", "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 0 and "task 0: Killed" in res.stdout, res.stdout
