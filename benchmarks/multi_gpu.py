"""Multi-GPU runs over NCCL: layouts agree, throughput scales, a checkpoint moves between layouts.

Every run is a real ``llmops run`` (local backend -> torchrun -> the training
entrypoint), the path the Slurm and Kubernetes backends launch on each node.
All runs share the seed, the synthetic data and a constant learning rate (so a
run's schedule does not depend on its length, and a resumed run can be laid
over an uninterrupted one step by step).

    python benchmarks/multi_gpu.py --gpus 2 --out mgpu/       # gpt-1.3b: ref, tp2, pp2, dp2, resume
    python benchmarks/multi_gpu.py --gpus 4 --out mgpu/       # adds tp2pp2 and dp4
    python benchmarks/multi_gpu.py --cpu --gpus 2 --out mgpu/ # the same protocol: tiny GPT, gloo, CPU

Runs (``--runs`` picks some; each one's result is stored in OUT/results.json
and a later call with the same OUT skips it, so the protocol can be split
across calls that each have a time limit):

* ``ref``: one GPU, global batch B (4 micro-batches);
* ``tp2``, ``pp2``, ``tp2pp2`` (4+ GPUs): global batch B; each step's loss
  against ``ref`` (bf16: within ``--tolerance`` relative);
* ``dpN``: N GPUs data parallel at global batch N*B (weak scaling);
  efficiency = tokens/s / (N x ref's); the goal is >= 0.9. TP2's efficiency is
  tokens/s / (2 x ref's) at B;
* ``resume``: ``resume-save`` trains half the steps as TP2 (TP2xPP2 on 4+
  GPUs) and checkpoints; ``resume`` loads a copy of that checkpoint as PP2
  (DP4 on 4+ GPUs: TP, PP and DP all change), trains the rest, and its losses
  are laid over ``ref``'s.

Throughput is the median tokens/s of the steps after ``--warmup`` (those hold
compilation and the CUDA-graph capture). Exit code 0 when every check passes,
1 when one does not, 2 on bad arguments. NVLink multicast stays off
(NCCL_NVLS_ENABLE=0 and its kin are forced into every run's environment).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from llmops.runs.checkpoints import OWNER

# Lent multi-GPU hosts share their GPUs: a program that uses NVLink multicast can put them out of service.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    def __str__(self) -> str:
        return f"tp{self.tp}-pp{self.pp}-dp{self.dp}"


@dataclass(frozen=True)
class Run:
    name: str
    layout: Layout
    batch_scale: int = 1  # global batch = batch_scale x B
    half: bool = False  # train half of --steps (and checkpoint there)
    resume_from: str | None = None  # copy this run's checkpoints and resume from them


def plan(gpus: int) -> list[Run]:
    """The runs for `gpus` GPUs, in the order they must run (a resume after the run it resumes from)."""
    runs = [Run("ref", Layout()), Run("tp2", Layout(tp=2)), Run("pp2", Layout(pp=2))]
    if gpus >= 4:
        runs.append(Run("tp2pp2", Layout(tp=2, pp=2)))
    runs.append(Run(f"dp{gpus}", Layout(dp=gpus), batch_scale=gpus))
    # Save on the widest model-parallel layout, resume on one that differs in TP, PP and (on 4+) DP.
    save, load = (Layout(tp=2, pp=2), Layout(dp=4)) if gpus >= 4 else (Layout(tp=2), Layout(pp=2))
    runs.append(Run("resume-save", save, half=True))
    runs.append(Run("resume", load, resume_from="resume-save"))
    return runs


class Protocol:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out).resolve()
        self.results_path = self.out / "results.json"
        self.results: dict = json.loads(self.results_path.read_text()) if self.results_path.exists() else {}

    @property
    def config(self) -> dict:
        a = self.args
        return {"size": a.size, "cpu": a.cpu, "steps": a.steps, "micro_batch": a.micro_batch, "lr": a.lr}

    def spec(self, run: Run, steps: int) -> dict:
        a, layout = self.args, run.layout
        world = layout.world
        resources = {"cpu": True, "processes_per_node": world} if a.cpu else {"gpus_per_node": world}
        checkpoint: dict = {"interval": steps, "keep_last": 1}
        if run.resume_from:
            checkpoint["dir"] = str(self.out / "checkpoints" / run.name)
        return {
            "name": f"mgpu-{run.name}", "backend": "local", "resources": resources,
            "parallelism": {"tensor": layout.tp, "pipeline": layout.pp},
            "model": {"preset": a.size}, "data": {"synthetic": {}},
            "train": {"steps": steps, "global_batch_size": 4 * a.micro_batch * run.batch_scale,
                      "micro_batch_size": a.micro_batch, "lr": a.lr, "min_lr": a.lr, "warmup_steps": 0,
                      "log_interval": 1, "seed": 1234, "tensorboard": False},
            "checkpoint": checkpoint, "restarts": {"max_restarts": 0},
        }

    def execute(self, run: Run) -> dict:
        steps = self.args.steps // 2 if run.half else self.args.steps
        runs_dir = self.out / "runs" / run.name
        shutil.rmtree(runs_dir, ignore_errors=True)  # an earlier call that did not finish
        if run.resume_from:
            source = self.results[run.resume_from]["checkpoints"]
            target = self.out / "checkpoints" / run.name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
            (target / OWNER).unlink(missing_ok=True)  # handed over to this run, on purpose, to load on another layout
        spec_path = self.out / "specs" / f"{run.name}.yaml"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec = self.spec(run, steps)
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        log_path = self.out / "logs" / f"{run.name}.txt"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"[multi_gpu] {run.name}: {run.layout} on {run.layout.world} "
              f"{'processes' if self.args.cpu else 'GPUs'}, {steps} steps (log: {log_path})", flush=True)
        began = time.monotonic()
        with open(log_path, "w") as log:
            code = subprocess.call([sys.executable, "-m", "llmops", "run", str(spec_path), "--runs-dir", str(runs_dir)],
                                   stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **NO_MULTICAST})
        wall = time.monotonic() - began
        if code != 0:
            tail = log_path.read_text()[-4000:]
            raise SystemExit(f"[multi_gpu] {run.name} exited {code} after {wall:.0f}s; the end of its log:\n{tail}")
        (run_dir,) = runs_dir.iterdir()
        metrics = run_dir / "stages" / "pretrain" / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        first = rows[0]["step"] if rows else 1  # a resumed run starts after its checkpoint
        timed = [r for r in rows if r["step"] >= first + self.args.warmup]
        result = {
            "layout": str(run.layout), "world": run.layout.world, "steps": steps, "wall_s": round(wall, 1),
            "global_batch": spec["train"]["global_batch_size"],
            "losses": {str(r["step"]): r["loss"] for r in rows},
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed) if timed else None,
            "mfu": statistics.median(r["mfu"] for r in timed) if timed and timed[0].get("mfu") else None,
            "checkpoints": str(run_dir / "checkpoints") if not run.resume_from else None,
        }
        if run.resume_from:
            log = (run_dir / "logs" / "pretrain.restart-0.log").read_text()
            result["resumed"] = next((line.split("] ", 1)[-1] for line in log.splitlines() if "resumed from" in line),
                                     None)
            shutil.rmtree(self.out / "checkpoints" / run.name)  # the copy it resumed from, and its own last save
        elif run.name != "resume-save":  # only the resume source keeps its checkpoint (1.3B: ~18 GB each)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        print(f"[multi_gpu] {run.name}: done in {wall:.0f}s, "
              f"{result['tokens_per_s'] or 0:,.0f} tokens/s", flush=True)
        return result

    def save(self) -> None:
        self.results_path.write_text(json.dumps(self.results, indent=1))


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def compare(results: dict, run: str, *, tolerance: float, from_step: int = 0) -> dict | None:
    """Per-step losses of `run` against ref's (steps after `from_step`)."""
    if run not in results or "ref" not in results:
        return None
    ref, got = results["ref"]["losses"], results[run]["losses"]
    steps = sorted((s for s in got if int(s) > from_step and s in ref), key=int)
    if not steps:
        return {"ok": False, "why": "no common steps"}
    worst = max(steps, key=lambda s: _rel(got[s], ref[s]))
    max_rel = _rel(got[worst], ref[worst])
    return {"ok": max_rel <= tolerance, "steps": f"{steps[0]}-{steps[-1]}", "max_rel": max_rel,
            "at_step": int(worst), "first_rel": _rel(got[steps[0]], ref[steps[0]])}


