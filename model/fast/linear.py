"""Megatron-Core's linear functions, adjusted for speed: the bias in the GEMM, weight gradients in one graph.

* A linear with no tensor-parallel communication of its own (every linear at
  tensor-parallel size 1, the row-parallel ones at any size) runs
  :class:`Linear`. Megatron's linear function computes ``matmul`` then
  ``+ bias``, a second pass over the output; ``Linear`` adds the bias in the
  GEMM's epilogue (``addmm``). Its backward accumulates the weight gradient
  into ``main_grad`` (Megatron's gradient-accumulation fusion) in a custom
  operator, :func:`wgrad_into_main_grad`, where Megatron's function sets
  attributes of the weight in its backward: a side effect TorchDynamo does
  not trace. On GPUs, where that fusion is on, a compiled transformer layer
  fell apart into 14 graphs, and the residual and bias gradients between them
  ran as separate eager kernels; with ``Linear`` the layer is one graph,
  forward and backward.
* A column-parallel linear that all-reduces its input gradient (tensor
  parallelism without sequence parallelism) keeps Megatron's backward, which
  overlaps that all-reduce with the weight-gradient GEMM; a bias it adds
  itself still goes into ``addmm`` (:class:`LinearBiasInEpilogue`).
  Sequence parallelism, deferred weight gradients, frozen weights and
  Megatron-FSDP run Megatron's own function (:func:`dispatch` decides).
* :class:`LinearResidual` adds a residual inside the GEMM
  (:func:`llmops_model.fast.cublaslt.linear_residual`).

DDP's protocol for the fused accumulation: a weight whose gradient went into
``main_grad`` hands autograd a placeholder and carries
``grad_added_to_main_grad = True``, so that DDP's hook does not add the
placeholder too. :func:`claim_main_grad` sets that flag in the forward pass,
where TorchDynamo replays attribute writes after the graph; DDP clears it
when it zeroes the buffers, once per step, before any forward pass.
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import layers as megatron_layers
from megatron.core.tensor_parallel.layers import LinearWithGradAccumulationAndAsyncCommunication, custom_bwd, custom_fwd

from llmops_model.fast import cublaslt  # noqa: F401  (registers torch.ops.llmops.linear_residual)


@torch.library.custom_op("llmops::wgrad_into_main_grad", mutates_args=())
def wgrad_into_main_grad(weight: torch.Tensor, grad_output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``weight.main_grad += grad_output^T @ inputs``; returns the placeholder gradient DDP's hook expects.

    grad_output [tokens, out], inputs [tokens, in]. The buffer is reached through the weight, as Megatron's
    linear function reaches it, and is deliberately not an argument: each ``main_grad`` is a view of DDP's
    one flat buffer, so its version counter moves with every other parameter's accumulation, and a buffer
    saved for the backward pass (as a compiled graph saves its inputs) fails autograd's check that saved
    tensors were not modified. The placeholder output is what keeps the call in a compiled graph.

    On CUDA the sum is the kernel behind Megatron's gradient-accumulation fusion (one GEMM that reads and
    writes the fp32 buffer, no low-precision gradient in between); elsewhere a matmul and an add.
    """
    main_grad = getattr(weight, "main_grad", None)
    if main_grad is None:  # a compiler handed over a copy of the weight: never drop a gradient silently
        raise RuntimeError("wgrad_into_main_grad: the weight has no main_grad buffer")
    if main_grad.is_cuda and megatron_layers._grad_accum_fusion_available:
        kernel = megatron_layers.fused_weight_gradient_mlp_cuda  # read per call: kernels.install() may set it
        if main_grad.dtype == torch.float32:
            kernel.wgrad_gemm_accum_fp32(inputs, grad_output, main_grad)
        else:
            kernel.wgrad_gemm_accum_fp16(inputs, grad_output, main_grad)
    else:
        main_grad.add_(grad_output.t().matmul(inputs).to(main_grad.dtype))
    return inputs.new_empty(weight.shape)


@wgrad_into_main_grad.register_fake
def _(weight, grad_output, inputs):
    return inputs.new_empty(weight.shape)


