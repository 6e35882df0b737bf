"""Hang detection: every training rank beats, the node's launcher watches, and a silent job is stopped. The same
folder carries a preemption notice the other way, to workers the launcher had not started yet (leave_notice).

A rank stuck in a collective, a data read or a deadlocked thread neither exits
nor errs; the job would wait for the process-group timeout, and a cluster would
see a healthy process. So each rank writes a heartbeat, a small JSON file in a
node-local folder the launcher names (``$LLMOPS_HEARTBEATS``), after every
step and before every checkpoint save; the launcher's :class:`Watchdog` reads
them. The hang timeout applies once every rank of the node has finished a step.
Before that, a pre-training rank beats as it begins each part of its start-up
(:data:`STARTUP`: its logs, the model, a resume's checkpoint load, its data),
and a start-up silent for ``restarts.collective_timeout`` (or the hang timeout,
if longer) is a hang too: a part of it can take long on a large job (a
checkpoint load, building a data index), and the process-group timeout already
bounds it where a rank waits in a collective; where none does (one process, or
every rank stuck reading the same storage) nothing else would end it. Joining
the process group and an align stage's start-up are left to that timeout. A
rank that has finished its stage beats ``done`` with its exit code; once every
rank has, their silence is no hang (the stage's work and its last checkpoint
are complete): only workers that still have not exited a timeout later are
stopped, and the launcher exits with their code.

When no rank of the node has beaten for ``restarts.hang_timeout`` seconds (unset:
the larger of 5 minutes, 10 times the slowest step and 3 times the slowest save
seen so far), the watchdog names the ranks the others got past (the likely
cause: the others wait for them in a collective) or says that all stopped
at one point (ranks in lockstep do: a frozen one holds the others in the
step's first collective), has every rank write its Python
stacks (faulthandler, on SIGUSR2, into a file of its own in the folder; a
stopped process is continued first so that it can) and copies each into the
stage log as one block, every line labelled with its rank (on several nodes
the launchers write into one log at once, and Slurm interleaves their lines),
then kills the workers; the
launcher exits with ``EXIT_HUNG`` and the backend restarts the stage from its
latest complete checkpoint, as after a crash. nvidia-resiliency-ext's
heartbeat monitor does the same for GPUs but needs its own launcher in place of
torchrun and CUDA; this is the small piece that fits the launcher llmops
already wraps, on CPUs and GPUs alike.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmops.files import atomic_write

ENV = "LLMOPS_HEARTBEATS"
STACKS = signal.SIGUSR2  # SIGUSR1 is Slurm's preemption notice
MIN_AUTO_TIMEOUT = 300.0
DONE = "done"  # the phase of a rank that has finished its stage
# The parts of a pre-training rank's start-up, in order, each beaten as the rank begins it (the phase: what it does).
STARTUP = {"start": "opening its logs", "build": "building the model", "load": "loading its checkpoint",
           "data": "reading its data"}
NOTICE = "notice"  # the file of a preemption notice the launcher got (leave_notice)
_dump_file = None  # faulthandler writes to the file's descriptor: it must stay open


def stacks_path(folder: Path, pid: int) -> Path:
    """Where the worker `pid` writes its stacks when asked (install)."""
    return folder / f"stacks-{pid}.txt"


def install() -> None:
    """In a worker: dump every thread's stack on SIGUSR2 into this worker's file in the folder, for the launcher
    to copy into the stage log (Watchdog.dump_and_kill)."""
    global _dump_file
    folder = os.environ.get(ENV)
    if folder:
        _dump_file = open(stacks_path(Path(folder), os.getpid()), "w")  # noqa: SIM115 (open for the process)
        faulthandler.register(STACKS, file=_dump_file, all_threads=True)


def beat(step: int, phase: str, *, code: int | None = None) -> None:
    """In a worker: say this rank is alive at `step`, about to do or done with `phase` (no-op when unwatched);
    `code` is the exit code of a rank whose phase is DONE."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    rank = os.environ.get("RANK", "0")
    atomic_write(Path(folder) / f"rank-{rank}.json", json.dumps(
        {"rank": int(rank), "pid": os.getpid(), "step": step, "phase": phase, "time": time.time(), "code": code}))


def leave_notice(signum: int) -> None:
    """In the launcher: keep a preemption notice in the folder, for workers that are not there yet to take it.

    A notice forwarded to the workers reaches only those that exist: one that comes while the launcher is still
    importing, meeting its peers or forking would be lost, and the stage would train to its end. Each worker
    reads it when it installs its handler (:func:`notice_left`). The folder is new for every launch, so a
    notice never outlives the launch it was for."""
    folder = os.environ.get(ENV)
    if folder:
        atomic_write(Path(folder) / NOTICE, str(int(signum)))


