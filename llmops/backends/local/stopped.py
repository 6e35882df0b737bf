"""The processes of a local run that nothing else finds stopped (SIGSTOP, or held by a debugger).

A stopped process neither exits nor errs. The launcher's watchdog (llmops_model.train.heartbeat) finds a stopped
training worker, as its heartbeats stop, but not its own launcher (the watchdog is one of its threads), nor the
forkserver its workers are forked from, which passes their exits on; data preparation has no watchdog at all.
Stopped, any of these left the run RUNNING for good: the workers finished and waited for a launcher that never
collected them, or a preparation waited for a worker that never answered. So the supervisor looks at them (a
watch), and a stopped supervisor is shown by `llmops status` and continued by `llmops cancel`
(llmops.backends.local.backend).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

from llmops.procs import children, descendants, workers

# restarts.hang_timeout unset: how long one may stay stopped, the launcher watchdog's least timeout
# (llmops_model.train.heartbeat.MIN_AUTO_TIMEOUT; llmops does not import the model's modules).
DEFAULT_TIMEOUT = 300.0
_STOPPED = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


def is_stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() in _STOPPED
    except psutil.Error:
        return False


def unwatched(job: int, *, prepare: bool) -> list[int]:
    """The processes of the job started as `job` that no heartbeat watches: data preparation's every one; a
    training stage's launcher and its other children than the workers (the forkserver)."""
    if prepare:
        return [job, *descendants(job)]
    ranks = set(workers(job))
    return [job, *(pid for pid in children(job) if pid not in ranks)]


def role(job: int, pid: int, *, prepare: bool) -> str:
    """What `pid` is to the job, in words."""
    if prepare:
        return "data preparation" if pid == job else "a data-preparation worker"
    if pid == job:
        return "the launcher"
    try:
        line = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        line = ""
    return "the workers' forkserver" if "forkserver" in line else "a process of the launcher"


@dataclass
class Found:
    pid: int
    role: str
    seconds: float  # stopped for this long, at least
    timeout: float


class Watch:
    """Whether a process of the job has stayed stopped for `timeout` seconds (`check`, when `due`: every `every`
    seconds)."""

    def __init__(self, job: int, *, prepare: bool, timeout: float, every: float = 1.0):
        self.job, self.prepare, self.timeout, self.every = job, prepare, timeout, every
        self._since: dict[int, float] = {}  # a stopped process: when it was first seen stopped
        self._next = 0.0

    def due(self) -> bool:
        """Whether it is time to look again (then the next look is `every` seconds later)."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.every
        return True

    def check(self) -> Found | None:
        now = time.monotonic()
        stopped = {pid for pid in unwatched(self.job, prepare=self.prepare) if is_stopped(pid)}
        self._since = {pid: self._since.get(pid, now) for pid in stopped}  # one continued since starts afresh
        for pid, since in self._since.items():
            if now - since >= self.timeout:
                return Found(pid, role(self.job, pid, prepare=self.prepare), now - since, self.timeout)
        return None
