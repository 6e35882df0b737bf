"""The distributed optimizer's checkpoint state, described on the GPU.

Checkpoints hold the optimizer state in Megatron's ``fully_reshardable`` form:
one fp32 ``param``, ``exp_avg`` and ``exp_avg_sq`` tensor per model parameter,
with the parameter's own shape and sharding, so that a checkpoint loads into
any tensor/pipeline/data-parallel layout. Megatron-Core (0.16) builds that form
on the host: per parameter a synchronous device-to-host copy into a zeroed CPU
buffer, the buffers sent back to the GPU for the data-parallel all-gather and
copied to the host again. For GPT-350M on one H100 that took 5.2 s of a 7.8 s
save stall, every save.

:func:`describe` builds the same sharded state dict (same keys, shapes,
sharding, replica ids and values; Megatron's own loader reads it back) where
the state already is:

- data-parallel size 1: every rank holds each of its parameters' whole state,
  so the tensors are views of the live optimizer state, with no copy at all.
  The checkpoint writer stages them to host memory before training goes on,
  so the views cannot change under it;
- data-parallel size > 1: each bucket's shards are all-gathered on the GPU
  (one collective per state per bucket), and each parameter's state is a view
  of the gathered bucket. That needs GPU memory for a copy of the rank's
  optimizer state; when some rank lacks it, every rank moves each bucket's
  gather to host memory before the next one (slower, as exact), and
  :func:`describe` says so.

Megatron's own path is used only where this one does not apply
(precision-aware optimizer state, Megatron FSDP, several gradient dtypes in
one buffer).

Loading always goes through Megatron's own path.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.distributed as dist

# The form of the saved optimizer state (see the module docstring).
FORMAT = {"distrib_optim_sharding_type": "fully_reshardable"}
_KEYS = ("param", "exp_avg", "exp_avg_sq")
_HEADROOM = 1.1  # free GPU memory needed for the data-parallel gather, relative to its size
# torch 2.13 renamed all_gather_into_tensor (and warns on the old name); older releases have only that one.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def describe(optimizer, model_sd: dict) -> tuple[dict, str]:
    """The optimizer's sharded state dict for a save, and where it was built: 'gpu' or why on the host.

    Collective over the data-parallel group when its size is above 1.
    """
    from megatron.core.dist_checkpointing.utils import add_prefix_for_sharding
    from megatron.core.optimizer import ChainedOptimizer, DistributedOptimizer

    if isinstance(optimizer, ChainedOptimizer):  # what get_megatron_optimizer returns
        if len(optimizer.chained_optimizers) == 1:
            return describe(optimizer.chained_optimizers[0], model_sd)
        optimizer._synchronize_steps()  # as Megatron's ChainedOptimizer does, with its key prefixes
        state, places = {}, set()
        for i, inner in enumerate(optimizer.chained_optimizers):
            state[i], where = describe(inner, model_sd)
            add_prefix_for_sharding(state[i], f"chained_{i}.")
            places.add(where)
        return state, "; ".join(sorted(places))
    if not isinstance(optimizer, DistributedOptimizer):
        return optimizer.sharded_state_dict(model_sd, is_loading=False, metadata=FORMAT), "host: not distributed"
    why = _unsupported(optimizer)
    if why is not None:
        return optimizer.sharded_state_dict(model_sd, is_loading=False, metadata=FORMAT), f"host: {why}"
    to_host = _gather_does_not_fit(optimizer)
    state = optimizer.state_dict()
    state["param_state"] = _param_state(optimizer, model_sd, to_host=to_host)
    state["param_state_sharding_type"] = FORMAT["distrib_optim_sharding_type"]
    return state, "gpu, each bucket's gather moved to host memory (GPU memory is short)" if to_host else "gpu"


def _unsupported(optimizer) -> str | None:
    """Why the GPU path does not apply to this optimizer (None when it does)."""
    if optimizer.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
        return "precision-aware optimizer state"
    if optimizer.ddp_config.use_megatron_fsdp:
        return "Megatron FSDP"
    if any(len(maps) != 1 for maps in optimizer.gbuf_ranges):
        return "more than one gradient dtype per buffer"
    return None


def _gather_does_not_fit(optimizer) -> bool:
    """Collective over the data-parallel group: whether some rank lacks the free GPU memory to keep the
    gathered state on the GPU (then every rank moves each bucket's gather to host memory, so that the
    ranks run the same collectives)."""
    group = optimizer.data_parallel_group
    if group.size() == 1 or not torch.cuda.is_available():
        return False
    need = sum(len(_KEYS) * 4 * bucket.grad_data.numel() for buffer in optimizer.buffers for bucket in buffer.buckets)
    free, _ = torch.cuda.mem_get_info()
    short = torch.tensor([int(free < need * _HEADROOM)], dtype=torch.int32, device=torch.cuda.current_device())
    dist.all_reduce(short, op=dist.ReduceOp.MAX, group=group)
    return bool(short.item())


@torch.no_grad()
def _full_states(optimizer, buffer, bucket_maps, *, to_host: bool) -> dict:
    """model param -> {state: the whole parameter's flat fp32 state}, for one gradient buffer."""
    group = optimizer.data_parallel_group
    world = group.size()
    if world == 1:  # this rank's shard of every parameter is the whole parameter
        full = {}
        for bucket_map in bucket_maps:
            for model_param, ranges in bucket_map["param_map"].items():
                tensors = optimizer._get_main_param_and_optimizer_states(model_param)
                if len(ranges["param"]) != model_param.numel():  # not expected at DP=1; be exact regardless
                    raise RuntimeError(f"a data-parallel size 1 shard covers {len(ranges['param'])} of "
                                       f"{model_param.numel()} elements")
                full[model_param] = {key: tensors[key].view(-1) for key in _KEYS}
        return full
    gathered = []
    for bucket_idx, bucket_map in enumerate(bucket_maps):
        bucket = buffer.buckets[bucket_idx]
        local_numel = bucket.grad_data.numel() // world
        device = bucket.grad_data.device
        local = {key: torch.zeros((local_numel,), dtype=torch.float32, device=device) for key in _KEYS}
        for model_param, ranges in bucket_map["param_map"].items():
            tensors = optimizer._get_main_param_and_optimizer_states(model_param)
            where = ranges["gbuf_local"]
            for key in _KEYS:
                local[key][where.start:where.end].copy_(tensors[key].view(-1))
        world_tensors = {}
        for key in _KEYS:
            world_tensors[key] = torch.empty((world * local_numel,), dtype=torch.float32, device=device)
            _all_gather(world_tensors[key], local[key], group=group)
        if to_host:  # one bucket's gather on the GPU at a time
            world_tensors = {key: value.cpu() for key, value in world_tensors.items()}
        gathered.append((bucket, world_tensors))
    full = {}
    for model_param, (start, end, bucket_id) in buffer.param_index_map.items():
        bucket, world_tensors = gathered[bucket_id]
        lo, hi = start - bucket.offset, end - bucket.offset
        full[model_param] = {key: world_tensors[key][lo:hi] for key in _KEYS}
    return full


def _param_state(optimizer, model_sd: dict, *, to_host: bool) -> dict:
    """What Megatron's ``sharded_param_state_fully_reshardable`` returns for a save, from GPU tensors."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
    from megatron.core.dist_checkpointing.utils import extract_sharded_tensors_and_factories

    sharded, _ = extract_sharded_tensors_and_factories(model_sd)
    metadata = {sh.data: sh for sh in nested_values(sharded)}
    state = {}
    for buffer, gbuf_range_maps in zip(optimizer.buffers, optimizer.gbuf_ranges, strict=True):
        (bucket_maps,) = gbuf_range_maps.values()
        full = _full_states(optimizer, buffer, bucket_maps, to_host=to_host)
        for model_param in buffer.param_index_map:  # Megatron's order
            sh = metadata.get(model_param)
            if sh is None:
                raise ValueError(f"a parameter of shape {tuple(model_param.shape)} is not in the model's sharded "
                                 f"state dict (the model must be described with keep_vars=True)")
            tensors = {}
            for key in _KEYS:
                data = full[model_param][key].view(sh.data.shape)
                kwargs = {"key": f"optimizer.state.{key}.{sh.key}", "data": data, "dtype": data.dtype,
                          "replica_id": sh.replica_id}
                if isinstance(sh, ShardedTensorFactory):
                    kwargs.pop("dtype")
                tensors[key] = replace(sh, **kwargs)
                tensors[key].validate_metadata_integrity()
            state[len(state)] = tensors
    return state
