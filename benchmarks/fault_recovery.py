"""Fault to first resumed training step, and the steps lost, on the local backend.

Three faults, each injected into a real run (Megatron-Core, torchrun, the local
supervisor) once it has trained past its first checkpoint:

* ``sigkill-rank``: SIGKILL to one training rank mid-step (a segfault, the
  OOM killer): the group is torn down, the stage restarts from its last
  checkpoint; the steps since then are lost and run again;
* ``preempt``: SIGTERM to the job (a preemption notice): every rank stops at
  the step boundary, checkpoints, exits 75 and is restarted; nothing is lost;
* ``hang``: SIGSTOP to one training rank (no exit, no error) with
  ``restarts.hang_timeout`` at ``--hang-timeout`` seconds: the launcher's
  watchdog writes every rank's stacks, stops the job and the stage restarts
  from its last checkpoint. Reported apart: the seconds from the fault to the
  ``hung`` event (the timeout plus the detection delay).

Measured per case: seconds from the fault to the first training step logged
by the restarted job, lost steps (from the run report), and how long the
restart's start-up took (imports, rendezvous, build, checkpoint load).

    python benchmarks/fault_recovery.py [--spec examples/tiny-cpu-synthetic.yaml] [--repeat 3] [--hang-timeout 10]
        [--slurm] [--json out.json]

``--slurm`` runs the hang case on the Slurm dev cluster instead
(``cluster/slurm/dev-cluster.sh up``, ``$SLURM_CONF`` set): the same model on
2 nodes x 2 CPU processes, submitted with ``llmops submit``; its nodes share
this machine, so the rank to freeze is found here as for a local run. The
time from the fault to the first resumed step then includes the requeue and
the wait in Slurm's queue. The other Slurm figures (pre-timeout notice, node
loss) come from the ``slurm``-marked tests, which record them as junit
properties: ``pytest -m slurm tests/backends/slurm/test_cluster.py -k "preemption or node_loss or hung" -s``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from llmops import runner
from llmops.runs.report import summarize
from llmops.runs.rundir import RunDir
from llmops_model.warm import find_workers

REPO = Path(__file__).resolve().parents[1]


def _llmops(*args: str, cwd: Path) -> str:
    res = subprocess.run([sys.executable, "-m", "llmops", *args], cwd=cwd, capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        raise SystemExit(f"llmops {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout


def _wait(predicate, what: str, timeout: float = 600, poll: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise SystemExit(f"timed out waiting for {what}")


def _progress(run: RunDir) -> int:
    p = run.progress("pretrain")
    return p["step"] if p else 0


def _rows(run: RunDir) -> list[dict]:
    path = run.stage_dir("pretrain") / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


CASES = ("sigkill-rank", "preempt", "hang")


def one(case: str, spec: dict, work: Path) -> dict:
    spec_path = work / f"{case}.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    start = ("submit",) if spec["backend"] == "slurm" else ("run", "--detach")
    run_id = _llmops(*start, str(spec_path), "--runs-dir", str(work / "runs"), cwd=work).split()[-1]
    run = RunDir(work / "runs" / run_id)
    interval = spec["checkpoint"]["interval"]
    _wait(lambda: _progress(run) >= interval + 3, f"step {interval + 3}")
    fault_at = time.time()
    if case in ("sigkill-rank", "hang"):
        victim = find_workers(run.path)[1]
        victim.send_signal(signal.SIGKILL if case == "sigkill-rank" else signal.SIGSTOP)
    else:
        os.kill(run.read_status().job_pgid, signal.SIGTERM)
    first = _wait(lambda: next((r for r in _rows(run) if r["restart"] == 1), None), "the first resumed step")
    # runner.status asks the backend (squeue and the batch scripts' events for a Slurm run)
    _wait(lambda: runner.status(run).state in ("SUCCEEDED", "FAILED", "CANCELLED"), "the end of the run", poll=1.0)
    (stage,) = [s for s in summarize(run)["stages"] if s.name == "pretrain"]
    again = next(a for a in stage.attempts if a.restart == 1)
    events = [json.loads(line) for line in (run.stage_dir("pretrain") / "events.jsonl").read_text().splitlines()]
    hung = next((e["time"] for e in events if e["event"] == "hung"), None)
    return {"case": case, "state": run.read_status().state, "fault_to_first_step_s": first["time"] - fault_at,
            "fault_to_detection_s": None if hung is None else hung - fault_at,
            "lost_steps": stage.lost_steps, "restart_startup_s": again.first_step_at - again.started,
            "step_time_s": statistics.median(r["step_time"] for r in stage.rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(REPO / "examples" / "tiny-cpu-synthetic.yaml"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hang-timeout", type=float, default=10.0, help="restarts.hang_timeout for the hang case")
    ap.add_argument("--slurm", action="store_true", help="the hang case on the Slurm dev cluster ($SLURM_CONF)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    base = yaml.safe_load(Path(args.spec).read_text())
    cases = CASES
    if args.slurm:
        cases = ("hang",)
        base.update(backend="slurm", profile="slurm-dev", resources={"nodes": 2, "cpu": True, "processes_per_node": 2})
    base["train"].update(steps=60, log_interval=1)
    base["checkpoint"] = {"interval": 10, "keep_last": 2}
    base["restarts"] = {"max_restarts": 2}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for case in cases:
                spec = {**base, "name": f"{case}-{i}"}
                if case == "hang":
                    spec["restarts"] = {**base["restarts"], "hang_timeout": args.hang_timeout}
                r = one(case, spec, Path(tmp))
                results.append(r)
                found = "" if r["fault_to_detection_s"] is None else f" (hung after {r['fault_to_detection_s']:.1f} s)"
                print(f"{case:13s} fault -> first resumed step {r['fault_to_first_step_s']:5.1f} s{found}  "
                      f"lost {r['lost_steps']} step(s)  restart start-up {r['restart_startup_s']:5.1f} s  "
                      f"({r['state']}, {r['step_time_s']:.3f} s/step)", flush=True)
    print("\nmedian over", args.repeat, "run(s):")
    for case in cases:
        rs = [r for r in results if r["case"] == case]
        print(f"  {case:13s} {statistics.median(r['fault_to_first_step_s'] for r in rs):5.1f} s to the first "
              f"resumed step, {statistics.median(r['lost_steps'] for r in rs):g} step(s) lost")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
