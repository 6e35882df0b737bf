"""A training step's forward and backward passes, captured once as a CUDA graph and replayed.

Megatron-Core's schedule launches every kernel of a step from Python. Profiled
on one H100, GPT-350M's GPU sat idle about 14% of each eager step waiting for
the CPU to launch the next kernel. Captured as one CUDA graph, the whole
forward-backward pass (all micro-batches, the loss, DDP's gradient hooks and
reductions into the fp32 buffers) is one launch. The optimizer step stays
eager; it runs once per step.

What makes this safe:

* Only the pre-training step is captured: fixed shapes, no host syncs inside
  the forward and backward passes. A call whose forward-step function, batch
  shapes, dtypes or schedule arguments differ from the captured one runs
  eagerly (and correctly); so do evaluation (forward-only) passes.
* Inputs are copied into the graph's own buffers before each replay; the
  parameters, gradient buffers and optimizer state keep their storage for the
  life of the process, so a replay reads the weights the last optimizer step
  wrote and writes the gradients the next one reads.
* Megatron's model-parallel RNG streams are registered with the graph (the
  process seeds them graph-safe: ``seed_model_parallel_rng(..., graph_safe=True)``),
  so dropout draws new numbers on every replay instead of the captured ones.
* DDP keeps every parameter's AccumulateGrad node, and the node remembers
  the stream it was made on; a backward captured on another stream would
  have to sync with it, which a capture forbids. The trainer builds DDP on
  the capture stream, and eager steps of this schedule run there too.
* The first `warmup` calls run eagerly (they compile the loss kernels and
  let cuBLAS/cuDNN/NCCL set up outside the capture).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from megatron.core.full_cuda_graph import clone_tensors_in_struct, copy_tensors_in_struct

from llmops.errors import UserError


def _signature(batch) -> tuple:
    if isinstance(batch, dict):
        return tuple((k, _signature(v)) for k, v in batch.items())
    if isinstance(batch, (list, tuple)):
        return tuple(_signature(v) for v in batch)
    if isinstance(batch, torch.Tensor):
        return ("tensor", tuple(batch.shape), batch.dtype, batch.device)
    return ("value", repr(batch))


def _argument_key(value):
    """Schedule arguments by value where they are plain values, by identity where they are objects (the model)."""
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_argument_key(v) for v in value)
    return ("object", id(value))


class StepGraph:
    """Megatron's forward-backward schedule for a training step, replayed from one CUDA graph.

    Call it with the schedule's keyword arguments, as Megatron's
    ``get_forward_backward_func()`` is called. `device` is the process's GPU.
    """

    def __init__(self, schedule: Callable, *, device: torch.device, stream: torch.cuda.Stream, warmup: int = 1):
        self.schedule, self.device, self.stream, self.warmup = schedule, device, stream, warmup
        self.eager_calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None  # what the graph was captured for
        self.inputs: list | None = None  # the graph's input buffers, one batch per micro-batch
        self.result = None  # the schedule's return value, in the graph's memory
        self.replays = 0
        self.capture_seconds: float | None = None

    def __call__(self, *, forward_step_func, data_iterator, num_microbatches: int, forward_only: bool = False,
                 **kwargs):
        if forward_only:
            return self.schedule(forward_step_func=forward_step_func, data_iterator=data_iterator,
                                 num_microbatches=num_microbatches, forward_only=True, **kwargs)
        batches = [next(data_iterator) for _ in range(num_microbatches)]
        key = (forward_step_func, num_microbatches, tuple(sorted((k, _argument_key(v)) for k, v in kwargs.items())),
               _signature(batches))
        if self.graph is None and self.eager_calls >= self.warmup:
            self._capture(forward_step_func, batches, num_microbatches, kwargs, key)
        if self.graph is None or key != self.key:
            self.eager_calls += 1
            return self._on_stream(self.schedule, forward_step_func=forward_step_func, data_iterator=iter(batches),
                                   num_microbatches=num_microbatches, forward_only=False, **kwargs)
        clone_tensors_in_struct(self.inputs, batches)
        self.graph.replay()
        self.replays += 1
        return self.result

    def _on_stream(self, fn, **kwargs):
        """Run `fn` on the capture stream (where the parameters' AccumulateGrad nodes live), ordered after
        and before the work of the current stream."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = fn(**kwargs)
        current.wait_stream(self.stream)
        return out

    def _capture(self, forward_step_func, batches, num_microbatches, kwargs, key) -> None:
        from megatron.core.tensor_parallel.random import get_all_rng_states

        self.inputs = copy_tensors_in_struct(batches)
        graph = torch.cuda.CUDAGraph()
        for generator in get_all_rng_states().values():
            if not isinstance(generator, torch.Generator):
                raise RuntimeError("CUDA graphs need Megatron's graph-safe RNG tracker; "
                                   "seed it with model_parallel_cuda_manual_seed(..., use_cudagraphable_rng=True)")
            graph.register_generator_state(generator)
        began = time.perf_counter()
        if dist.is_initialized():
            dist.barrier()  # every rank captures the same collectives
        # No work may be in flight when the capture starts: the barrier's own collective included.
        torch.cuda.synchronize(self.device)
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self.result = self.schedule(forward_step_func=forward_step_func, data_iterator=iter(self.inputs),
                                            num_microbatches=num_microbatches, forward_only=False, **kwargs)
        except RuntimeError as exc:
            # The same step fails to capture on every retry: report it as a setting to change, not a crash.
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"could not capture the training step as a CUDA graph: {first_line}",
                            "set train.cuda_graphs: false in the run spec to train without graphs") from exc
        torch.cuda.synchronize(self.device)
        self.graph, self.key = graph, key
        self.capture_seconds = time.perf_counter() - began


__all__ = ["StepGraph"]
