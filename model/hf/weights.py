"""A checkpoint's full weights in one process, whatever TP/PP layout saved it.

The model is built for a one-process layout (TP1, PP1) in a process group of
one, and `dist_checkpointing` reshards the saved tensors into it, as a resume
on another layout does. Names are the Megatron-Core module's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from llmops.spec.run import RunSpec


def one_process_spec(spec: RunSpec) -> RunSpec:
    """The spec's model on one CPU process in fp32, unfused: the layout every conversion reads from."""
    return spec.model_copy(update={
        "parallelism": spec.parallelism.model_copy(update={"tensor": 1, "pipeline": 1, "sequence_parallel": False}),
        "resources": spec.resources.model_copy(update={"cpu": True, "nodes": 1, "processes_per_node": 1}),
        "train": spec.train.model_copy(update={"precision": "fp32", "fused_kernels": False, "cuda_graphs": False}),
        "model": spec.model.model_copy(update={"attention": "sdpa", "compile": False}),
    })


@contextlib.contextmanager
def process_group_of_one(spec: RunSpec) -> Iterator[None]:
    """A gloo group of this process alone with Megatron's groups for TP1/PP1 (torn down after)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from llmops_model.compat import cpu

    if dist.is_initialized():  # a caller that already has a group (a test, a training process) keeps it
        yield
        return
    cpu.activate()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
        cpu.seed_model_parallel_rng(spec.train.seed)
        yield
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def build(spec: RunSpec):
    """The one-process GPT of `spec` (inside :func:`process_group_of_one`)."""
    from llmops_model.gpt import build_model

    return build_model(one_process_spec(spec), device=torch.device("cpu"))


def load(spec: RunSpec, checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every weight of `checkpoint` as full fp32 tensors, keyed by Megatron-Core's parameter names."""
    from llmops_model.train import checkpoint as ckpt

    with process_group_of_one(spec):
        model = build(spec)
        state = ckpt.load(checkpoint, sharded_state={"model": model.sharded_state_dict(prefix="")})
        model.load_state_dict(state["model"])
        return {k: v.detach().float().clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
