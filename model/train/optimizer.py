"""The optimizer step with gradient clipping, without waiting for the GPU.

Megatron-Core's ``optimizer.step()`` computes the gradient norm, then brings
it to the host (``total_norm.item()``) to decide in Python whether to clip.
That read waits for the whole forward and backward pass to finish; the GPU
then sits idle while the host launches the clip, the AdamW kernels and the
copies back into the bf16 parameters. Profiled on one H100, GPT-1.3B's GPU
was idle about 17 ms per step, mostly there.

:func:`step` does the same work with the decision on the device: the clip
coefficient ``min(1, clip_grad / (norm + 1e-6))`` is a tensor and every
gradient is multiplied by it, which is the identity when no clipping is due,
as ``torch.nn.utils.clip_grad_norm_`` does; with torch's fused AdamW the
coefficient goes into the kernel (its ``grad_scale``) instead of a pass of its
own. The norm is returned as a device tensor; whoever logs it reads it later
(:class:`llmops_model.train.metrics.Readout`).

It applies where Megatron's step has no other reason to read the device:
optimizers without a loss scaler (bf16 and fp32; fp16's scaler checks for
inf/nan on the host), without Megatron-FSDP or precision-aware (decoupled)
gradients, and without zero counting. Elsewhere it runs Megatron's own step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from llmops_model.fast import fallbacks


def _optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def applies(optimizer) -> bool:
    """Whether :func:`step` can run `optimizer` (a Megatron optimizer, chained or not) without host syncs."""
    optimizers = _optimizers(optimizer)
    for opt in optimizers:
        config = opt.config
        if getattr(opt, "grad_scaler", None) is not None:
            return False  # fp16: the scaler's inf/nan check is a host decision
        if config.log_num_zeros_in_grad or config.use_precision_aware_optimizer:
            return False
        if any(getattr(p, "__fsdp_param__", False) for p in opt.get_parameters()):
            return False
    # One norm over every optimizer's gradients needs one group to reduce it over (Megatron's condition too).
    groups = {id(opt.get_grad_stats_parallel_group()) for opt in optimizers if not _stub(opt)}
    return len(groups) <= 1


def _stub(opt) -> bool:
    return bool(getattr(opt, "is_stub_optimizer", False))


@torch.no_grad()
def grad_norm(optimizer) -> torch.Tensor:
    """The global L2 norm of the main gradients (Megatron's choice of gradients and group), on the device."""
    live = [opt for opt in _optimizers(optimizer) if not _stub(opt)]
    grads = [g for opt in live for g in opt.get_main_grads_for_grad_norm()]
    norm, _ = fallbacks.foreach_l2_norm(None, None, [grads], False)
    total = norm.float().square()
    if dist.is_initialized():
        # The squared norms add up over the ranks that hold different gradients.
        group = live[0].get_grad_stats_parallel_group() if live else None
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total.sqrt()[0]


@torch.no_grad()
def step(optimizer) -> tuple[bool, torch.Tensor | float | None]:
    """One clipped optimizer step; returns (stepped, the gradient norm before clipping).

    Where :func:`applies`, nothing here reads the device and the norm is a
    0-dim device tensor. Elsewhere this is Megatron's ``optimizer.step()``
    and the norm a float (None when a loss scaler skipped the step).
    """
    if not applies(optimizer):
        stepped, norm, _ = optimizer.step()
        return stepped, norm
    optimizer.prepare_grads()  # without a loss scaler: moves the gradients into place, finds nothing
    norm = grad_norm(optimizer)
    scaled = []
    for opt in _optimizers(optimizer):
        if _stub(opt) or opt.config.clip_grad <= 0.0:
            continue
        coefficient = (opt.config.clip_grad / (norm + 1.0e-6)).clamp(max=1.0)
        inner = opt.optimizer
        if _fused_adam(inner):
            # torch's fused Adam divides each gradient by `grad_scale` as it reads it (the loss scaler's
            # hook): the clip costs no pass of its own over the gradients.
            inner.grad_scale = coefficient.reciprocal()
            scaled.append(inner)
            continue
        grads = [p.grad for p in opt.get_parameters() if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, coefficient)
    try:
        return optimizer.step_with_ready_grads(), norm
    finally:
        for inner in scaled:
            del inner.grad_scale


def _fused_adam(inner) -> bool:
    """A torch Adam/AdamW that runs its fused kernel on every group (the only form that reads grad_scale)."""
    return isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)) and not hasattr(inner, "grad_scale") and \
        bool(inner.param_groups) and all(g.get("fused") for g in inner.param_groups)


__all__ = ["applies", "grad_norm", "step"]
