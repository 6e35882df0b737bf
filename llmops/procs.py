"""Process helpers shared by the local backend and the per-node launcher, through psutil (Linux and macOS)."""

from __future__ import annotations

import ctypes
import os
import stat
import sys

import psutil

# Set to 1 by a backend that starts a node's launcher ahead of its stage (the local supervisor, while the stage
# before ends): the launcher imports and starts its warm workers' forkserver, then waits for a line on stdin,
# "go" to run the stage, anything else or the end of the input to exit 0 having started nothing.
STANDBY_ENV = "LLMOPS_STANDBY"


def standing_by() -> bool:
    """Whether this launcher was started to stand by (STANDBY_ENV): the variable, and its stdin a pipe from the
    supervisor that will say "go". The variable alone, leaked into a launch whose stdin is a terminal or
    /dev/null, must not make a launcher exit 0 having trained nothing."""
    if os.environ.get(STANDBY_ENV) != "1":
        return False
    try:
        return stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        return False


def warm_start(spec) -> bool:
    """Whether a node's launcher forks its workers from a warm forkserver (llmops_model.warm): CPU runs, unless
    LLMOPS_WARM_START=0."""
    return bool(spec.resources.cpu) and os.environ.get("LLMOPS_WARM_START", "1") != "0"


def die_with_parent(sig: int) -> None:
    """Have the kernel send `sig` to this process when the process that started it ends (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing), so that no part of a job outlives the part that manages it: a launcher
    whose supervisor was killed checkpoints and stops (SIGTERM, its preemption notice), a worker whose launcher
    was killed stops at once (SIGKILL) instead of training on beside the restart. The process must be started
    from its parent's main thread (the kernel means the thread): the supervisor, torchrun's agent and the
    forkserver all start theirs so."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ok = ctypes.CDLL(None, use_errno=True).prctl(1, sig, 0, 0, 0) == 0  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if ok and os.getppid() != parent:  # the parent ended before the request: nothing would ever send it
        os.kill(os.getpid(), sig)


def children(pid: int) -> list[int]:
    """Direct children of a process (none when it is gone)."""
    try:
        return [p.pid for p in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def workers(launcher: int) -> list[int]:
    """The training workers of a node's launcher (llmops_model.launch): its children, or when it forked
    them from a warm forkserver (llmops_model.warm), the forkserver's; never the forkserver itself or
    multiprocessing's resource tracker, which must outlive the workers' exit codes."""
    kids = {pid: _cmdline(pid) for pid in children(launcher)}
    for pid, line in kids.items():
        if "multiprocessing.forkserver" in line:
            return children(pid)
    return [pid for pid, line in kids.items() if "multiprocessing.resource_tracker" not in line]


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def descendants(pid: int) -> list[int]:
    """Children, grandchildren and so on (torchrun's workers live in sessions of their own, so signalling
    the launcher's process group does not reach them)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def started(pid: int) -> float | None:
    """When the process started (its identity together with its pid), or None when it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_ours(pid: int | None, *, started_at: float | None, token: str) -> bool:
    """Whether `pid` is still the process that was recorded: alive, started at `started_at`, and `token`
    (the run's id) in its command line. A pid read back from status.json may belong to another
    process by now (after a reboot, or on a file system shared between machines): that one is never
    signalled."""
    if not pid or started_at is None:
        return False
    try:
        p = psutil.Process(pid)
        return (abs(p.create_time() - started_at) < 0.05 and p.status() != psutil.STATUS_ZOMBIE
                and any(token in part for part in p.cmdline()))
    except psutil.Error:
        return False
