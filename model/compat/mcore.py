"""Work-arounds for Megatron-Core bugs this project hits, each small and self-checking.

Every fix names the symptom and the release it was seen in, and steps aside
when the upstream code no longer needs it.
"""

from __future__ import annotations

import contextlib
import functools
import sys


def hide_wandb() -> None:
    """Keep Megatron from importing Weights & Biases in a process that does not report to it.

    Megatron imports ``wandb`` at import time wherever it is installed (for its
    timers and inference engine), which cost each process 4.6 s of start-up,
    four processes per stage in the tiny CPU run. A ``None`` in ``sys.modules``
    makes that import fail as if wandb were absent, which Megatron handles.
    """
    sys.modules.setdefault("wandb", None)


@contextlib.contextmanager
def wandb_hidden():
    """:func:`hide_wandb` for the imports within only (a process that may report to W&B later, e.g. the CLI's
    `llmops prepare` writing Megatron's indexed datasets: 1.4 s of its 4.5 s import of megatron-core)."""
    hidden = "wandb" not in sys.modules
    if hidden:
        sys.modules["wandb"] = None
    try:
        yield
    finally:
        if hidden and "wandb" in sys.modules and sys.modules["wandb"] is None:
            del sys.modules["wandb"]


def quiet_known_warnings() -> None:
    """Silence Megatron's, Transformer Engine's and torch's notices that say nothing the user can act on."""
    import warnings

    for pattern in (
        r"Transformer Engine and Apex are not installed",
        r"Apex is not installed",
        r"full scope is deprecated",
        r"When using async grad allreduce it is recommended",
        r"`load_state_dict` is deprecated and will be removed",
        r"Please use DTensor instead and we are deprecating ShardedTensor",
        # Pre-training concatenates documents into full sequences and never pads, so the pad id (the eod
        # id, for want of a spare token) colliding with another special token changes nothing.
        r"The pad token id in the tokenizer collides with another special token id",
        # Transformer Engine, measured on an H200 run of the 350M example: its attention's notice about how
        # Megatron's layer lays out q/k/v (once per layer), and its import noticing a Jax it is not built for.
        r"Relying on pointer-based detection of packed q/k/v layouts",
        r"Detected a Jax installation but could not find the shared object file",
        # torch's barrier() naming the device it picked: the one set for this rank, as intended.
        r"barrier\(\): using the device under current context",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def import_deferring_compiles() -> None:
    """Import Megatron-Core with its import-time ``torch.compile`` calls deferred to each function's first call.

    Megatron decorates its fused kernels (bias-GELU, bias-dropout-add, ...)
    with ``torch.compile`` as it imports them, and that call imports TorchDynamo
    and Inductor: 2.2 s of a worker's 5.5 s of imports (megatron-core 0.16,
    torch 2.13, measured), paid by every process of every stage whether or not
    the kernels ever run; on CPUs they never do. Deferred, a kernel is compiled
    exactly as before when it is first called. ``torch.compile`` itself is
    restored once Megatron is imported.
    """
    if "megatron.core" in sys.modules:
        return
    import torch

    real = torch.compile

    def deferred(model=None, **options):
        if model is None:  # used as @torch.compile(**options)
            return lambda fn: deferred(fn, **options)
        compiled = None

        @functools.wraps(model)
        def call(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                compiled = real(model, **options)
            return compiled(*args, **kwargs)

        return call

    torch.compile = deferred
    try:
        import megatron.core  # noqa: F401  (the package imports its fused kernels)
    finally:
        torch.compile = real


@contextlib.contextmanager
def torch_adamw():
    """Build Megatron's optimizer on torch's AdamW even where Transformer Engine is importable.

    megatron.core.optimizer picks TE's FusedAdam whenever TE imports (0.16.1). This project's step is built
    on torch's fused AdamW (the clip coefficient rides in its grad_scale, llmops_model.train.optimizer) and its
    sharded optimizer state on torch's state layout; with TE's optimizer neither applied, and the fast path
    lost 5-8% of its tokens/s on one H200 just because TE was installed.
    """
    import torch
    from megatron.core import optimizer as module

    saved = module.Adam, module.USING_PYTORCH_OPTIMIZER
    module.Adam, module.USING_PYTORCH_OPTIMIZER = torch.optim.AdamW, True
    try:
        yield
    finally:
        module.Adam, module.USING_PYTORCH_OPTIMIZER = saved


def apply() -> None:
    _keep_adam_step_on_reshardable_load()


def _keep_adam_step_on_reshardable_load() -> None:
    """megatron-core 0.16.1, DistributedOptimizer, 'fully_reshardable' checkpoints, torch AdamW.

    Symptom: resuming raises ``KeyError: 'step'`` in
    ``_set_main_param_and_optimizer_states``. The loader skips torch AdamW's
    per-parameter ``step`` (it restores it separately, through the inner
    optimizer's ``load_state_dict``) but then copies every key of the
    destination state, ``step`` included, from the source. Supplying the
    destination's own ``step`` makes that copy a no-op and keeps the value
    the inner optimizer already restored.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer._set_main_param_and_optimizer_states
    if getattr(original, "_llmops_fix", False):
        return

    def set_states(self, model_param, tensors):
        if "step" not in tensors and not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            step = self.optimizer.state.get(main_param, {}).get("step")
            if step is not None:
                tensors = {**tensors, "step": step}
        return original(self, model_param, tensors)

    set_states._llmops_fix = True
    DistributedOptimizer._set_main_param_and_optimizer_states = set_states