def _verdict(check: dict) -> str:
    if "max_rel" not in check:
        return check["why"]
    return (f"max {check['max_rel']:.1e} at step {check['at_step']} (steps {check['steps']}) "
            f"{'ok' if check['ok'] else 'DIFFERS'}")


def summarize(results: dict, *, gpus: int, tolerance: float) -> tuple[dict, list[str]]:
    """The checks and figures of whatever runs `results` holds, and a table of them."""
    summary: dict = {"parity": {}, "scaling": {}, "resume": None}
    lines = [f"{'run':<12} {'layout':<13} {'procs':>5} {'tokens/s':>10} {'MFU':>6}  loss vs ref"]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        check = None
        if name == "resume":
            check = compare(results, name, tolerance=tolerance, from_step=results["resume-save"]["steps"])
            if check:
                summary["resume"] = {**check, "resumed": r.get("resumed")}
        elif name not in ("ref", "resume-save") and not name.startswith("dp"):
            check = compare(results, name, tolerance=tolerance)
            if check:
                summary["parity"][name] = check
        tput = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        verdict = "-" if check is None else _verdict(check)
        lines.append(f"{name:<12} {r['layout']:<13} {r['world']:>5} {tput:>10} {mfu:>6}  {verdict}")
    ref = results.get("ref", {}).get("tokens_per_s")
    for name, n in ((f"dp{gpus}", gpus), ("tp2", 2)):
        if ref and results.get(name, {}).get("tokens_per_s"):
            summary["scaling"][name] = eff = results[name]["tokens_per_s"] / (n * ref)
            lines.append(f"scaling efficiency {name}: {eff:.3f}" + (" (goal >= 0.9)" if name.startswith("dp") else ""))
    if summary["resume"]:
        lines.append(f"resume: {summary['resume']['resumed']}")
    return summary, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, default=2, help="GPUs (or CPU processes with --cpu) to use: 2, 4 or 8")
    ap.add_argument("--size", default=None, help="model preset (default gpt-1.3b; tiny with --cpu)")
    ap.add_argument("--steps", type=int, default=20, help="steps per run (the resume splits them in half)")
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the throughput median")
    ap.add_argument("--micro-batch", type=int, default=None, help="micro-batch size (default 8; 2 with --cpu)")
    ap.add_argument("--lr", type=float, default=None, help="constant learning rate (default 3e-4; 3e-3 with --cpu)")
    ap.add_argument("--tolerance", type=float, default=None,
                    help="largest relative loss difference to ref (default 2e-2 in bf16; 1e-4 with --cpu in fp32)")
    ap.add_argument("--runs", nargs="+", default=None, help="run only these (default: all, in order)")
    ap.add_argument("--out", required=True, help="folder for runs, logs and results.json (re-use it to go on)")
    ap.add_argument("--cpu", action="store_true", help="CPU processes over gloo with the tiny GPT: checks the protocol")
    args = ap.parse_args(argv)
    args.size = args.size or ("tiny" if args.cpu else "gpt-1.3b")
    args.micro_batch = args.micro_batch or (2 if args.cpu else 8)
    args.lr = args.lr or (3e-3 if args.cpu else 3e-4)
    args.tolerance = args.tolerance or (1e-4 if args.cpu else 2e-2)

    runs = {r.name: r for r in plan(args.gpus)}
    problems = []
    if args.gpus not in (2, 4, 8):
        problems.append(f"--gpus {args.gpus}: use 2, 4 or 8")
    if args.steps < 2 * args.warmup + 2:
        problems.append(f"--steps {args.steps}: the resume times half of them after --warmup {args.warmup}; "
                        f"use at least {2 * args.warmup + 2}")
    unknown = sorted(set(args.runs or ()) - set(runs))
    if unknown:
        problems.append(f"--runs {' '.join(unknown)}: not a run of this protocol; pick from {' '.join(runs)}")
    if not args.cpu:
        import torch

        if torch.cuda.device_count() < args.gpus:
            problems.append(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} CUDA GPUs; "
                            "use fewer, or --cpu to check the protocol without GPUs")
    if problems:
        print("\n".join(f"[multi_gpu] {p}" for p in problems), file=sys.stderr)
        return 2

    proto = Protocol(args)
    if proto.results.setdefault("_config", proto.config) != proto.config:
        print(f"[multi_gpu] {proto.results_path} holds runs of another configuration ({proto.results['_config']}); "
              "use another --out, or remove it to start again", file=sys.stderr)
        return 2
    for name in args.runs or runs:
        if name in proto.results:
            print(f"[multi_gpu] {name}: done in an earlier call; kept", flush=True)
            continue
        source = runs[name].resume_from
        if source and source not in proto.results:
            print(f"[multi_gpu] {name} resumes from {source}, which has not run: add it to --runs", file=sys.stderr)
            return 2
        proto.results[name] = proto.execute(runs[name])
        proto.save()

    summary, lines = summarize(proto.results, gpus=args.gpus, tolerance=args.tolerance)
    (proto.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))
    checks = [*summary["parity"].values(), *([summary["resume"]] if summary["resume"] else [])]
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
