"""The frozen reference model's log-probabilities, precomputed once from the starting weights.

DPO compares the policy with the model it started from. NeMo-Aligner keeps
that reference's weights (offloaded to CPU) and swaps them in for an extra
forward pass every step; TRL can do either. We precompute, because here:

* the reference is exactly the starting checkpoint and never changes, so
  its log-probabilities are a fixed column of the data set: one
  forward-only pass over every pair, before the first step, costs what one
  epoch of "same step" reference passes would, and later epochs are free;
* no second copy of the weights sits in GPU or host memory, and the
  training step stays a single Megatron schedule;
* the values are saved next to the tokenized examples, so a restart (or
  resume into another TP/PP layout) reads the very same numbers: resumed
  runs continue exactly instead of recomputing with different rounding.

The pass runs through the same pipeline schedule as training
(``forward_only=True``), data-parallel ranks splitting the pairs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from llmops_model.align.objectives import DPO
from llmops_model.align.sources import DPOSource, sweep
from llmops_model.train import loop


def compute(t: loop.Trainer, source: DPOSource, *, objective: DPO, micro_batch_size: int) -> np.ndarray:
    """Collective: [pairs, 2] summed response log-probabilities under the model's current weights."""
    layout = t.layout
    values = torch.zeros(source.count, 2, dtype=torch.float64, device=t.device)
    if source.count:
        steps, batches = sweep(source, micro_batch_size=micro_batch_size, dp=layout.dp, dp_rank=layout.dp_rank,
                               device=t.device, keys=objective.keys)
        t.model.eval()
        with torch.no_grad():
            outputs = loop.forward_backward(t, batches, forward_step=objective.reference_step,
                                             num_microbatches=steps, rows=2 * micro_batch_size, forward_only=True)
        t.model.train()
        if layout.is_last_stage and layout.tp_rank == 0:  # one writer per pair: its data-parallel rank
            for out in outputs:
                index = out["index"].view(-1)
                keep = index >= 0
                values[index[keep]] = out["logps"][keep].double()
    dist.all_reduce(values)
    return values.cpu().numpy()


def attach(t: loop.Trainer, sources: dict[str, DPOSource], *, objective: DPO, micro_batch_size: int,
           cache: Path, key: str, load_start: Callable[[], None], logger) -> bool:
    """Give every source its reference log-probabilities, from `cache` when it was made for `key`.

    Otherwise loads the starting weights (`load_start`), computes and caches
    them. Collective; returns whether the starting weights were loaded.
    """
    have = torch.tensor([1 if _read(cache, key) is not None else 0], dtype=torch.int32, device=t.device)
    dist.all_reduce(have, op=dist.ReduceOp.MIN)  # every rank must take the same branch
    if have.item():
        stored = _read(cache, key)
        for name, source in sources.items():
            source.reference = stored[name]
        logger.info(f"reference log-probabilities read from {cache.name}")
        return False
    load_start()
    for name, source in sources.items():
        source.reference = compute(t, source, objective=objective, micro_batch_size=micro_batch_size)
        logger.info(f"reference log-probabilities of {source.count} {name} pairs: computed from the starting "
                    "weights")
    if dist.get_rank() == 0:
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, key=np.array(key), **{name: s.reference for name, s in sources.items()})
        os.replace(tmp, cache)
    dist.barrier()
    return True


def _read(cache: Path, key: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(cache) as z:
            return {k: z[k] for k in z.files if k != "key"} if str(z["key"]) == key else None
    except (OSError, ValueError, KeyError):
        return None
