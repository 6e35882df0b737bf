"""Helpers for tests: write specs, drive the real CLI, read what runs leave behind.

Import as `from llmops_testing import ...` (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from llmops.runs.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]


def tiny_spec(name: str, *, tp: int = 1, pp: int = 1, procs: int | None = None, steps: int = 4,
              **overrides: Any) -> dict[str, Any]:
    """A tiny CPU spec; `overrides` replace whole sections or merge into `train`/`checkpoint`.

    Held-out evaluations are off (a 4-step run would evaluate at every step, about 3% of its time): tests of
    them turn them on with `train={"eval_interval": ...}` (None: the default). So are the samples at the end of
    each stage (5-8 s per stage for runs with a tokenizer): tests of them pass `samples={"enabled": True}`."""
    spec: dict[str, Any] = {
        "name": name,
        "resources": {"cpu": True, "processes_per_node": procs or tp * pp},
        "parallelism": {"tensor": tp, "pipeline": pp},
        "model": {"preset": "tiny"},
        "train": {"steps": steps, "global_batch_size": 8, "micro_batch_size": 2, "lr": 3.0e-3,
                  "warmup_steps": 1, "tensorboard": False, "eval_interval": 0},
        "checkpoint": {"interval": 100},
        "restarts": {"max_restarts": 0},
        "samples": {"enabled": False},
    }
    for key, value in overrides.items():
        if key in ("train", "checkpoint") and isinstance(value, dict):
            spec[key].update(value)
        else:
            spec[key] = value
    return spec


def k8s_spec(**k8s: Any) -> dict[str, Any]:
    """The Kubernetes tests' run: TP 2 x PP 2 over two CPU pods, `k8s` merged into its section."""
    spec = tiny_spec("tiny-k8s", tp=2, pp=2, procs=2, restarts={"max_restarts": 2})
    spec.update(backend="k8s", resources={"nodes": 2, "cpu": True, "processes_per_node": 2},
                k8s={"image": "llmops:dev", **k8s})
    return spec


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def llmops(*args: str, cwd: Path | None = None, timeout: float = 300,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "llmops", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def start(spec_path: Path, runs_dir: Path, env: dict[str, str] | None = None) -> Path:
    """Start a run detached (its processes inherit `env` on top of this one's); returns its run directory."""
    res = llmops("run", str(spec_path), "--detach", "--runs-dir", str(runs_dir), env=env)
    assert res.returncode == 0, res.stderr
    return runs_dir / res.stdout.strip().splitlines()[-1]


def status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_state(run_dir: Path, states: set[str], timeout: float = 240) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = status(run_dir)
        if st.get("state") in states:
            return st
        time.sleep(0.3)
    log = "\n".join(p.read_text()[-3000:] for p in sorted((run_dir / "logs").glob("*.log")))
    raise AssertionError(f"{run_dir.name} never reached {states}: {status(run_dir)}\n{log}")


def wait_step(run_dir: Path, step: int, timeout: float = 240, stage: str | None = None) -> None:
    """Wait until `stage` (default: the stage running now) has logged `step`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if RunDir(run_dir).progress(stage)["step"] >= step:
                return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if status(run_dir).get("state") in ("SUCCEEDED", "FAILED", "CANCELLED"):
            raise AssertionError(f"{run_dir.name} ended before step {step}: {status(run_dir)}")
        time.sleep(0.2)
    raise AssertionError(f"{run_dir.name} never reached step {step}")


def losses(run_dir: Path, stage: str = "pretrain") -> dict[int, float]:
    """Loss per step from the stage's metrics.jsonl; a step re-run after a restart keeps its latest value."""
    out: dict[int, float] = {}
    for line in (run_dir / "stages" / stage / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["loss"]
    return out


def same_curve(run: Path, reference: Path, steps: int) -> None:
    """The run logged every step 1..`steps` once at least, each at the uninterrupted reference's loss (training on
    CPU is deterministic: a step run again from a checkpoint gives the same loss)."""
    import pytest

    ref, got = losses(reference), losses(run)
    assert sorted(got) == list(range(1, steps + 1))
    for step in got:
        assert got[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-7), step


def run_processes(run_dir: Path) -> list:
    """Every process of the run still alive (psutil processes): supervisor, launcher, torchrun, workers, prepare."""
    import psutil

    key = str(run_dir.resolve())
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(key in part for part in p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            continue
    return found


def log_text(run_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((run_dir / "logs").glob("pretrain.restart-*.log")))


def run_one_rank(script: str, case: dict[str, Any], folder: Path, *, timeout: float = 600) -> Any:
    """Run `script` (Python source) as rank 0 of a one-process torch.distributed job, with `case` as its
    argument in JSON, written to `folder`; returns the JSON of its last line of output."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = folder / "one_rank_case.py"
    path.write_text(script)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    res = subprocess.run([sys.executable, str(path), json.dumps(case)], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **env})
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
