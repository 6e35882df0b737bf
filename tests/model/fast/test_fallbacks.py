"""The foreach stand-ins for Apex's multi-tensor kernels against Megatron's own fallbacks (CPU tensors)."""

from __future__ import annotations

import pytest
import torch

from llmops_model.fast import fallbacks


def _tensors(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for shape in ((7, 3), (5,), (2, 4, 6), (1,))]


def test_l2_norm_is_the_norm_of_all_tensors_together():
    ts = _tensors(0)
    norm, per_tensor = fallbacks.foreach_l2_norm(2048, None, [ts], False)
    expected = torch.linalg.vector_norm(torch.cat([t.flatten() for t in ts]))
    assert per_tensor is None and norm.shape == (1,)
    torch.testing.assert_close(norm[0], expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("scale", [1.0, 0.25])
@pytest.mark.parametrize("in_place", [True, False])
def test_scale_matches_megatron_local_multi_tensor_scale(scale, in_place):
    from megatron.core.utils import local_multi_tensor_scale

    src = _tensors(1)
    mine = src if in_place else [torch.zeros_like(t) for t in src]
    theirs_src = [t.clone() for t in src]
    theirs = theirs_src if in_place else [torch.zeros_like(t) for t in src]
    fallbacks.foreach_scale(2048, None, [src, mine], scale)
    local_multi_tensor_scale(2048, None, [theirs_src, theirs], scale)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fused_adamw_leaves_cpu_optimizers_alone():
    params = [torch.nn.Parameter(t) for t in _tensors(2)]
    opt = torch.optim.AdamW(params, lr=1e-3)
    assert fallbacks.use_fused_adamw(opt) is False
    assert opt.param_groups[0]["fused"] in (None, False)
    cpu = torch.device("cpu")
    assert fallbacks.install(cpu) == [] and not fallbacks.wgrad_accumulation_available(cpu)
