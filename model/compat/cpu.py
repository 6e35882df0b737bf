"""Run Megatron-Core on CPUs over gloo.

Megatron-Core has no CPU path of its own; it assumes CUDA in a handful of
places. This module is the one place where those assumptions are redirected,
so that tensor- and pipeline-parallel training runs on a laptop or a CI
machine with the same code that runs on GPUs. It is activated only when no
GPU is present (see :func:`activate`), and never touches a CUDA process.

What it covers, and why each piece is needed:

* **Device literals.** Megatron allocates with ``device="cuda"``,
  ``device=torch.cuda.current_device()`` (an ``int``) and ``.cuda()`` in its
  pipeline schedules and p2p communication, its global memory buffer, grad
  clipping and optimizer wrappers. A :class:`torch.overrides.TorchFunctionMode`
  rewrites the ``device`` argument of every torch call (and ``Tensor.cuda``
  / ``Tensor.to``) to ``cpu``: no Megatron source is patched.
* **Tensor type names.** Megatron's optimizer wrappers and grad clipping
  check ``tensor.type() == 'torch.cuda.FloatTensor'`` (and the bf16/fp16
  names) to choose their dtype handling; under the same mode ``Tensor.type()``
  answers with the CUDA name of the CPU tensor's type.
* **``torch.cuda`` queries.** ``current_device`` answers ``0`` (an ``int``
  that the mode above then maps to ``cpu``); ``synchronize``,
  ``empty_cache`` and ``manual_seed`` are no-ops; ``is_available`` stays
  ``False`` so that Megatron's own checks keep taking their non-CUDA paths.
* **RNG state tracker.** Megatron forks a named CUDA RNG stream around
  weight init and dropout in tensor-parallel regions
  (``tensor_parallel.get_cuda_rng_tracker``). :class:`CpuRNGStatesTracker`
  keeps those named streams as CPU generator states, with the same
  semantics, and is installed as Megatron's tracker.

Anything CUDA-only that is not listed here (streams and events for
communication overlap, fused kernels, the distributed optimizer's CUDA
tensor-type checks) is switched off by the config factory on CPU instead.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["activate", "is_active", "CpuRNGStatesTracker", "seed_model_parallel_rng"]

_active_mode: _CudaToCpuMode | None = None


def _is_cuda_device(device) -> bool:
    if isinstance(device, int):
        return True  # torch.cuda.current_device() answers an int.
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments of torch calls to CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # Megatron checks type names ('torch.cuda.FloatTensor') to choose dtype handling.
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        if func is torch.Tensor.to and args and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        device = kwargs.get("device")
        if device is not None and _is_cuda_device(device):
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


class CpuRNGStatesTracker:
    """Named RNG streams over the CPU generator, the interface of Megatron's tracker.

    Megatron's ``CudaRNGStatesTracker`` keeps one CUDA generator state per name
    (data-parallel, model-parallel, expert-parallel) and swaps it in for the
    duration of ``fork(name)``. This keeps CPU generator states instead.
    """

    def __init__(self, *args, **kwargs):
        self.use_cudagraphable_rng = False
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return {name: state.clone() for name, state in self.states_.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise RuntimeError(f"seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self.seeds_.add(seed)
        original = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(original)

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        original = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(original)


def is_active() -> bool:
    return _active_mode is not None


def activate() -> None:
    """Install the CPU redirections; a no-op when a GPU is present or already active.

    Must run before Megatron builds models or process-group buffers.
    """
    global _active_mode
    if _active_mode is not None or torch.cuda.is_available():
        return
    torch.cuda.current_device = lambda: 0
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.empty_cache = lambda: None
    torch.cuda.manual_seed = lambda *a, **k: None
    torch.cuda.manual_seed_all = lambda *a, **k: None

    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random.CudaRNGStatesTracker = CpuRNGStatesTracker  # used by initialize_rng_tracker
    mcore_random.initialize_rng_tracker(force_reset=True)

    _active_mode = _CudaToCpuMode()
    _active_mode.__enter__()


def seed_model_parallel_rng(seed: int, *, graph_safe: bool = False) -> None:
    """Seed the default generator and Megatron's named streams (CPU or GPU).

    `graph_safe` (GPUs) keeps the streams as generators a CUDA graph can
    advance on every replay (:mod:`llmops_model.fast.graphs`).
    """
    from megatron.core import tensor_parallel

    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, use_cudagraphable_rng=graph_safe, force_reset_rng=True)


@functools.cache
def device() -> torch.device:
    """The device this process trains on."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
