"""Stragglers: a rank persistently slower than its peers is named in the log, `llmops status` and the report.

In synchronous data-parallel training every rank's step takes as long as the
slowest rank's: the others wait for it in the gradient all-reduce. So the
step time says nothing about who is slow; the time a rank takes to *reach*
the gradient synchronisation does. :class:`Clock` measures it on every rank
(from the step's start to the entry of Megatron's ``finalize_model_grads``;
CUDA events on GPUs, read once the GPU has passed them, so nothing waits),
and every ``WINDOW`` steps :class:`Watch` gathers each rank's mean over the
window. Ranks are compared with the others of their pipeline stage (stages
legitimately differ). A rank slower than the median of the others by more
than ``MARGIN`` (and ``MIN_GAP`` seconds) in ``PERSIST`` windows in a row is
named once, with an ``[llmops] straggler: ...`` line and a ``straggler`` row
in the stage's ``events.jsonl``; it is not killed (a slow node still
trains). It is named again only after it has caught up and fallen behind
anew.

Limits: a step replayed from a CUDA graph does not call back into Python, so
a stage whose steps are graphed (GPU pre-training with ``train.cuda_graphs``)
is not watched; with tensor parallelism the slow rank's tensor-parallel peers
wait for it inside the step and show the same time, so the whole group is
named. On GPUs the gather reads its result on the host once every WINDOW
steps.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist
from megatron.core import parallel_state

WINDOW, MARGIN, MIN_GAP, PERSIST = 10, 0.25, 0.02, 2


class Clock:
    """This rank's time from each step's start to its gradient synchronisation."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._began: float | torch.cuda.Event | None = None
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.samples: list[float] = []

    def start(self) -> None:
        if self.cuda:
            self._began = torch.cuda.Event(enable_timing=True)
            self._began.record()
        else:
            self._began = time.perf_counter()

    def wrap(self, finalize):
        """`finalize` (Megatron's finalize_model_grads) that first notes the time the step reached it."""

        def timed(*args, **kwargs):
            self._reached()
            return finalize(*args, **kwargs)

        return timed

    def _reached(self) -> None:
        began, self._began = self._began, None
        if began is None or (self.cuda and torch.cuda.is_current_stream_capturing()):
            return  # no step started (an evaluation), or the step is being captured into a graph
        if self.cuda:
            reached = torch.cuda.Event(enable_timing=True)
            reached.record()
            self._pending.append((began, reached))
        else:
            self.samples.append(time.perf_counter() - began)

    def take(self) -> float:
        """The mean of the samples so far (NaN: none), and start a new window."""
        done = [p for p in self._pending if p[1].query()]
        self._pending = [p for p in self._pending if p not in done]
        values = self.samples + [a.elapsed_time(b) / 1000 for a, b in done]
        self.samples = []
        return sum(values) / len(values) if values else float("nan")


class Watch:
    """Every WINDOW steps (collective): gather each rank's time to the gradient sync; name stragglers."""

    def __init__(self, clock: Clock, *, device: torch.device, logger):
        self.clock, self.device, self.logger = clock, device, logger
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.behind: dict[int, int] = {}  # rank -> windows in a row above the margin
        self.named: set[int] = set()

    def after(self, step: int) -> None:
        if self.world == 1 or step % WINDOW:
            return
        mine = torch.tensor([self.clock.take(), float(parallel_state.get_pipeline_model_parallel_rank())],
                            dtype=torch.float64, device=self.device)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        if self.logger.enabled:
            self.judge(step, [tuple(t.tolist()) for t in every])

    def judge(self, step: int, rows: list[tuple[float, float]]) -> list[int]:
        """`rows[rank]` = (seconds to the gradient sync, pipeline stage); returns the ranks named now."""
        named = []
        for stage in {int(s) for _, s in rows}:
            peers = {r: sec for r, (sec, s) in enumerate(rows) if int(s) == stage and sec == sec}  # not NaN
            if len(peers) < 2:
                continue
            for rank, sec in peers.items():
                median = statistics.median(v for r, v in peers.items() if r != rank)  # of the others
                if sec > median * (1 + MARGIN) and sec - median > MIN_GAP:
                    self.behind[rank] = self.behind.get(rank, 0) + 1
                else:
                    self.behind.pop(rank, None)
                    self.named.discard(rank)
                if self.behind.get(rank, 0) >= PERSIST and rank not in self.named:
                    self.named.add(rank)
                    named.append(rank)
                    self.logger.info(
                        f"straggler: rank {rank} takes {sec:.3f}s per step to reach the gradient sync, its peers "
                        f"{median:.3f}s ({sec / median:.1f}x), over steps {step - PERSIST * WINDOW + 1}-{step}; "
                        "the others wait for it (its node or GPU may be throttled or shared)")
                    self.logger.event("straggler", step=step, rank=rank, seconds=sec, peers=median,
                                      windows=self.behind[rank])
        return named
