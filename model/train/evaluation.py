"""Pre-training's held-out loss: forward-only passes over held-out sequences every `train.eval_interval` steps.

Every evaluation reads the same sequences: the first `train.eval_iters` x
`train.micro_batch_size` of the held-out data (:func:`llmops_model.train.data.build_held_out`),
split over the data-parallel ranks in contiguous blocks as a training batch is;
a rank whose block runs past the end is made up with sequences that carry no
loss. The loss is the mean over every held-out token that carries one: each
micro-batch's loss sum and token count are added over the micro-batches and
the data-parallel ranks before dividing, so every TP/PP/DP layout reports the
same number, as it does for training losses. The passes go through the
training step's pipeline schedule, forward only, with the model in eval mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from llmops.spec.run import RunSpec
from llmops_model.parallel import Layout
from llmops_model.train import data
from llmops_model.train.metrics import StepLogger


class HeldOutLoss:
    """When to evaluate and on what; built on every rank (collective: it builds the held-out data)."""

    def __init__(self, spec: RunSpec, *, layout: Layout, device: torch.device, cache_dir: str, logger: StepLogger):
        tr = spec.train
        self.layout, self.device, self.mbs, self.steps = layout, device, tr.micro_batch_size, tr.steps
        self.interval = tr.eval_interval or 0  # None: a spec resolved before evaluations existed
        self.count = (tr.eval_iters or 0) * tr.micro_batch_size
        self.source: data.SampleSource | None = None
        if self.interval and self.count:
            held = data.build_held_out(spec, cache_dir=cache_dir, num_samples=self.count)
            self.source = held.source
            if held.source is None:
                logger.info(f"no held-out loss in this run: {held.missing}; training goes on without "
                            "evaluations (give the split a validation share, or set train.eval_interval: 0)")

    def due(self, step: int) -> bool:
        """Whether step `step` ends with an evaluation: every interval, and the last step."""
        return self.source is not None and (step % self.interval == 0 or step == self.steps)

    def measure(self, model, *, step: int, logger: StepLogger, forward: Callable) -> None:
        """Collective: evaluate `model` (the DDP-wrapped module) through `forward`, the trainer's schedule
        (:func:`llmops_model.train.loop.forward_backward` bound to the trainer); the logger rank logs it."""
        began = time.perf_counter()
        per_rank = -(-self.count // (self.layout.dp * self.mbs)) * self.mbs  # whole micro-batches, equal on every rank
        first = self.layout.dp_rank * per_rank
        model.eval()
        with torch.no_grad():
            outputs = forward(self._batches(range(first, first + per_rank)), forward_step=_forward_step,
                              num_microbatches=per_rank // self.mbs, forward_only=True)
        model.train()
        if not parallel_state.is_pipeline_last_stage():
            return
        sums = torch.stack([torch.stack([o[k].double().reshape(()) for o in outputs]).sum() for k in ("sum", "count")])
        dist.all_reduce(sums, group=parallel_state.get_data_parallel_group())
        total, tokens = sums.tolist()
        logger.log_eval(step=step, metrics={"loss": total / max(tokens, 1.0), "loss_tokens": tokens,
                                            "seconds": time.perf_counter() - began})

    def _batches(self, indices: range) -> Iterator[dict[str, torch.Tensor]]:
        source = self.source
        for first in range(indices.start, indices.stop, self.mbs):
            samples = [source[i % len(source)] if i < self.count else _no_loss(source[0])
                       for i in range(first, first + self.mbs)]
            batch = {k: torch.stack([s[k] for s in samples]) for k in data.LM_KEYS}
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


def _no_loss(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A filler sequence: a real one whose tokens count for nothing."""
    return {**sample, "loss_mask": torch.zeros_like(sample["loss_mask"])}


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(_loss_sums, batch["loss_mask"])


def _loss_sums(loss_mask: torch.Tensor, output: torch.Tensor):
    mask = loss_mask.view(-1).float()
    total = torch.sum(output.float().view(-1) * mask)
    # clone: the schedule divides the returned loss in place by the micro-batch count.
    return total, {"sum": total.detach().clone(), "count": mask.sum()}