def notice_left() -> int | None:
    """In a worker: the preemption notice the launcher kept (:func:`leave_notice`), if it got one."""
    folder = os.environ.get(ENV)
    try:
        return int((Path(folder) / NOTICE).read_text()) if folder else None
    except (OSError, ValueError):
        return None


@dataclass
class Silence:
    """What the watchdog found: the rank silent longest, since when, where it was."""

    rank: int
    step: int
    phase: str
    seconds: float
    timeout: float
    code: int | None = None  # every rank had finished its stage with this exit code: not a hang
    behind: tuple[int, ...] = ()  # the ranks the others got past (empty: every working rank stopped at one point)
    ahead: tuple[int, str, int] | None = None  # the furthest of the others: (step, phase, rank)
    missing: int = 0  # ranks of the node that never beat (still starting, or stuck before their first beat)

    @property
    def finished(self) -> bool:
        return self.phase == DONE

    @property
    def starting(self) -> bool:
        """Found in start-up, before every rank of the node had finished a step."""
        return self.phase in STARTUP or self.missing > 0

    def describe(self) -> str:
        if self.finished:
            return (f"every rank of this node finished its stage (exit code {self.code}), but the workers have not "
                    f"exited {self.seconds:.0f}s later (hang timeout {self.timeout:.0f}s)")
        kind = "start-up timeout" if self.starting else "hang timeout"
        said = f"no progress from any rank of this node for {self.seconds:.0f}s ({kind} {self.timeout:.0f}s); "
        if self.missing:
            step, phase, rank = self.ahead
            return said + (f"{self.missing} of its ranks never started (no heartbeat), while rank {rank} is "
                           f"{_at(step, phase)}: it is most likely waiting for them")
        if not self.behind:
            return said + (f"all its ranks stopped at the same point, {_at(self.step, self.phase)}: one holds the "
                           f"others in a collective, or they share a wait (a rank on another node, storage, the "
                           f"network); their stacks show which")
        one = len(self.behind) == 1
        who = f"rank {self.behind[0]} is" if one else f"ranks {_listed(self.behind)} are"
        step, phase, rank = self.ahead
        there = "has finished its stage" if phase == DONE else f"is further, {_at(step, phase)}"
        return said + (f"{who} behind, {_at(self.step, self.phase)}, while rank {rank} {there}: "
                       f"the others are most likely waiting for {'it' if one else 'them'}")


def _at(step: int, phase: str) -> str:
    """Where a rank's heartbeat left it, in words."""
    return f"in start-up, {STARTUP[phase]}" if phase in STARTUP else f"after step {step} ({phase})"


def _in_startup(beats: dict[int, dict], missing: int, seconds: float, timeout: float) -> Silence:
    """The silence of a node in start-up: the ranks that never beat, else those at its earliest part."""
    order = [*STARTUP, "step", "checkpoint", "samples", DONE]

    def where(b: dict) -> tuple:
        return order.index(b["phase"]) if b["phase"] in order else len(order), b["step"]

    first = min(beats.values(), key=lambda b: (where(b), b["time"]))
    there = [b for b in beats.values() if where(b) == where(first)]
    others = [b for b in beats.values() if b not in there]
    furthest = max(beats.values() if missing else others or there, key=lambda b: (where(b), b["time"]))
    ahead = (furthest["step"], furthest["phase"], furthest["rank"])
    if missing:
        return Silence(furthest["rank"], furthest["step"], furthest["phase"], seconds, timeout, ahead=ahead,
                       missing=missing)
    if not others:
        return Silence(first["rank"], first["step"], first["phase"], seconds, timeout)
    return Silence(first["rank"], first["step"], first["phase"], seconds, timeout,
                   behind=tuple(sorted(b["rank"] for b in there)), ahead=ahead)


def _listed(ranks: tuple[int, ...]) -> str:
    return ", ".join(map(str, ranks[:8])) + (f" and {len(ranks) - 8} more" if len(ranks) > 8 else "")