def weight_grad(weight, into_main_grad: bool, grad_output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The weight gradient, or, with gradient-accumulation fusion, its sum into main_grad and a placeholder."""
    if into_main_grad:
        return torch.ops.llmops.wgrad_into_main_grad(weight, grad_output, inputs)
    return grad_output.t().matmul(inputs)


def claim_main_grad(weight: torch.Tensor, fusion: bool) -> bool | None:
    """Whether this weight's gradient goes into its DDP ``main_grad`` buffer (and, if so, marks the weight for
    DDP's hook: module doc); None for a buffer outside DDP, a case left to Megatron's own functions."""
    if not fusion or not hasattr(weight, "main_grad"):
        return False
    if not hasattr(weight, "grad_added_to_main_grad"):
        return None
    weight.grad_added_to_main_grad = True
    return True


class Linear(torch.autograd.Function):
    """``input @ weight^T + bias`` with the bias in the GEMM epilogue, for linears without communication."""

    @staticmethod
    @custom_fwd
    def forward(ctx, input, weight, bias, into_main_grad: bool):
        ctx.save_for_backward(input, weight)
        ctx.use_bias, ctx.into_main_grad = bias is not None, into_main_grad
        return linear_forward(input, weight, bias).view(*input.shape[:-1], weight.shape[0])

    @staticmethod
    @custom_bwd
    def backward(ctx, grad_output):
        return *linear_grads(ctx, grad_output), None


def linear_forward(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``input @ weight^T + bias`` as [tokens, out], the bias in the GEMM's epilogue."""
    flat = input.reshape(-1, input.shape[-1])
    return torch.mm(flat, weight.t()) if bias is None else torch.addmm(bias, flat, weight.t())


def linear_grads(ctx, grad_output: torch.Tensor) -> tuple:
    """Input, weight and bias gradients of ``input @ weight^T (+ bias)``, from the saved (input, weight)."""
    input, weight = ctx.saved_tensors
    flat = grad_output.reshape(-1, grad_output.shape[-1])
    grad_input = flat.matmul(weight).view(input.shape)
    grad_weight = None
    if ctx.needs_input_grad[1]:
        grad_weight = weight_grad(weight, ctx.into_main_grad, flat, input.reshape(-1, input.shape[-1]))
    return grad_input, grad_weight, flat.sum(0) if ctx.use_bias else None


class LinearResidual(torch.autograd.Function):
    """``residual + input @ weight^T + bias`` as one GEMM (:func:`llmops_model.fast.cublaslt.linear_residual`)."""

    @staticmethod
    @custom_fwd
    def forward(ctx, input, weight, bias, residual, into_main_grad: bool):
        out = torch.ops.llmops.linear_residual(input.reshape(-1, input.shape[-1]), weight, bias, residual)
        ctx.save_for_backward(input, weight)
        ctx.use_bias, ctx.into_main_grad = bias is not None, into_main_grad
        return out

    @staticmethod
    @custom_bwd
    def backward(ctx, grad_output):
        return *linear_grads(ctx, grad_output), grad_output, None



class LinearBiasInEpilogue(LinearWithGradAccumulationAndAsyncCommunication):
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


def megatron_managed(weight: torch.Tensor) -> bool:
    """Whether Megatron handles this weight's gradient itself (zeroed weight gradients, Megatron-FSDP)."""
    return getattr(weight, "zero_out_wgrad", False) or hasattr(weight, "__fsdp_param__")


def plus_residual(output: torch.Tensor, residual: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``output + residual + bias``, for the layouts whose GEMM cannot take the residual."""
    output = output + residual
    return output if bias is None else output + bias


def dispatch(input, weight, bias, kwargs, megatron):
    """Run one call of a parallel linear's ``_forward_impl`` through this module's functions where they apply,
    else through Megatron's (`megatron`) (module doc)."""
    if (not weight.requires_grad or kwargs.get("sequence_parallel") or kwargs.get("grad_output_buffer") is not None
            or megatron_managed(weight)):
        return megatron(input, weight, bias=bias, **kwargs)
    fusion = bool(kwargs["gradient_accumulation_fusion"])
    if kwargs.get("allreduce_dgrad"):
        if bias is None:
            return megatron(input, weight, bias=bias, **kwargs)
        return LinearBiasInEpilogue.apply(input, weight, bias, fusion, True, False, None, 0, kwargs["tp_group"])
    into_main_grad = claim_main_grad(weight, fusion)
    if into_main_grad is None:
        return megatron(input, weight, bias=bias, **kwargs)
    return Linear.apply(input, weight, bias, into_main_grad)
