"""Preemption notices: SIGTERM or SIGUSR1 ask the job to checkpoint and exit.

The handler only sets a flag. At each step boundary every rank joins one
all-reduce of that flag, so that all ranks stop after the same step even when
the signal reached only some of them (Slurm signals the batch step, torchrun
forwards to its workers in turn).
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

HANDLED = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {}

    def install(self) -> PreemptionFlag:
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def agreed(self, device: torch.device) -> bool:
        """Collective: True on every rank when any rank was signalled."""
        flag = torch.tensor([1 if self.signal is not None else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
