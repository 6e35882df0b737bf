"""FP8 training (``train.precision: fp8``): which recipe, and whether this GPU and Transformer Engine can run it.

FP8 runs through Megatron-Core's Transformer Engine layer spec: Megatron
wraps each layer's forward in TE's ``fp8_autocast`` with the recipe named in
``TransformerConfig.fp8_recipe``, and TE's linears run their GEMMs in FP8
(E4M3 forward, E5M2 gradients: the "hybrid" format) while the weights, norms,
attention, optimizer and checkpoints stay bf16/fp32. A checkpoint therefore
holds the same tensors in both precisions, plus TE's per-layer scaling state
(``_extra_state``), which a bf16 run does not read and an FP8 run starting
from a bf16 checkpoint begins afresh.

The recipes, as Transformer Engine names them:

* ``delayed``: scales from a history of each tensor's amax (1024 steps, the max), the oldest recipe;
* ``tensorwise``: "current scaling", each tensor scaled by its own amax at the moment it is cast;
* ``blockwise``: 1x128 and 128x128 blocks with their own scales (Hopper; DeepSeek-V3's recipe);
* ``mxfp8``: the OCP microscaling format, 32-element blocks with E8M0 scales (Blackwell's tensor cores).
"""

from __future__ import annotations

import torch

from llmops.errors import UserError
from llmops.spec.run import RunSpec

RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")

# `auto` on Hopper and Ada. Measured on one H200 in one run (benchmarks/train_throughput.py, GPT-1.3B): delayed
# 85.0k tokens/s, tensorwise 81.0k, blockwise 74.5k. Delayed scaling is the fastest but starts with unit scales
# wherever TE's scaling state is new, which a checkpoint of another precision makes: resumed from a bf16 run, its
# first FP8 steps computed with weights mostly below E4M3's normal range (a loss of 12.5 where the bf16 run had 8.7).
# Tensorwise scales each tensor by its own amax as it is cast: the fastest that trains stably from any start.
# Blackwell's tensor cores take MXFP8 natively.
AUTO_BEFORE_BLACKWELL = "tensorwise"


# Recipes whose scales are computed on the GPU, inside the kernels that cast (from the tensor's own amax, or per
# block): a step replayed from a CUDA graph scales every tensor as an eager step would. Delayed scaling keeps an amax
# history that TE reduces and rolls between steps from Python (TE's own make_graphed_callables re-registers the
# amax buffers before each replay and reduces them after it), which a capture of the whole step would replay
# stale: delayed steps run eagerly.
GRAPHABLE = ("tensorwise", "blockwise", "mxfp8")


def enabled(spec: RunSpec) -> bool:
    return spec.train is not None and spec.train.precision == "fp8"


def recipe(spec: RunSpec, device: torch.device) -> str:
    """The spec's FP8 recipe with `auto` resolved for `device`; exit 2 where this GPU or TE cannot run it."""
    te = transformer_engine()
    asked = spec.train.fp8_recipe
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    chosen = asked if asked != "auto" else ("mxfp8" if major >= 10 else AUTO_BEFORE_BLACKWELL)
    ok, reason = _supported(te, chosen)
    if not ok:
        raise UserError(
            f"train.precision fp8 with the {chosen} recipe cannot run on this GPU ({name}, compute capability "
            f"{major}.{minor}; Transformer Engine {te.__version__} says: {reason})",
            "FP8 needs Hopper or Ada (compute capability 8.9+) for delayed and tensorwise, Hopper for blockwise, "
            "Blackwell for mxfp8: choose another train.fp8_recipe, or train.precision: bf16")
    return chosen


def transformer_engine():
    try:
        import transformer_engine
        import transformer_engine.pytorch  # noqa: F401 (the check below needs its PyTorch half)
    except ImportError as exc:
        raise UserError(f"train.precision fp8 runs on Transformer Engine, which does not import here ({exc})",
                        "use the GPU image (infra/docker/Dockerfile.gpu ships it), pip install "
                        "transformer-engine[pytorch], or set train.precision: bf16") from None
    return transformer_engine


def _supported(te, chosen: str) -> tuple[bool, str]:
    """TE's own verdict for `chosen` on the current GPU (its API moved between releases: both spellings)."""
    pt = te.pytorch
    checks = {
        "delayed": ("is_fp8_available", "check_fp8_support"),
        "tensorwise": ("is_fp8_available", "check_fp8_support"),
        "blockwise": ("is_fp8_block_scaling_available", "check_fp8_block_scaling_support"),
        "mxfp8": ("is_mxfp8_available", "check_mxfp8_support"),
    }[chosen]
    new, old = checks
    if hasattr(pt, new):
        ok, reason = getattr(pt, new)(return_reason=True)
        return bool(ok), reason or "supported"
    from transformer_engine.pytorch import fp8 as legacy

    ok, reason = getattr(legacy, old)()
    return bool(ok), reason or "supported"


def configure(config, spec: RunSpec, device: torch.device) -> None:
    """Turn FP8 on in Megatron's TransformerConfig (before the model is built)."""
    config.fp8 = "hybrid"
    config.fp8_recipe = recipe(spec, device)
    if config.fp8_recipe == "delayed":  # Megatron's and NeMo's settings for delayed scaling
        config.fp8_amax_history_len = 1024
        config.fp8_amax_compute_algo = "max"


def graphable(spec: RunSpec, device: torch.device) -> bool:
    """Whether this FP8 run's steps can be replayed from the project's CUDA graph (:data:`GRAPHABLE`)."""
    return recipe(spec, device) in GRAPHABLE
