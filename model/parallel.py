"""Process groups: the one place that touches Megatron's global parallel state."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from llmops.spec.run import RunSpec
from llmops_model.compat import cpu


@dataclass(frozen=True)
class Layout:
    """This process's coordinates in the parallel layout."""

    rank: int
    world: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def is_logger(self) -> bool:
        """The rank that sees the loss and prints step lines."""
        return self.is_last_stage and self.tp_rank == 0 and self.dp_rank == 0

    def describe(self) -> str:
        return f"tp{self.tp}-pp{self.pp}-dp{self.dp}"


def setup(spec: RunSpec) -> tuple[Layout, torch.device]:
    """Join the job's process group (from torchrun's environment) and build Megatron's groups.

    On CPU this also activates :mod:`llmops_model.compat.cpu`. Precondition:
    RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are set (torchrun sets them).
    """
    timeout = spec.restarts.collective_timeout  # restarts.hang_timeout's watchdog usually acts long before
    on_cpu = spec.resources.cpu or not torch.cuda.is_available()
    if on_cpu:
        cpu.activate()
        backend = "gloo"
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    par = spec.parallelism
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=par.tensor,
        pipeline_model_parallel_size=par.pipeline,
        distributed_timeout_minutes=max(1, round(timeout / 60)),
    )
    cpu.seed_model_parallel_rng(spec.train.seed, graph_safe=not on_cpu and spec.train.cuda_graphs)
    layout = Layout(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        tp=par.tensor,
        pp=par.pipeline,
        dp=parallel_state.get_data_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
    )
    return layout, cpu.device()


def teardown() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
