"""Prepare the built-in corpus, then train the tiny model on it with the real trainer (CLI, local backend)."""

from __future__ import annotations

import json
import math

from llmops_testing import llmops, losses, status, tiny_spec, write_spec

STEPS = 8


def test_prepare_then_train_the_tiny_model_on_its_output(tmp_path):
    out = tmp_path / "prepared"
    spec = tiny_spec("prepared", steps=STEPS, train={"lr": 1e-2, "min_lr": 1e-3},
                     prepare={"input": {"builtin": "python-docstrings"}, "filters": {"min_words": 20},
                              "tokenizer": {"vocab_size": 1024}, "output": {"dir": str(out)}})
    path = write_spec(tmp_path / "prepared.yaml", spec)
    res = llmops("prepare", str(path))
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["documents"] > 1000 and meta["tokens"] > 100_000 and meta["vocab_size"] == 1024

    runs = tmp_path / "runs"
    res = llmops("run", str(path), "--runs-dir", str(runs), timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_dir = next(runs.iterdir())
    assert status(run_dir)["state"] == "SUCCEEDED"
    resolved = (run_dir / "spec.yaml").read_text()
    assert meta["prefix"] in resolved and "vocab_size: 1024" in resolved
    curve = losses(run_dir)
    assert sorted(curve) == list(range(1, STEPS + 1)) and all(math.isfinite(v) for v in curve.values())
    assert 6.0 < curve[1] < 7.5, "starts near ln(1024) = 6.93: the tokens come from the 1,024-piece vocabulary"
    assert curve[STEPS] < curve[1] - 0.5, f"loss did not fall: {curve}"
