"""Preemption notices: SIGTERM or SIGUSR1 ask the job to checkpoint and exit.

The handler only sets a flag. At each step boundary every rank joins one
all-reduce of that flag, so that all ranks stop after the same step even when
the signal reached only some of them (Slurm signals the batch step, torchrun
forwards to its workers in turn).

On a GPU the all-reduced flag is read one step boundary later: reading it at
once would wait for the step's whole GPU work and leave the GPU idle while
the host queues the next step. Every rank reads the same all-reduce, so all
still stop after the same step, one step later than an immediate read would.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from llmops_model.train import heartbeat
from llmops_model.train.metrics import Readout

HANDLED = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {}
        self._queued: Readout | None = None  # the last boundary's all-reduce, on a GPU

    def install(self) -> PreemptionFlag:
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handle)
        left = heartbeat.notice_left()  # one the launcher got before this worker was there to be told
        if left is not None and self.signal is None:
            self.signal = left
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def agreed(self, device: torch.device) -> bool:
        """Collective: True on every rank when any rank was signalled (on a GPU: by the previous call)."""
        # A fill, not a copy from host memory: torch waits for the stream to drain before a pageable copy.
        flag = torch.full((1,), 1 if self.signal is not None else 0, dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if device.type != "cuda":
            return bool(flag.item())
        previous, self._queued = self._queued, Readout(flag=flag)
        return previous is not None and bool(previous.get()["flag"])

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
