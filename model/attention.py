"""Core attention through ``torch.nn.functional.scaled_dot_product_attention``.

Megatron-Core's local ``DotProductAttention`` materialises the full
[batch, heads, seq, seq] score matrix (baddbmm, softmax, bmm). Without
Transformer Engine that is the slowest part of the layer and the reason a
350M model at sequence 2048 runs out of memory at micro-batch 8. SDPA picks
a fused kernel (FlashAttention-2 or memory-efficient attention on GPUs) and
never materialises the scores for causal attention.

This is a drop-in ``core_attention`` for Megatron's layer spec: same
constructor (it subclasses ``DotProductAttention`` for the scale and the
per-partition head counts), same tensor layout in and out, so tensor,
pipeline and sequence parallelism are unchanged. Dropout runs inside the
model-parallel RNG stream exactly where Megatron runs it.
"""

from __future__ import annotations

import contextlib

import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class SDPAttention(DotProductAttention):
    """``DotProductAttention`` whose forward is one fused SDPA call."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPAttention takes packed sequences as a block-diagonal attention_mask")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        # [s, b, heads, d] -> [b, heads, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        groups = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        kwargs = {}
        if groups > 1:
            kwargs["enable_gqa"] = True
        causal = mask_type == AttnMaskType.causal and attention_mask is None
        # Megatron masks are True where attention is NOT allowed; SDPA's boolean masks are the opposite.
        mask = None if attention_mask is None else ~attention_mask
        p = self.attention_dropout.p if self.training else 0.0
        forked = p > 0 and not self.config.sequence_parallel
        with tensor_parallel.get_cuda_rng_tracker().fork() if forked else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal,
                                                 scale=self.softmax_scale, **kwargs)
        # [b, heads, s, d] -> [s, b, heads * d]
        s, b = out.shape[2], out.shape[0]
        return out.permute(2, 0, 1, 3).reshape(s, b, self.hidden_size_per_partition)


def available_backends() -> list[str]:
    """Attention implementations that can run here, fastest first."""
    out = []
    try:
        import transformer_engine  # noqa: F401

        out.append("te")
    except ImportError:
        pass
    return out + ["sdpa", "megatron"]


__all__ = ["SDPAttention", "available_backends"]
