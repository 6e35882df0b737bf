"""Torch-native stand-ins for the Apex / Transformer Engine kernels Megatron-Core uses when present.

Without Apex or Transformer Engine, Megatron-Core falls back to code paths
written for correctness, not speed. On one H100 running the 1.3B GPT they
cost about a tenth of every step:

* weight gradients are computed in bf16, handed to autograd, then added into
  the fp32 gradient buffer by a hook (an extra pass over every weight
  gradient per micro-batch). Apex's ``fused_weight_gradient_mlp_cuda``
  accumulates the GEMM straight into the buffer; cuBLAS does the same through
  ``torch.addmm(..., out_dtype=torch.float32)``;
* the gradient norm is computed one tensor at a time with a host sync per
  tensor, and tensor lists are scaled one tensor at a time; ``torch._foreach_*``
  does each in a few kernels;
* the optimizer is torch's ``AdamW`` in its multi-tensor form; its fused
  (single-kernel) form is the one Apex's FusedAdam corresponds to.

:func:`install` swaps these in, on CUDA only, and only where Megatron is on
its fallback path; every swap keeps Megatron's interfaces and numerics
(fp32 accumulation, the same AdamW update).
"""

from __future__ import annotations

import torch


def install(device: torch.device) -> list[str]:
    """Install the CUDA stand-ins that apply here; returns the names of those installed."""
    if device.type != "cuda":
        return []
    done = []
    if _install_wgrad_accumulation():
        done.append("wgrad-accumulation")
    if _install_foreach_multi_tensor():
        done.append("foreach-multi-tensor")
    return done


def wgrad_accumulation_available(device: torch.device) -> bool:
    """Whether Megatron's gradient_accumulation_fusion can be switched on for this device."""
    if device.type != "cuda":
        return False
    from megatron.core.tensor_parallel import layers

    return bool(layers._grad_accum_fusion_available)


class TorchWgradAccumulation:
    """``fused_weight_gradient_mlp_cuda``'s interface over cuBLAS through torch.

    ``main_grad += grad_output^T @ input`` with bf16/fp16 inputs; the product is
    accumulated in fp32 and, for an fp32 buffer, written in fp32 (cuBLAS with
    beta=1 reads and writes the buffer once, no bf16 gradient in between).
    """

    @staticmethod
    def wgrad_gemm_accum_fp32(total_input: torch.Tensor, grad_output: torch.Tensor, main_grad: torch.Tensor) -> None:
        torch.addmm(main_grad, grad_output.t(), total_input, out_dtype=torch.float32, out=main_grad)

    @staticmethod
    def wgrad_gemm_accum_fp16(total_input: torch.Tensor, grad_output: torch.Tensor, main_grad: torch.Tensor) -> None:
        main_grad.addmm_(grad_output.t(), total_input)


def _install_wgrad_accumulation() -> bool:
    from megatron.core.tensor_parallel import layers

    if layers._grad_accum_fusion_available:
        return False  # Apex's kernel is there
    if not _addmm_out_dtype_works():
        return False
    layers.fused_weight_gradient_mlp_cuda = TorchWgradAccumulation
    layers._grad_accum_fusion_available = True
    return True


def _addmm_out_dtype_works() -> bool:
    """torch >= 2.8 has ``addmm(..., out_dtype=float32)`` for bf16 inputs on CUDA; check it accumulates."""
    try:
        a = torch.ones(2, 3, dtype=torch.bfloat16, device="cuda")
        acc = torch.ones(2, 2, dtype=torch.float32, device="cuda")
        torch.addmm(acc, a, a.t(), out_dtype=torch.float32, out=acc)
        return bool((acc == 4).all())
    except (TypeError, RuntimeError):
        return False


def foreach_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """``amp_C.multi_tensor_l2norm``'s interface: the global L2 norm of a tensor list, with no host sync."""
    tensors = tensor_lists[0]
    if not tensors:
        return torch.zeros(1, dtype=torch.float32, device="cuda"), None
    norms = torch._foreach_norm(tensors, 2.0)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    return total.reshape(1), None


def foreach_scale(chunk_size, noop_flag, tensor_lists, scale):
    """``amp_C.multi_tensor_scale``'s interface: dst = src * scale, list-wise."""
    src, dst = tensor_lists[0], tensor_lists[1]
    if not src:
        return
    if all(s is d for s, d in zip(src, dst)):
        torch._foreach_mul_(dst, scale)
    elif scale == 1.0:
        torch._foreach_copy_(dst, src)
    else:
        torch._foreach_copy_(dst, torch._foreach_mul(src, scale))


def _install_foreach_multi_tensor() -> bool:
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads, optimizer

    installed = False
    if clip_grads.l2_norm_impl is utils.local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = foreach_l2_norm
        installed = True
    for module in (clip_grads, optimizer):
        if getattr(module, "multi_tensor_scale_impl", None) is utils.local_multi_tensor_scale:
            module.multi_tensor_scale_impl = foreach_scale
            installed = True
    return installed


def use_fused_adamw(optimizer) -> bool:
    """Switch torch AdamW/Adam inner optimizers on CUDA parameters to their fused kernel.

    torch reads ``fused`` from each parameter group at every step, so this
    applies to an optimizer already built (and must be re-applied after a
    checkpoint load, which restores the saved groups' flags).
    """
    changed = False
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, (torch.optim.AdamW, torch.optim.Adam)):
            continue
        params = [p for g in inner.param_groups for p in g["params"]]
        if not params or not all(p.is_cuda and p.dtype == torch.float32 for p in params):
            continue
        for group in inner.param_groups:
            group["fused"], group["foreach"] = True, False
        inner.defaults["fused"], inner.defaults["foreach"] = True, False
        # The fused kernel keeps the step count on the device; move any restored one there.
        for state in inner.state.values():
            step = state.get("step")
            if torch.is_tensor(step) and not step.is_cuda:
                state["step"] = step.to(device=params[0].device, dtype=torch.float32)
        changed = True
    return changed


__all__ = ["TorchWgradAccumulation", "foreach_l2_norm", "foreach_scale", "install", "use_fused_adamw",
           "wgrad_accumulation_available"]
