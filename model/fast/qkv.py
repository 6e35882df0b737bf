"""The QKV projection with Megatron's split of its output, whose backward joins the gradients in one pass.

Megatron's attention views the QKV projection's output [s, b, ng, (np/ng + 2) * hn] (per query group: its
query heads, one key head, one value head) and splits it into query, key and value. Autograd's backward of
that split concatenates their gradients into a new tensor, and the projection's bias gradient is then a
second pass over the result: on one H100, for GPT-1.3B, 12.6 ms and 7.1 ms of every step.
:func:`split_grad` does both in one pass: each program copies one head's gradient for a block of tokens into
its place in the joined gradient and writes that block's column sums, which a small reduction then adds up.

:class:`QKVLinear` is the projection itself (``x @ w^T + b`` in one GEMM) returning the three views, with
that backward; :class:`llmops_model.fast.layers.ColumnParallelLinear` runs it when the attention asks for the
split (``split_qkv``) and nothing else (tensor parallelism, frozen weights, Megatron-FSDP) is in the way.
"""

from __future__ import annotations

import functools

import torch
from megatron.core.tensor_parallel.layers import custom_bwd, custom_fwd

from llmops_model.fast import linear

_BLOCK_TOKENS = 128


@functools.cache
def _kernel():
    """The Triton kernel, or None where Triton cannot run."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def gather_heads(src, out, partial, tokens, batch, src_s, src_b, src_g, heads_per_group, out_group_heads,
                     out_head_offset, out_row, head_dim, HEAD_BLOCK: tl.constexpr, TOKEN_BLOCK: tl.constexpr):
        # program (token block, source head): src [s, b, groups, heads_per_group * head_dim] (last stride 1)
        # -> out [tokens, out_row], head h of group g at out column block g * out_group_heads + offset + h
        block, head = tl.program_id(0), tl.program_id(1)
        t = block * TOKEN_BLOCK + tl.arange(0, TOKEN_BLOCK)
        d = tl.arange(0, HEAD_BLOCK)
        rows, cols = t < tokens, d < head_dim
        mask = rows[:, None] & cols[None, :]
        t64 = t.to(tl.int64)
        group, within = head // heads_per_group, head % heads_per_group
        src_offset = (t64 // batch) * src_s + (t64 % batch) * src_b + group * src_g + within * head_dim
        x = tl.load(src + src_offset[:, None] + d[None, :], mask=mask, other=0.0)
        col = (group * out_group_heads + out_head_offset + within) * head_dim + d
        tl.store(out + t64[:, None] * out_row + col[None, :], x, mask=mask)
        tl.store(partial + block * out_row + col, tl.sum(x.to(tl.float32), axis=0), mask=cols)

    return triton, gather_heads


def _reference(dq, dk, dv):
    joined = torch.cat([dq, dk, dv], dim=3)
    return joined, joined.sum((0, 1)).reshape(-1)


@torch.library.custom_op("llmops::qkv_split_grad", mutates_args=())
def split_grad(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of Megatron's QKV split and its column sums (the projection's bias gradient).

    dq [s, b, ng, (np/ng) * hn], dk and dv [s, b, ng, hn], any strides -> the joined gradient
    [s, b, ng, (np/ng + 2) * hn] (``torch.cat`` on the last dimension) and its sum over s and b, flattened.
    """
    found = _kernel() if dq.is_cuda else None
    if found is None:
        return _reference(dq, dk, dv)
    triton, gather_heads = found
    s, b, groups, q_width = dq.shape
    head_dim = dk.shape[-1]
    per_group = q_width // head_dim
    out_row = groups * (per_group + 2) * head_dim
    tokens = s * b
    out = torch.empty(s, b, groups, (per_group + 2) * head_dim, dtype=dq.dtype, device=dq.device)
    blocks = triton.cdiv(tokens, _BLOCK_TOKENS)
    partial = torch.empty(blocks, out_row, dtype=torch.float32, device=dq.device)
    for src, heads, offset in ((dq, per_group, 0), (dk, 1, per_group), (dv, 1, per_group + 1)):
        if src.stride(-1) != 1:
            src = src.contiguous()
        gather_heads[(blocks, groups * heads)](
            src, out, partial, tokens, b, src.stride(0), src.stride(1), src.stride(2), heads, per_group + 2,
            offset, out_row, head_dim, HEAD_BLOCK=triton.next_power_of_2(head_dim), TOKEN_BLOCK=_BLOCK_TOKENS,
            num_warps=4)
    return out, partial.sum(0).to(dq.dtype)


@split_grad.register_fake
def _(dq, dk, dv):
    s, b, groups, q_width = dq.shape
    width = q_width + 2 * dk.shape[-1]
    return dq.new_empty(s, b, groups, width), dq.new_empty(groups * width)


def split(mixed: torch.Tensor, groups: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's split of the QKV projection's output [s, b, hp] into query [s, b, ng, np/ng * hn], key and
    value [s, b, ng, hn] (views)."""
    mixed = mixed.view(*mixed.shape[:-1], groups, -1)
    per_group = mixed.shape[-1] // head_dim - 2
    return torch.split(mixed, [per_group * head_dim, head_dim, head_dim], dim=3)


class QKVLinear(torch.autograd.Function):
    """``x @ weight^T + bias`` viewed [s, b, ng, (np/ng + 2) * hn] and split into query, key and value."""

    @staticmethod
    @custom_fwd
    def forward(ctx, x, weight, bias, into_main_grad: bool, groups: int, head_dim: int):
        mixed = linear.linear_forward(x, weight, bias).view(*x.shape[:-1], weight.shape[0])
        ctx.save_for_backward(x, weight)
        # the bias gradient comes from the split's backward, not from linear.linear_grads
        ctx.use_bias, ctx.into_main_grad = False, into_main_grad
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return split(mixed, groups, head_dim)

    @staticmethod
    @custom_bwd
    def backward(ctx, dq, dk, dv):
        joined, bias_grad = torch.ops.llmops.qkv_split_grad(dq, dk, dv)
        grad_x, grad_weight, _ = linear.linear_grads(ctx, joined.flatten(2))
        bias_grad = bias_grad.to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
        return grad_x, grad_weight, bias_grad, None, None, None


__all__ = ["QKVLinear", "split", "split_grad"]
