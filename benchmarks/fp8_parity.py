"""FP8 against bf16 on real text: the same run twice through ``llmops run``, loss curves side by side.

GPT-350M pre-trains on a prepared corpus (``llmops prepare``'s output folder:
its ``corpus_text_document`` and ``tokenizer.model``) once with
``train.precision: bf16`` and once with ``fp8``, same seed, data order and
schedule. Reported: the training loss of both, averaged over windows of
``--window`` steps, the held-out losses, the relative difference of the last
window (the issue's bar: within 1%), and the tokens per second of each.
``--svg`` draws both curves (window means, held-out losses dashed) with the
run report's charts, as a standalone SVG for the docs.

    python benchmarks/fp8_parity.py --data DIR [--steps 500] [--recipe auto] [--out parity.json] [--svg curve.svg]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def spec(data: Path, *, precision: str, recipe: str, steps: int, seq: int, batch: int) -> dict:
    train = {"steps": steps, "global_batch_size": batch, "micro_batch_size": batch, "lr": 3.0e-4, "min_lr": 3.0e-5,
             "warmup_steps": max(1, steps // 20), "log_interval": 1, "eval_interval": max(1, steps // 10),
             "precision": precision, "tensorboard": False}
    if precision == "fp8":
        train["fp8_recipe"] = recipe
    return {"name": f"parity-{precision}", "resources": {"gpus_per_node": 1},
            "model": {"preset": "gpt-350m", "seq_length": seq, "vocab_size": 16384},
            "data": {"indexed": {"paths": [str(data / "corpus_text_document")], "split": "95,5,0"}},
            "train": train, "checkpoint": {"interval": steps}, "samples": {"enabled": False}}


def one(data: Path, work: Path, **kw) -> dict:
    s = spec(data, **kw)
    path = work / f"{s['name']}.yaml"
    path.write_text(yaml.safe_dump(s))
    res = subprocess.run([sys.executable, "-m", "llmops", "run", str(path), "--runs-dir", str(work / "runs")],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"the {s['name']} run failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    (run,) = (work / "runs").glob(f"{s['name']}-*")
    folder = run / "stages" / "pretrain"
    rows = _jsonl(folder / "metrics.jsonl")
    evals = {r["step"]: r["loss"] for r in _jsonl(folder / "eval.jsonl")}  # a repeated step: the later row
    timed = rows[len(rows) // 10:]  # past start-up
    return {"precision": kw["precision"], "losses": [r["loss"] for r in rows],
            "held_out": sorted(evals.items()),
            "tokens_per_s": sum(r["tokens_per_s"] for r in timed) / len(timed)}


def curves_svg(runs: dict, mean: dict, window: int) -> str:
    """The two training-loss curves (means of `window` steps, at each window's last step) and held-out losses."""
    from llmops.runs.charts import Series, line_chart

    colours = {"bf16": "#2f6fb0", "fp8": "#d9622b"}
    steps = len(next(iter(runs.values()))["losses"])
    series = [Series(f"{p} training loss (mean of {window} steps)",
                     [(min((i + 1) * window, steps), v) for i, v in enumerate(mean[p])], colours[p])
              for p in ("bf16", "fp8")]
    series += [Series(f"{p} held-out loss", [(float(s), v) for s, v in runs[p]["held_out"]], colours[p],
                      dashed=True, markers=True, hollow=p == "bf16") for p in ("bf16", "fp8")]
    return line_chart(series, y_title="loss", x_range=(1, steps)) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a `llmops prepare` output folder")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--recipe", default="auto")
    ap.add_argument("--window", type=int, default=25)
    ap.add_argument("--out", help="write both runs' losses and window means here (JSON)")
    ap.add_argument("--svg", help="draw both curves here (SVG)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fp8-parity-"))
    runs = {p: one(args.data.resolve(), work, precision=p, recipe=args.recipe, steps=args.steps, seq=args.seq,
                   batch=args.batch) for p in ("bf16", "fp8")}
    w = args.window
    mean = {p: [sum(r["losses"][i:i + w]) / len(r["losses"][i:i + w]) for i in range(0, len(r["losses"]), w)]
            for p, r in runs.items()}
    print(f"{'steps':>11} {'bf16':>8} {'fp8':>8} {'fp8/bf16':>9}")
    for i, (b, f) in enumerate(zip(mean["bf16"], mean["fp8"], strict=True)):
        print(f"{i * w + 1:>5}-{min((i + 1) * w, args.steps):<5} {b:>8.4f} {f:>8.4f} {f / b:>9.4f}")
    for (step, b), (_, f) in zip(runs["bf16"]["held_out"], runs["fp8"]["held_out"], strict=True):
        print(f"held-out at step {step}: bf16 {b:.4f}, fp8 {f:.4f} ({f / b:.4f})")
    tb, tf = runs["bf16"]["tokens_per_s"], runs["fp8"]["tokens_per_s"]
    print(f"last {w} steps: fp8/bf16 = {mean['fp8'][-1] / mean['bf16'][-1]:.4f}; tokens/s bf16 {tb:,.0f}, "
          f"fp8 {tf:,.0f} ({tf / tb:.2f}x)")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                              "window_means": mean}, indent=1))
    if args.svg:
        Path(args.svg).write_text(curves_svg(runs, mean, w))


if __name__ == "__main__":
    main()
