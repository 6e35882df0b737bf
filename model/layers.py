"""Megatron-Core's local linears and MLP, adjusted for speed; same parameters, same checkpoints.

* A linear that adds its bias itself (the QKV projection) computes
  ``matmul`` then ``+ bias``, a second pass over the layer's widest attention
  activation. :class:`ColumnParallelLinear` computes ``addmm``, whose bias is
  added in the GEMM's epilogue by cuBLAS. The backward pass, the
  gradient-accumulation fusion into ``main_grad`` and the tensor-parallel
  communication are Megatron's, unchanged (with sequence parallelism, or
  deferred weight gradients, Megatron's own function runs).
* :class:`GeluMLP` runs the MLP's bias + GELU, and its backward, inside the
  GEMMs' cuBLASLt epilogues (:mod:`llmops_model.cublaslt`), as Transformer
  Engine's fused MLP does.
* ``RowParallelLinear`` (the attention projection, the MLP's second linear)
  calls the shared linear function with ``tp_group=None``; Megatron then
  looks the group up and issues a deprecation warning, a Python call
  TorchDynamo cannot trace, which splits a compiled layer in three.
  :class:`RowParallelLinear` passes its own group, which that call does not
  use (no gradient all-reduce, no sequence-parallel gather). Where weight
  gradients are accumulated into ``main_grad`` (on GPUs), the backward of
  Megatron's linear function mutates its weight and still splits the graph at
  each linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.tensor_parallel import layers as megatron_layers
from megatron.core.tensor_parallel import mappings
from megatron.core.tensor_parallel.layers import LinearWithGradAccumulationAndAsyncCommunication, custom_bwd, custom_fwd
from megatron.core.transformer.mlp import MLP

from llmops_model import cublaslt


class _LinearBiasInEpilogue(LinearWithGradAccumulationAndAsyncCommunication):
    """Megatron's linear function with the bias added inside the GEMM (``addmm``); same backward.

    Only for the layouts without a sequence-parallel gather in the forward pass.
    """

    @staticmethod
    @custom_fwd
    def forward(ctx, input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel,
                grad_output_buffer, wgrad_deferral_limit, tp_group):
        # The arguments are the parent's, so that its backward applies as it is.
        assert not sequence_parallel and grad_output_buffer is None
        ctx.save_for_backward(input, weight)
        ctx.main_grad = weight.main_grad if gradient_accumulation_fusion and hasattr(weight, "main_grad") else None
        ctx.use_bias = True
        ctx.gradient_accumulation_fusion = gradient_accumulation_fusion
        ctx.allreduce_dgrad = allreduce_dgrad
        ctx.sequence_parallel = False
        ctx.wgrad_deferral_limit = 0
        ctx.grad_output_buffer = None
        ctx.tp_group = tp_group
        out = torch.addmm(bias, input.reshape(-1, input.shape[-1]), weight.t())
        return out.view(*input.shape[:-1], weight.shape[0])


class ColumnParallelLinear(tensor_parallel.ColumnParallelLinear):
    """Megatron's ``ColumnParallelLinear``; a bias it adds itself is added in the GEMM's epilogue."""

    def _forward_impl(self, input, weight, bias=None, **kwargs):
        if bias is None or _megatron_only(weight, kwargs):
            return super()._forward_impl(input, weight, bias=bias, **kwargs)
        return _LinearBiasInEpilogue.apply(input, weight, bias, kwargs["gradient_accumulation_fusion"],
                                           kwargs["allreduce_dgrad"], False, None, 0, kwargs["tp_group"])


def _megatron_only(weight, kwargs) -> bool:
    """Cases the epilogue function leaves to Megatron's: frozen weights, sequence parallelism, deferred wgrads."""
    return (not weight.requires_grad or kwargs.get("sequence_parallel")
            or kwargs.get("grad_output_buffer") is not None)


class RowParallelLinear(tensor_parallel.RowParallelLinear):
    """Megatron's ``RowParallelLinear``, handing the linear function its own process group (see module doc)."""

    def _forward_impl(self, input, weight, *args, **kwargs):
        if kwargs.get("tp_group", 0) is None:
            kwargs["tp_group"] = self.tp_group
        return super()._forward_impl(input, weight, *args, **kwargs)


def _accumulate_wgrad(weight, main_grad, grad_output: torch.Tensor, inputs: torch.Tensor, fused: bool):
    """The weight gradient as Megatron's linear function produces it: added into ``main_grad`` in the GEMM
    (returning the placeholder DDP's hooks expect) when gradient-accumulation fusion is on, else returned."""
    if not fused or main_grad is None:
        return grad_output.t().matmul(inputs)
    kernel = megatron_layers.fused_weight_gradient_mlp_cuda  # read per call: kernels.install() may have set it
    if main_grad.dtype == torch.float32:
        kernel.wgrad_gemm_accum_fp32(inputs, grad_output, main_grad)
    else:
        kernel.wgrad_gemm_accum_fp16(inputs, grad_output, main_grad)
    if not hasattr(weight, "grad_added_to_main_grad"):
        return None
    weight.grad_added_to_main_grad = True
    return torch.empty(main_grad.shape, dtype=inputs.dtype, device=inputs.device)


