"""How long a newcomer's first run takes: `llmops run examples/tiny-cpu.yaml`, end to end, and where it goes.

    python benchmarks/first_run.py                     # this checkout, 2 rounds
    python benchmarks/first_run.py --ref 97c2bfe       # and an older commit beside it, interleaved
    python benchmarks/first_run.py --also-with LLMOPS_WARM_START=0   # and this checkout with that setting

Each round starts from nothing, as on a fresh clone: its own folder, no
prepared data, no run directory, an empty cache folder, so every stage runs (prepare, pretrain, SFT,
DPO on 4 CPU processes with TP=2 x PP=2). Wall time is the `llmops run`
command's, as the user waits for it; the per-stage split (queue, start-up,
training, checkpointing) comes from the run's own report. With ``--ref`` the
other commit is checked out in a git worktree and imported ahead of this
checkout's installed packages (same virtual environment, same libraries), and
the two alternate within each round, so that load on a shared machine falls
on both alike; each one's best round counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def checkout(ref: str, into: Path) -> Path:
    """A worktree of `ref`, with its two packages exposed under their import names in `into/pkgs`."""
    tree = into / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref], check=True,
                   capture_output=True)
    pkgs = into / "pkgs"
    pkgs.mkdir()
    (pkgs / "llmops").symlink_to(tree / "llmops")
    (pkgs / "llmops_model").symlink_to(tree / "model")
    return pkgs


def one_run(label: str, pythonpath: Path | None, source: Path, work: Path, extra: dict[str, str]) -> dict:
    """One fresh `llmops run` of the example in `work`; its wall time and the report's per-stage split."""
    work.mkdir(parents=True)
    shutil.copytree(source / "examples", work / "examples")
    env = {**os.environ, "COLUMNS": "80", "XDG_CACHE_HOME": str(work / ".cache"), **extra}  # no cache from before
    env.pop("LLMOPS_RUNS_DIR", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    began = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "llmops", "run", "examples/tiny-cpu.yaml"], cwd=work, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - began
    if res.returncode != 0:
        raise SystemExit(f"{label}: llmops run exited {res.returncode}\n{res.stderr[-3000:]}")
    run_dir = next((work / "runs").iterdir())
    code = ("import json, sys; from llmops.runs.rundir import RunDir; from llmops.runs.report import summarize; "
            "s = summarize(RunDir(sys.argv[1])); "
            "print(json.dumps({x.name: getattr(x, 'time', None) or {'total': x.seconds} for x in s['stages']}))")
    split = subprocess.run([sys.executable, "-c", code, str(run_dir)], env=env, capture_output=True, text=True,
                           check=True)
    lines = (res.stdout + res.stderr).splitlines()
    return {"label": label, "wall": wall, "stages": json.loads(split.stdout), "terminal_lines": len(lines),
            "widest_line": max(len(x) for x in lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", help="Also time this git commit (a worktree), alternating with this checkout.")
    parser.add_argument("--also-with", metavar="VAR=VALUE",
                        help="Also time this checkout with this environment variable set, alternating.")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmops-first-run-") as tmp:
        tmp = Path(tmp)
        sides: list[tuple[str, Path | None, Path, dict[str, str]]] = [("this checkout", None, ROOT, {})]
        if args.ref:
            pkgs = checkout(args.ref, tmp / "ref")
            sides.insert(0, (args.ref, pkgs, tmp / "ref" / "tree", {}))
        if args.also_with:
            var, _, value = args.also_with.partition("=")
            sides.insert(0, (args.also_with, None, ROOT, {var: value}))
        results = []
        try:
            for n in range(args.rounds):
                for i, (label, pythonpath, source, extra) in enumerate(sides):
                    r = one_run(label, pythonpath, source, tmp / f"{n}-{i}", extra)
                    print(f"round {n + 1}  {label:<14} {r['wall']:6.1f} s  ({r['terminal_lines']} terminal lines, "
                          f"widest {r['widest_line']})", flush=True)
                    results.append(r)
        finally:
            if args.ref:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "ref" / "tree")],
                               capture_output=True)
        print()
        for label, *_ in sides:
            best = min((r for r in results if r["label"] == label), key=lambda r: r["wall"])
            print(f"{label}: best {best['wall']:.1f} s of {args.rounds}; {best['terminal_lines']} terminal lines")
            for stage, t in best["stages"].items():
                print(f"  {stage:<9} " + "  ".join(f"{k} {v:5.1f}" for k, v in t.items() if v is not None))


if __name__ == "__main__":
    main()
