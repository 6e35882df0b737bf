"""Helpers for the tests that run jobs on the Slurm dev cluster."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from llmops import runner
from llmops.runs.rundir import RunDir
from llmops_testing import llmops, tiny_spec

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def two_node_spec(name: str, *, steps: int, interval: int = 100, max_restarts: int = 3,
                  **overrides: Any) -> dict[str, Any]:
    """The tiny model, TP=2 x PP=2 on 2 nodes x 2 CPU processes of the dev cluster."""
    spec = tiny_spec(name, tp=2, pp=2, steps=steps, resources={"nodes": 2, "cpu": True, "processes_per_node": 2},
                     checkpoint={"interval": interval}, restarts={"max_restarts": max_restarts}, **overrides)
    spec.update(backend="slurm", profile="slurm-dev")
    return spec


def submit(spec_path: Path, runs_dir: Path, *extra: str) -> Path:
    """`llmops submit`, as a user runs it; returns the run directory."""
    res = llmops("submit", str(spec_path), "--runs-dir", str(runs_dir), *extra, timeout=120)
    assert res.returncode == 0, res.stderr
    return runs_dir / res.stdout.strip().splitlines()[-1]


def status(run_dir: Path) -> dict[str, Any]:
    """The run's status after asking the cluster (what `llmops status` does), in-process to keep polling cheap."""
    st = runner.status(RunDir(run_dir))
    return {**st.__dict__}


def wait_state(run_dir: Path, states: set[str], timeout: float = 180) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = status(run_dir)
        if st["state"] in states:
            return st
        time.sleep(1)
    raise AssertionError(f"{run_dir.name} never reached {states}: {status(run_dir)}\n{tail_logs(run_dir)}")


def wait_for(run_dir: Path, predicate, what: str, timeout: float = 180, poll: float = 0.2) -> Any:
    """Poll until predicate() returns something truthy; fail (with the logs) if the run ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if json.loads((run_dir / "status.json").read_text()).get("state") in TERMINAL:
            break
        time.sleep(poll)
    raise AssertionError(f"{run_dir.name}: never saw {what}: {status(run_dir)}\n{tail_logs(run_dir)}")


def metrics(run_dir: Path, stage: str = "pretrain") -> list[dict]:
    """Every logged step row of `stage`, in the order written (a re-run step appears again)."""
    try:
        text = (run_dir / "stages" / stage / "metrics.jsonl").read_text()
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def step(run_dir: Path) -> int:
    rows = metrics(run_dir)
    return rows[-1]["step"] if rows else 0


def job_ids(run_dir: Path) -> list[str]:
    try:
        stages = json.loads((run_dir / "slurm" / "jobs.json").read_text())["stages"]
    except (OSError, ValueError):
        return []
    return [i for ids in stages.values() for i in ids]


def events(run_dir: Path) -> list[str]:
    try:
        return [" ".join(line.split()[4:]) for line in (run_dir / "slurm" / "events.log").read_text().splitlines()]
    except OSError:
        return []


def squeue_state(job_id: str) -> str:
    res = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], check=False, capture_output=True,
                         text=True)
    return res.stdout.strip()


def ended_state(job_id: str, timeout: float = 60.0) -> str:
    """The job's Slurm state once slurmd has finished with it: a job whose processes have all exited
    stays COMPLETING while the node runs its epilog and cleans up, which can outlast the run's own end."""
    deadline = time.monotonic() + timeout
    state = squeue_state(job_id)
    while state == "COMPLETING" and time.monotonic() < deadline:
        time.sleep(0.5)
        state = squeue_state(job_id)
    return state


def tail_logs(run_dir: Path, chars: int = 3000) -> str:
    parts = []
    for path in sorted((run_dir / "logs").glob("*")) if (run_dir / "logs").is_dir() else []:
        parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts)


def cancel_jobs(root: Path) -> None:
    """Cancel every job of every run under `root`: no test leaves work queued on the shared cluster."""
    ids = [i for jobs in root.rglob("slurm/jobs.json") for i in job_ids(jobs.parent.parent)]
    if ids:
        subprocess.run(["scancel", *ids], check=False, capture_output=True)
