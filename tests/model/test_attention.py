"""The SDPA core attention against Megatron's unfused DotProductAttention (fp32, CPU)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, torch, torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"], RANK="0", WORLD_SIZE="1")
    from llmops_model.compat import cpu as cpu_compat
    cpu_compat.activate()
    dist.init_process_group("gloo")
    from megatron.core import parallel_state
    parallel_state.initialize_model_parallel(1, 1)
    cpu_compat.seed_model_parallel_rng(0)
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from llmops_model.attention import SDPAttention

    heads, groups, d, s, b = 8, int(os.environ["GROUPS"]), 16, 32, 3
    cfg = TransformerConfig(num_layers=2, hidden_size=heads * d, num_attention_heads=heads,
                            num_query_groups=groups, attention_dropout=0.0, hidden_dropout=0.0,
                            masked_softmax_fusion=False, use_cpu_initialization=True)
    ref = DotProductAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    new = SDPAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(s, b, heads, d, generator=g, requires_grad=True)
    k = torch.randn(s, b, groups, d, generator=g, requires_grad=True)
    v = torch.randn(s, b, groups, d, generator=g, requires_grad=True)
    # Megatron's causal path with no mask, and an explicit padding-style mask (True = blocked).
    blocked = torch.triu(torch.ones(s, s, dtype=torch.bool), 1).expand(b, 1, s, s).clone()
    blocked[0, :, :, -5:] = True
    for mask in (None, blocked):
        grads = []
        outs = []
        for module in (ref, new):
            for t in (q, k, v):
                t.grad = None
            out = module(q, k, v, mask, attn_mask_type=AttnMaskType.causal if mask is None else AttnMaskType.arbitrary)
            out.square().sum().backward()
            outs.append(out.detach())
            grads.append([t.grad.clone() for t in (q, k, v)])
        assert outs[0].shape == outs[1].shape == (s, b, heads * d), outs[0].shape
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
        for a, c in zip(*grads):
            torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-5)
    print("ok")
""")


@pytest.mark.parametrize("groups", [8, 2], ids=["mha", "gqa"])
def test_sdpa_matches_megatron_dot_product_attention(groups):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180,
                         env={"PORT": str(port), "GROUPS": str(groups), "CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.strip().endswith("ok")