class Watchdog(threading.Thread):
    """In the launcher: watch the node's heartbeats; on a hang, collect stacks and kill the workers."""

    def __init__(self, folder: Path, *, ranks: int, timeout: float | None, workers: Callable[[], list[int]],
                 on_hang: Callable[[Silence], None], startup: float | None = None, poll: float = 1.0):
        """`timeout`: restarts.hang_timeout (None: learned from the steps); `startup`: how long a start-up may
        be silent (None: not watched)."""
        super().__init__(name="llmops-watchdog", daemon=True)
        self.folder, self.ranks, self.fixed, self.startup, self.workers, self.on_hang, self.poll = (
            folder, ranks, timeout, startup, workers, on_hang, poll)
        self.found: Silence | None = None
        self.slowest_step = self.slowest_save = 0.0
        self._last: dict[int, dict] = {}
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def timeout(self) -> float:
        if self.fixed is not None:
            return self.fixed
        return max(MIN_AUTO_TIMEOUT, 10 * self.slowest_step, 3 * self.slowest_save)

    def read(self) -> dict[int, dict]:
        beats = {}
        for path in self.folder.glob("rank-*.json"):
            try:
                b = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # replaced while read: the next poll sees it
            beats[b["rank"]] = b
        for rank, b in beats.items():  # learn how long steps and saves take
            before = self._last.get(rank)
            if before is not None and b["time"] > before["time"]:
                took = b["time"] - before["time"]
                if before["phase"] == "checkpoint":
                    self.slowest_save = max(self.slowest_save, took)
                elif before["phase"] not in STARTUP and b["step"] == before["step"] + 1:  # the first step is no pace
                    self.slowest_step = max(self.slowest_step, took)
            self._last[rank] = b
        return beats

    def check(self, now: float) -> Silence | None:
        beats = self.read()
        if not beats:
            return None  # no worker has started yet
        missing = max(0, self.ranks - len(beats))
        starting = missing > 0 or any(b["phase"] in STARTUP for b in beats.values())
        if starting and self.startup is None:
            return None  # start-up unwatched: the hang timeout applies once every rank has finished a step
        timeout = self.startup if starting else self.timeout()
        newest = max(b["time"] for b in beats.values())
        if now - newest <= timeout:
            return None
        if starting:
            return _in_startup(beats, missing, now - newest, timeout)
        working = [b for b in beats.values() if b["phase"] != DONE]
        if not working:  # finished, stuck on the way out: the worst code is the stage's
            last = max(beats.values(), key=lambda b: (b.get("code") or 0, b["time"]))
            return Silence(last["rank"], last["step"], DONE, now - newest, self.timeout(), last.get("code"))
        # The ranks behind: at the lowest step, those at the point of the oldest beat there. (A save is
        # collective: no rank beats "step" after a save that another has not entered and beaten "checkpoint" for.)
        lowest = min(b["step"] for b in working)
        first = min((b for b in working if b["step"] == lowest), key=lambda b: b["time"])
        there = [b for b in working if (b["step"], b["phase"]) == (first["step"], first["phase"])]
        others = [b for b in beats.values() if b not in there]  # finished ranks included: they got further
        if not others:
            return Silence(first["rank"], first["step"], first["phase"], now - newest, self.timeout())
        furthest = max(others, key=lambda b: (b["phase"] == DONE, b["step"], b["time"]))
        return Silence(first["rank"], first["step"], first["phase"], now - newest, self.timeout(),
                       behind=tuple(sorted(b["rank"] for b in there)),
                       ahead=(furthest["step"], furthest["phase"], furthest["rank"]))

    def run(self) -> None:
        while not self._stop.wait(self.poll):
            silence = self.check(time.time())
            if silence is not None:
                self.found = silence
                self.on_hang(silence)
                self.dump_and_kill()
                return

    def dump_and_kill(self, wait: float = 5.0) -> None:
        """Every worker writes its stacks (a stopped one is continued so that it can), and each dump is copied
        into the log under a line naming its rank, as one block with every line labelled; then all are killed."""
        import psutil

        pids = self.workers()
        ranks = {b["pid"]: b["rank"] for b in self._last.values()}  # a forked worker's environ is not its own
        asked = {}
        for pid in pids:
            try:
                state = psutil.Process(pid).status()
            except psutil.Error:
                continue
            for sig in (STACKS, signal.SIGCONT):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            asked[pid] = state == psutil.STATUS_STOPPED
        written = _settled([stacks_path(self.folder, pid) for pid in asked], wait)
        for pid, stopped in asked.items():
            rank = ranks.get(pid, "?")
            said = " (it was stopped, SIGSTOP: continued to write them)" if stopped else ""
            stacks = written.get(stacks_path(self.folder, pid), "")
            lines = [f"[rank {rank}] {line}" for line in stacks.splitlines()] or [
                f"[rank {rank}] (it wrote none within {wait:.0f}s)"]
            _write_block("\n".join([f"[llmops] stacks of rank {rank}, pid {pid}{said}:", *lines]) + "\n")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _settled(paths: list[Path], wait: float, quiet: float = 0.3) -> dict[Path, str]:
    """The text of each file once none has grown for `quiet` seconds (faulthandler writes a dump at once, but a
    worker just continued from SIGSTOP may start late), or after `wait` seconds in all."""
    def read() -> dict[Path, str]:
        texts = {}
        for path in paths:
            try:
                texts[path] = path.read_text(errors="replace")
            except OSError:
                texts[path] = ""
        return texts

    end, last, since = time.monotonic() + wait, read(), time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.05)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif all(last.values()) and time.monotonic() - since >= quiet:
            break
    return last


def _write_block(text: str) -> None:
    """Write `text` to stderr in as few writes as the system allows (one, up to the pipe's size), so that another
    process writing into the same log does not split it more than it must."""
    sys.stderr.flush()
    data = text.encode(errors="replace")
    while data:
        data = data[os.write(sys.stderr.fileno(), data):]