class _GeluMLPFunction(torch.autograd.Function):
    """``gelu(x @ w1^T + b1) @ w2^T`` with bias + GELU and its backward in cuBLASLt epilogues."""

    @staticmethod
    @custom_fwd
    def forward(ctx, x, w1, b1, w2, wgrad_fusion: bool):
        flat = x.reshape(-1, x.shape[-1])
        act, pre = cublaslt.linear_gelu(flat, w1, b1)
        out = torch.matmul(act, w2.t())
        ctx.save_for_backward(flat, w1, w2, pre, act)
        ctx.main_grads = tuple(getattr(w, "main_grad", None) if wgrad_fusion else None for w in (w1, w2))
        ctx.wgrad_fusion, ctx.in_shape = wgrad_fusion, x.shape
        return out.view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    @custom_bwd
    def backward(ctx, grad_out):
        flat, w1, w2, pre, act = ctx.saved_tensors
        main_grad1, main_grad2 = ctx.main_grads
        grad_out = grad_out.reshape(-1, grad_out.shape[-1]).contiguous()
        grad_pre, grad_b1 = cublaslt.matmul_dgelu(grad_out, w2, pre)
        grad_w2 = _accumulate_wgrad(w2, main_grad2, grad_out, act, ctx.wgrad_fusion)
        grad_x = grad_pre.matmul(w1)
        grad_w1 = _accumulate_wgrad(w1, main_grad1, grad_pre, flat, ctx.wgrad_fusion)
        return grad_x.view(ctx.in_shape), grad_w1, grad_b1, grad_w2, None


class GeluMLP(MLP):
    """Megatron's MLP (same parameters, same checkpoints) whose GELU runs in the GEMMs' cuBLASLt epilogues.

    Taken on CUDA for the GPT's bias + GELU MLP with Megatron's fused bias-GELU switched on (which is the
    same tanh-approximated GELU); any other case runs Megatron's own forward. Tensor and sequence
    parallelism use Megatron's communication mappings around the fused function: the first linear's input
    is copied (gathered, with sequence parallelism) onto the tensor-parallel ranks, the second linear's
    output all-reduced (reduce-scattered).
    """

    def _fusable(self, hidden_states: torch.Tensor, per_token_scale) -> bool:
        c, fc1, fc2 = self.config, self.linear_fc1, self.linear_fc2
        return (hidden_states.is_cuda and per_token_scale is None and c.bias_activation_fusion
                and self.activation_func is F.gelu and not c.gated_linear_unit and not c.use_te_activation_func
                and fc1.bias is not None and fc1.skip_bias_add and fc2.skip_bias_add
                and fc1.weight.requires_grad and fc2.weight.requires_grad
                and hidden_states.dtype in (torch.bfloat16, torch.float16) and fc1.weight.shape[0] % 8 == 0
                and not getattr(fc1, "explicit_expert_comm", False) and cublaslt.available())

    @torch.compiler.disable  # a ctypes call inside; the layer around it still compiles
    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        if not self._fusable(hidden_states, per_token_scale):
            return super().forward(hidden_states, per_token_scale=per_token_scale, **kwargs)
        group = self.linear_fc1.tp_group
        if self.config.sequence_parallel:
            x = mappings.gather_from_sequence_parallel_region(hidden_states, group=group)
        else:
            x = mappings.copy_to_tensor_model_parallel_region(hidden_states, group=group)
        out = _GeluMLPFunction.apply(x.contiguous(), self.linear_fc1.weight, self.linear_fc1.bias,
                                     self.linear_fc2.weight, bool(self.config.gradient_accumulation_fusion))
        if self.config.sequence_parallel:
            out = mappings.reduce_scatter_to_sequence_parallel_region(out, group=group)
        else:
            out = mappings.reduce_from_tensor_model_parallel_region(out, group=group)
        return out, self.linear_fc2.bias


def use_in(layer_spec, *, fused_mlp: bool) -> None:
    """Swap these modules into a local (non-TE) GPT layer spec, in place; `fused_mlp`: the epilogue MLP too."""
    attention = layer_spec.submodules.self_attention.submodules
    attention.linear_qkv, attention.linear_proj = ColumnParallelLinear, RowParallelLinear
    mlp = layer_spec.submodules.mlp
    mlp.submodules.linear_fc1, mlp.submodules.linear_fc2 = ColumnParallelLinear, RowParallelLinear
    if fused_mlp:
        mlp.module = GeluMLP


__all__ = ["ColumnParallelLinear", "GeluMLP", "RowParallelLinear", "use_in"]
