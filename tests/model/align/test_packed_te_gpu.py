"""Packed SFT on Transformer Engine's attention (THD packed_seq_params) computes what the project's own
attention computes with its block-diagonal mask: the same per-token losses on packed batches, for GPT-style
(learned positions) and Llama-style (RoPE, restarted per conversation) models, and the same after training
steps. Each case runs in its own process (one process group each); skipped without a GPU or TE.

On any machine: the THD boundaries are exactly the blocks of the mask.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from llmops_model.align.sources import blocked_attention, packed_sequences
from llmops_testing import run_one_rank

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    import torch
    from llmops.spec.load import parse_spec
    from llmops_model import parallel
    from llmops_model.align.examples import Ragged
    from llmops_model.align.objectives import SFT
    from llmops_model.align.sources import SFTSource
    from megatron.core import dist_checkpointing
    from llmops_model.train import checkpoint, loop


    def main():
        case = json.loads(sys.argv[1])
        model = {"seq_length": 256, "compile": False, "attention": case["attention"], "num_layers": 2,
                 "hidden_size": 256, "num_attention_heads": 4, "vocab_size": 1024}
        if case["style"] == "llama":
            model.update(normalization="RMSNorm", position_embedding="rope", activation="swiglu",
                         num_query_groups=2)
        spec = parse_spec({"name": "thd", "resources": {"gpus_per_node": 1}, "model": model,
                           "train": {"steps": 3, "global_batch_size": 4, "micro_batch_size": 2, "lr": 1e-3,
                                     "min_lr": 1e-3, "warmup_steps": 0, "precision": "bf16", "cuda_graphs": False,
                                     "tensorboard": False, "eval_interval": 0}})
        layout, device = parallel.setup(spec)
        t = loop.build(spec, layout=layout, device=device, ckpt_root=Path(case["ckpt"]), per_token_loss=True,
                       step_graph=False)
        # The same starting weights for both attentions: the first case saves them, the second loads them (TE's
        # layers and the project's share one checkpoint layout).
        inner = t.model.module
        if case["first"]:
            Path(case["ckpt"]).mkdir()
            dist_checkpointing.save(inner.sharded_state_dict(), case["ckpt"])
        else:
            checkpoint.load_model(inner, checkpoint.load(Path(case["ckpt"]), sharded_state=inner.sharded_state_dict()))
        rng = np.random.default_rng(0)
        convs = [rng.integers(4, 1000, size=int(n)) for n in rng.integers(20, 120, size=24)]
        trained = [np.r_[np.zeros(len(c) // 2), np.ones(len(c) - len(c) // 2)].astype(bool) for c in convs]
        ex = {"ids": Ragged.of(convs, np.int32), "trained": Ragged.of(trained, np.bool_)}
        source = SFTSource(ex, seq_length=256, packing=True, pad_id=3, seed=0)
        def batch(k):
            items = [source.item(2 * k + i) for i in range(2)]
            return {key: torch.stack([it[key] for it in items]).to(device) for key in items[0]}
        batches = [batch(k) for k in range(2)]
        obj = SFT(packed=True, thd=case["attention"] == "te")
        t.model.eval()
        with torch.no_grad():
            per_token = []
            for b in batches:
                output, _ = obj.forward_step(iter([b]), t.model)
                per_token.append((output.float() * b["loss_mask"]).tolist())
        t.model.train()
        losses = []
        for step in range(3):
            outputs, _ = loop.optimizer_step(t, iter(batches), forward_step=obj.forward_step, **obj.shape(2, 256))
            sums = {k: sum(float(o[k]) for o in outputs) for k in ("loss", "count")}
            losses.append(sums["loss"] / sums["count"])
        segments = int(batches[0]["segment_ids"].max())
        print(json.dumps({"per_token": per_token, "losses": losses, "segments": segments}))


    if __name__ == "__main__":  # dist_checkpointing's writer starts a process that imports this file
        main()
""")


def test_thd_boundaries_are_the_blocks_of_the_mask():
    segment_ids = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 3], [0, 0, 0, 0, 1, 1, 2, 2]])
    p = packed_sequences(segment_ids)
    assert p.qkv_format == "thd" and p.cu_seqlens_q.dtype == torch.int32
    assert p.cu_seqlens_q.tolist() == [0, 2, 5, 7, 8, 12, 14, 16] and p.max_seqlen_q == 4
    # The mask THD implies (causal within each sequence of the rows laid end to end) is the block mask's, row
    # by row, and no token of one row sees the other.
    n = segment_ids.numel()
    seq = torch.zeros(n, dtype=torch.long)
    for i, (a, b) in enumerate(zip(p.cu_seqlens_q[:-1].tolist(), p.cu_seqlens_q[1:].tolist(), strict=True)):
        seq[a:b] = i
    allowed = (seq[:, None] == seq[None, :]) & torch.ones(n, n, dtype=torch.bool).tril()
    blocked = blocked_attention(segment_ids)[:, 0]
    s = segment_ids.shape[1]
    for row in range(2):
        assert torch.equal(~allowed[row * s:(row + 1) * s, row * s:(row + 1) * s], blocked[row])
    assert not allowed[s:, :s].any()


def _te_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def _run(tmp_path, **case) -> dict:
    return run_one_rank(SCRIPT, {**case, "ckpt": str(tmp_path / "start")}, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not _te_available(), reason="needs a CUDA GPU and Transformer Engine")
@pytest.mark.parametrize("style", ["gpt", "llama"])
def test_packed_sft_on_te_computes_what_the_block_mask_computes(style, tmp_path):
    te = _run(tmp_path, attention="te", style=style, first=True)
    ours = _run(tmp_path, attention="sdpa", style=style, first=False)
    assert te["segments"] >= 2  # several conversations per sequence: packing is what is tested
    for a, b in zip(te["per_token"], ours["per_token"], strict=True):
        a, b = torch.tensor(a), torch.tensor(b)
        # bf16 attention kernels differ in their rounding; a token that saw another conversation would be off
        # by far more than this (its context would change)
        assert torch.allclose(a, b, atol=0.05, rtol=0.02), (a - b).abs().max()
    for x, y in zip(te["losses"], ours["losses"], strict=True):
        assert abs(x - y) <= 0.02 * abs(y), (te["losses"], ours["losses"])
    assert te["losses"][-1] < te["losses"][0]
