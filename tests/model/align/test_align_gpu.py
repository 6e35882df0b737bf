"""SFT and DPO on one GPU: bf16 through Float16Module, the distributed optimizer, and a resume.

The CPU tests cover the arithmetic and the layouts; this covers what only a
GPU run takes: bf16 weights with fp32 main parameters (the starting weights
must reach the optimizer's copies, or the first step would undo them), the
reshardable distributed-optimizer checkpoints and NCCL.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from llmops_testing import llmops, start, status, wait_state, wait_step, write_spec

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _spec(name: str, assets, **sections) -> dict:
    return {"name": name, "resources": {"gpus_per_node": 1},
            "model": {"preset": "tiny", "vocab_size": assets.vocab, "seq_length": assets.seq},
            "restarts": {"max_restarts": 0}, **sections}


def _rows(run_dir: Path) -> dict[int, dict]:
    (folder,) = (run_dir / "stages").iterdir()  # each run here is a single stage
    return {r["step"]: r for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())}


def test_sft_then_dpo_on_one_gpu_in_bf16(tmp_path, assets):
    runs = tmp_path / "runs"
    pre = _spec("gpu-pretrain", assets, train={"steps": 20, "global_batch_size": 16, "micro_batch_size": 4,
                                               "lr": 3e-3, "warmup_steps": 2, "tensorboard": False},
                checkpoint={"dir": str(tmp_path / "pre")})
    wait_state(start(write_spec(tmp_path / "pre.yaml", pre), runs), {"SUCCEEDED"})
    common = {"tokenizer": str(assets.tokenizer), "global_batch_size": 16, "micro_batch_size": 4, "lr": 1e-3}
    sft = _spec("gpu-sft", assets, align={**common, "method": "sft", "data": {"path": str(assets.sft)}, "steps": 20,
                                           "start_from": str(tmp_path / "pre"),
                                           "checkpoint_dir": str(tmp_path / "sft")})
    sft_dir = start(write_spec(tmp_path / "sft.yaml", sft), runs)
    wait_state(sft_dir, {"SUCCEEDED"})
    rows = _rows(sft_dir)
    assert rows[20]["loss"] < rows[1]["loss"] and all(math.isfinite(r["loss"]) for r in rows.values())
    dpo = _spec("gpu-dpo", assets, align={**common, "method": "dpo", "data": {"path": str(assets.dpo)}, "steps": 40,
                                           "start_from": str(tmp_path / "sft"), "dpo": {"beta": 0.1}},
                checkpoint={"interval": 100})
    dpo_dir = start(write_spec(tmp_path / "dpo.yaml", dpo), runs)
    wait_step(dpo_dir, 5)
    assert llmops("cancel", dpo_dir.name, "--runs-dir", str(runs)).returncode == 0
    assert "checkpointed" in status(dpo_dir)["message"]
    assert llmops("resume", dpo_dir.name, "--detach", "--runs-dir", str(runs)).returncode == 0
    wait_state(dpo_dir, {"SUCCEEDED"})
    rows = _rows(dpo_dir)
    assert sorted(rows) == list(range(1, 41))
    # bf16: the reference pass and the first training pass round alike, so the first loss is ln 2.
    assert rows[1]["loss"] == pytest.approx(math.log(2), abs=2e-3)
    last = [rows[s] for s in range(36, 41)]
    assert sum(r["accuracy"] for r in last) / 5 >= 0.7 and sum(r["margin"] for r in last) / 5 > 0.2
    logs = "\n".join(p.read_text() for p in (dpo_dir / "logs").glob("*.restart-*.log"))
    assert "resumed from iter_" in logs and "reference log-probabilities read from" in logs
    print(json.dumps({s: {k: rows[s][k] for k in ("loss", "accuracy", "margin", "step_time")} for s in (1, 40)}))
