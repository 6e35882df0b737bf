"""Megatron-Core's parallel linears, MLP, attention, embedding and layer, adjusted for speed; same parameters,
same checkpoints. Each one swaps into Megatron's local layer spec (:func:`use_in`).

* :class:`ColumnParallelLinear` and :class:`RowParallelLinear` run their linears through
  :mod:`llmops_model.fast.linear`. ``RowParallelLinear`` calls the linear function with ``tp_group=None``;
  Megatron then looks the group up and issues a deprecation warning, a Python call TorchDynamo cannot trace,
  so :class:`RowParallelLinear` passes its own group.
* :class:`GeluMLP` runs the MLP's bias + GELU, and its backward, inside the GEMMs' cuBLASLt epilogues
  (:mod:`llmops_model.fast.cublaslt`), as Transformer Engine's fused MLP does.
* :class:`SelfAttention`'s QKV projection returns the query, key and value views itself
  (:mod:`llmops_model.fast.qkv`), so that its backward joins their gradients in one pass.
* :class:`VocabParallelEmbedding` adds the word embedding's gradient into ``main_grad`` with one
  ``index_add_`` instead of torch's sort-based dense gradient plus DDP's add of the whole table
  (:class:`_Embedding`).
* :class:`TransformerLayer` adds each residual connection inside the GEMM before it. Megatron's layer adds
  the output projection's bias and the residual in a separate bias-dropout-add, and a compiled layer then
  recomputes that sum in three kernels (the next layer norm, its backward and the next residual add).
  Without dropout the sum is ``residual + x @ w^T + b``, which cuBLASLt computes in the GEMM, reading the
  residual as ``C`` (:func:`llmops_model.fast.cublaslt.linear_residual`). The layer hands each residual to
  its row-parallel linear (``_set_residual``, the name Megatron's fused-inference layers use) and its
  bias-dropout-add passes the result through.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.tensor_parallel import mappings
from megatron.core.tensor_parallel.layers import custom_bwd, custom_fwd
from megatron.core.transformer.attention import SelfAttention as _MegatronSelfAttention
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.transformer_layer import TransformerLayer as _MegatronTransformerLayer

from llmops_model.fast import cublaslt, linear, qkv


class _Embedding(torch.autograd.Function):
    """``weight[ids]``, whose backward adds each looked-up row's gradient straight into ``weight.main_grad``.

    torch's embedding backward sorts the ids, sums each id's rows into a dense low-precision gradient of the
    whole table, and DDP's hook then adds that table into the fp32 buffer: for GPT-1.3B's 50k x 2048 table,
    about 5 ms of every step on one H100. Here one ``index_add_`` adds the rows' gradients into the buffer.
    The sums' order follows the GPU's atomics, so, as with torch's own non-deterministic embedding backward,
    runs may differ in the last bits.
    """

    @staticmethod
    def forward(ctx, ids, weight):
        ctx.save_for_backward(ids, weight)
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad_output):
        ids, weight = ctx.saved_tensors
        main_grad = weight.main_grad
        rows = grad_output.reshape(-1, grad_output.shape[-1]).to(main_grad.dtype)
        main_grad.index_add_(0, ids.reshape(-1), rows)
        return None, grad_output.new_empty(weight.shape)  # DDP's placeholder (module doc)


class VocabParallelEmbedding(tensor_parallel.VocabParallelEmbedding):
    """Megatron's word embedding; with gradient-accumulation fusion at tensor-parallel size 1, its gradient
    goes into ``main_grad`` through :class:`_Embedding`. Elsewhere (vocabulary split over ranks,
    deterministic mode, sequence-parallel scatter, no buffer) it is Megatron's own."""

    fuse_grad = False  # set by :func:`use_fused_embedding_grad`

    def forward(self, input_):
        simple = self.tp_group.size() == 1 and not self.deterministic_mode and not self.reduce_scatter_embeddings
        if not (self.fuse_grad and simple and torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(input_)
        if not linear.claim_main_grad(self.weight, True):
            return super().forward(input_)
        return _Embedding.apply(input_, self.weight)


def use_fused_embedding_grad(embedding: tensor_parallel.VocabParallelEmbedding) -> None:
    """Make a built word embedding a :class:`VocabParallelEmbedding` that adds its gradient into ``main_grad``
    (in place: same parameter, same checkpoints)."""
    embedding.__class__ = VocabParallelEmbedding
    embedding.fuse_grad = True



class ColumnParallelLinear(tensor_parallel.ColumnParallelLinear):
    """Megatron's ``ColumnParallelLinear`` through :mod:`llmops_model.fast.linear` (module doc).

    ``split_qkv=(groups, head_dim)`` (from :class:`SelfAttention`) returns Megatron's query, key and value
    views of the output instead of ``(output, bias)``: at tensor-parallel size 1 through
    :class:`llmops_model.fast.qkv.QKVLinear`, whose backward joins their gradients and sums the bias gradient in one
    pass; otherwise Megatron's forward, then its split.
    """

    def forward(self, input_, weight=None, runtime_gather_output=None, split_qkv: tuple[int, int] | None = None):
        if split_qkv is None:
            return super().forward(input_, weight, runtime_gather_output)
        groups, head_dim = split_qkv
        w = self.weight
        simple = (weight is None and self.tp_group.size() == 1 and not self.skip_bias_add
                  and not self.sequence_parallel and not self.explicit_expert_comm
                  and not self.config.defer_embedding_wgrad_compute and self.config._cpu_offloading_context is None
                  and w.requires_grad and not linear.megatron_managed(w))
        into_main_grad = linear.claim_main_grad(w, bool(self.gradient_accumulation_fusion)) if simple else None
        if into_main_grad is not None:
            return qkv.QKVLinear.apply(input_, w, self.bias, into_main_grad, groups, head_dim)
        mixed, bias = super().forward(input_, weight, runtime_gather_output)
        return qkv.split(mixed if bias is None else mixed + bias, groups, head_dim)

    def _forward_impl(self, input, weight, bias=None, **kwargs):
        return linear.dispatch(input, weight, bias, kwargs, super()._forward_impl)


class RowParallelLinear(tensor_parallel.RowParallelLinear):
    """Megatron's ``RowParallelLinear`` through :mod:`llmops_model.fast.linear`, handing them its own group.

    Given a residual (:meth:`_set_residual`), its next forward returns ``(residual + output + bias, None)``.
    """

    _residual = None

    def _set_residual(self, residual: torch.Tensor) -> None:
        """Add ``residual`` (and the bias) to the next forward's output, inside the GEMM where that can run."""
        self._residual = residual

    def _take_residual(self) -> torch.Tensor | None:
        residual, self._residual = self._residual, None
        return residual

    def forward(self, input_):
        residual = self._take_residual()
        if residual is None:
            return super().forward(input_)
        return self._forward_with_residual(input_, residual), None

    def _forward_with_residual(self, input_, residual):
        weight = self.weight
        simple = (self.tp_group.size() == 1 and self.input_is_parallel and not self.sequence_parallel
                  and not self.explicit_expert_comm and self.config._cpu_offloading_context is None
                  and not linear.megatron_managed(weight))
        fusion = bool(self.gradient_accumulation_fusion)
        into_main_grad = linear.claim_main_grad(weight, fusion) if weight.requires_grad else False
        if simple and into_main_grad is not None:
            return linear.LinearResidual.apply(input_, weight, self.bias, residual, into_main_grad)
        output, bias = super().forward(input_)  # anything else: Megatron's linear, then the sum
        return linear.plus_residual(output, residual, bias)

    def _forward_impl(self, input, weight, bias=None, **kwargs):
        if kwargs.get("tp_group", 0) is None:
            kwargs["tp_group"] = self.tp_group
        return linear.dispatch(input, weight, bias, kwargs, super()._forward_impl)


class _GeluMLPFunction(torch.autograd.Function):
    """``gelu(x @ w1^T + b1) @ w2^T`` with bias + GELU and its backward in cuBLASLt epilogues; given a residual,
    ``residual + gelu(x @ w1^T + b1) @ w2^T + b2`` with the sum in the second GEMM."""

    @staticmethod
    @custom_fwd
    def forward(ctx, x, w1, b1, w2, b2, residual, into_main_grad: bool):
        flat = x.reshape(-1, x.shape[-1])
        act, pre = torch.ops.llmops.linear_gelu(flat, w1, b1)
        if residual is None:
            out = torch.matmul(act, w2.t()).view(*x.shape[:-1], w2.shape[0])
        else:
            out = torch.ops.llmops.linear_residual(act, w2, b2, residual)
        ctx.save_for_backward(flat, w1, w2, pre, act)
        ctx.into_main_grad, ctx.in_shape = into_main_grad, x.shape
        ctx.with_residual, ctx.use_b2 = residual is not None, residual is not None and b2 is not None
        return out

    @staticmethod
    @custom_bwd
    def backward(ctx, grad_out):
        flat, w1, w2, pre, act = ctx.saved_tensors
        grad_residual = grad_out if ctx.with_residual else None
        grad_out = grad_out.reshape(-1, grad_out.shape[-1])
        grad_pre = torch.ops.llmops.matmul_dgelu(grad_out, w2, pre)
        grad_w2 = linear.weight_grad(w2, ctx.into_main_grad, grad_out, act)
        grad_x = grad_pre.matmul(w1)
        grad_w1 = linear.weight_grad(w1, ctx.into_main_grad, grad_pre, flat)
        grad_b2 = grad_out.sum(0) if ctx.use_b2 else None
        return grad_x.view(ctx.in_shape), grad_w1, grad_pre.sum(0), grad_w2, grad_b2, grad_residual, None


class GeluMLP(MLP):
    """Megatron's MLP (same parameters, same checkpoints) whose GELU runs in the GEMMs' cuBLASLt epilogues.

    Taken on CUDA for the GPT's bias + GELU MLP with Megatron's fused bias-GELU switched on (which is the
    same tanh-approximated GELU); any other case runs Megatron's own forward. Tensor and sequence
    parallelism use Megatron's communication mappings around the fused function: the first linear's input
    is copied (gathered, with sequence parallelism) onto the tensor-parallel ranks, the second linear's
    output all-reduced (reduce-scattered). At tensor-parallel size 1 there is nothing to communicate and
    a compiled layer keeps the MLP inside its graph.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c, fc1, fc2 = self.config, self.linear_fc1, self.linear_fc2
        # What the module's configuration decides once; the tensors' properties are checked per call.
        self._epilogue_mlp = (c.bias_activation_fusion and self.activation_func is F.gelu
                              and not c.gated_linear_unit and not c.use_te_activation_func
                              and fc1.bias is not None and fc1.skip_bias_add and fc2.skip_bias_add
                              and fc1.weight.shape[0] % 8 == 0 and not getattr(fc1, "explicit_expert_comm", False)
                              and cublaslt.available())
        self._tp_size = fc1.tp_group.size()

    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        fc1, fc2 = self.linear_fc1, self.linear_fc2
        if not (self._epilogue_mlp and hidden_states.is_cuda and per_token_scale is None
                and hidden_states.dtype in (torch.bfloat16, torch.float16)
                and fc1.weight.requires_grad and fc2.weight.requires_grad):
            return super().forward(hidden_states, per_token_scale=per_token_scale, **kwargs)
        fusion = bool(self.config.gradient_accumulation_fusion)
        into_main_grad = [linear.claim_main_grad(w, fusion) for w in (fc1.weight, fc2.weight)]
        if into_main_grad[0] is None or into_main_grad[0] != into_main_grad[1]:  # buffers outside DDP
            return super().forward(hidden_states, per_token_scale=per_token_scale, **kwargs)
        residual = fc2._take_residual() if isinstance(fc2, RowParallelLinear) else None
        if self._tp_size == 1:
            out = self._mlp(hidden_states, into_main_grad[0], residual)
            return (out, fc2.bias) if residual is None else (out, None)
        out = self._parallel_mlp(hidden_states, into_main_grad[0])
        return (out, fc2.bias) if residual is None else (linear.plus_residual(out, residual, fc2.bias), None)

    def _mlp(self, x, into_main_grad: bool, residual: torch.Tensor | None = None):
        fc1, fc2 = self.linear_fc1, self.linear_fc2
        return _GeluMLPFunction.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, residual, into_main_grad)

    @torch.compiler.disable  # the collectives' autograd functions; the layer around them still compiles
    def _parallel_mlp(self, hidden_states, into_main_grad: bool):
        group = self.linear_fc1.tp_group
        if self.config.sequence_parallel:
            x = mappings.gather_from_sequence_parallel_region(hidden_states, group=group)
        else:
            x = mappings.copy_to_tensor_model_parallel_region(hidden_states, group=group)
        out = self._mlp(x, into_main_grad)
        if self.config.sequence_parallel:
            return mappings.reduce_scatter_to_sequence_parallel_region(out, group=group)
        return mappings.reduce_from_tensor_model_parallel_region(out, group=group)


class SelfAttention(_MegatronSelfAttention):
    """Megatron's self-attention whose QKV projection returns the query, key and value views itself
    (:class:`ColumnParallelLinear`, ``split_qkv``), so that its backward joins their gradients in one pass.

    Taken without an output gate, for self-attention (no key-value states) whose query groups are not split
    over tensor-parallel ranks; anything else is Megatron's method.
    """

    def get_query_key_value_tensors(self, hidden_states, key_value_states=None, output_gate=False,
                                    split_qkv=True):
        if (output_gate or not split_qkv or key_value_states is not None
                or not isinstance(self.linear_qkv, ColumnParallelLinear)
                or self.config.num_query_groups < self.world_size):
            return super().get_query_key_value_tensors(hidden_states, key_value_states, output_gate, split_qkv)
        query, key, value = self.linear_qkv(
            hidden_states, split_qkv=(self.num_query_groups_per_partition, self.hidden_size_per_attention_head))
        # [sq, b, ng, np/ng * hn] -> [sq, b, np, hn], as Megatron's method does
        query = query.reshape(query.size(0), query.size(1), -1, self.hidden_size_per_attention_head)
        return query, key, value


def _adds_in_gemm(training: bool, dropout: float) -> bool:
    """Whether a layer's bias-dropout-add is a plain sum (no dropout), the case its GEMM can take over."""
    return not training or dropout == 0.0


def _residual_added(bda):
    """A layer's bias-dropout-add for when its linear has already added bias and residual (module doc)."""

    def select(training: bool, fused: bool):
        megatron_bda = bda(training, fused)

        def bias_dropout_add(x_with_bias, residual, prob):
            if _adds_in_gemm(training, prob):
                return x_with_bias[0]
            return megatron_bda(x_with_bias, residual, prob)

        return bias_dropout_add

    return select


class TransformerLayer(_MegatronTransformerLayer):
    """Megatron's transformer layer whose residual additions run inside the output projections' GEMMs.

    Applies to a dense layer whose output projections are this module's :class:`RowParallelLinear` at
    tensor-parallel size 1, without recomputation, activation offloading, Megatron's own CUDA graphs, fp8 or
    fused TP inference, and only while the bias-dropout-add has no dropout (training with
    ``hidden_dropout = 0``, or evaluation). Everything else is Megatron's layer as it is.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.config
        proj = getattr(self.self_attention, "linear_proj", None)
        fc2 = getattr(self.mlp, "linear_fc2", None)
        self._residual_in_gemm = (
            isinstance(proj, RowParallelLinear) and isinstance(fc2, RowParallelLinear)
            and proj.tp_group.size() == 1 and fc2.tp_group.size() == 1
            and isinstance(self.cross_attention, IdentityOp) and not self.is_moe_layer
            and c.recompute_granularity is None and not c.fp8 and not getattr(c, "fp4", None)
            and not (self.recompute_input_layernorm or self.recompute_pre_mlp_layernorm or self.recompute_mlp)
            and not (self.offload_attn_norm or self.offload_mlp_norm)
            and c.cuda_graph_impl == "none" and not getattr(c, "inference_fuse_tp_communication", False))
        if self._residual_in_gemm:
            self.self_attn_bda = _residual_added(self.self_attn_bda)
            self.mlp_bda = _residual_added(self.mlp_bda)

    def _hands_over_residual(self) -> bool:
        return self._residual_in_gemm and _adds_in_gemm(self.training, self.hidden_dropout)

    def _forward_attention(self, hidden_states, *args, **kwargs):
        if self._hands_over_residual():
            self.self_attention.linear_proj._set_residual(hidden_states)
        return super()._forward_attention(hidden_states, *args, **kwargs)

    def _forward_mlp(self, hidden_states, *args, **kwargs):
        if self._hands_over_residual():
            self.mlp.linear_fc2._set_residual(hidden_states)
        return super()._forward_mlp(hidden_states, *args, **kwargs)


def use_in(layer_spec, *, fused_mlp: bool) -> None:
    """Swap these modules into a local (non-TE) GPT layer spec, in place; `fused_mlp`: the epilogue MLP too."""
    layer_spec.module = TransformerLayer
    layer_spec.submodules.self_attention.module = SelfAttention
    attention = layer_spec.submodules.self_attention.submodules
    attention.linear_qkv, attention.linear_proj = ColumnParallelLinear, RowParallelLinear
    mlp = layer_spec.submodules.mlp
    mlp.submodules.linear_fc1, mlp.submodules.linear_fc2 = ColumnParallelLinear, RowParallelLinear
    if fused_mlp:
        mlp.module = GeluMLP


__all__ = ["ColumnParallelLinear", "GeluMLP", "RowParallelLinear", "SelfAttention", "TransformerLayer", "use_in"]
