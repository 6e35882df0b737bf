"""How long checkpoint saves hold training up, as a share of the training time, with async save on and off.

Runs the spec (default: the 350M one-GPU example) twice through ``llmops run``,
saving every ``--interval`` steps, once with ``checkpoint.async_save: true``
and once without, and reads the stage's ``events.jsonl`` (the stall of every
save, as the training loop saw it) and ``metrics.jsonl`` (step times):

    stall share = sum of the stalls of the periodic saves / time of the steps between them

The final save of a run is synchronous either way (nothing may be left
half-written when the process exits) and is reported apart. The first
periodic save pays one-off costs (the save plan is made and validated); the
share is given with and without it. A stall includes any wait for the
previous background save to finish writing (shown apart).

    python benchmarks/checkpoint_stall.py [--spec examples/gpt-350m-1gpu.yaml] [--steps 120] [--interval 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def one(spec: dict, *, async_save: bool, work: Path) -> dict:
    spec = {**spec, "name": f"stall-{'async' if async_save else 'sync'}",
            "checkpoint": {**spec["checkpoint"], "async_save": async_save, "dir": str(work / f"ckpt-{async_save}")}}
    path = work / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = subprocess.run([sys.executable, "-m", "llmops", "run", str(path), "--runs-dir", str(work / "runs")],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"the {spec['name']} run failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    (run,) = (work / "runs").glob(f"{spec['name']}-*")
    folder = run / "stages" / "pretrain"
    saves = [e for e in _jsonl(folder / "events.jsonl") if e["event"] == "save"]
    rows = _jsonl(folder / "metrics.jsonl")
    steps = spec["train"]["steps"]
    periodic = [e for e in saves if e["step"] < steps]
    step_time = sum(r["step_time"] for r in rows) * spec["train"].get("log_interval", 1)
    later = periodic[1:]
    return {
        "async": async_save, "steps": steps, "step_time_s": step_time / steps, "train_s": step_time,
        "stalls_s": [round(e["stall"], 3) for e in periodic],
        "waited_s": [round(e.get("waited", 0.0), 3) for e in periodic],
        "describe_s": [round(e.get("describe", 0.0), 3) for e in periodic],
        "final_save_s": saves[-1]["stall"] if saves else None,
        "share": sum(e["stall"] for e in periodic) / step_time,
        "share_after_first": sum(e["stall"] for e in later) / (step_time * len(later) / max(len(periodic), 1))
        if later else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(REPO / "examples" / "gpt-350m-1gpu.yaml"))
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--interval", type=int, default=20)
    ap.add_argument("--modes", default="async,sync", help="async, sync or both (comma-separated)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path, help="keep the runs (logs, events) here instead of a temporary folder")
    args = ap.parse_args()
    spec = yaml.safe_load(Path(args.spec).read_text())
    spec["train"].update(steps=args.steps, log_interval=1)
    spec["checkpoint"] = {**spec.get("checkpoint", {}), "interval": args.interval, "keep_last": 2}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            tmp = str(args.workdir)
        for async_save in [m == "async" for m in args.modes.split(",")]:
            r = one(spec, async_save=async_save, work=Path(tmp))
            results.append(r)
            after = f"{100 * r['share_after_first']:.2f}%" if r["share_after_first"] is not None else "-"
            print(f"async_save={str(async_save):5s} step {r['step_time_s']:.3f} s; save stalls {r['stalls_s']} s; "
                  f"of which waiting for the previous save {r['waited_s']} s, describing the state "
                  f"{r['describe_s']} s; "
                  f"share of training {100 * r['share']:.2f}% (after the first save {after}); "
                  f"final synchronous save {r['final_save_s']:.2f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
