"""A warm start: a node's CPU workers forked from one process that has already imported torch and Megatron.

Every worker imports torch and Megatron-Core before it trains: 5.3 s on one core, and four workers
starting together on a two-core machine take 12.2 s (measured, torch 2.13, megatron-core 0.16), on every
stage and every restart. For CPU runs the launcher (llmops_model.launch) starts its workers through
torchrun's function entrypoint with multiprocessing's forkserver and this module preloaded: one
single-threaded process, the forkserver, imports everything once and each worker is a fork of it, so a stage
starts in about the time of one import. The workers are torchrun's own processes, as before: it watches,
signals and reaps them by pid.

GPU runs keep one fresh interpreter per worker: importing Transformer Engine can touch CUDA, which a forked
child cannot use afterwards, and a GPU node has the cores to import in parallel.

A forked worker is made to look like one started as ``python -m llmops_model.entrypoint RUN_DIR``: its own
session (a signal to the launcher's process group reaches the launcher, which forwards it), default signal
handlers, and that command line as its process title (with its rank, which ``ps`` cannot read from its
environment: a fork's /proc environ is the forkserver's).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from llmops import procs

if TYPE_CHECKING:
    import psutil

ENV = "LLMOPS_WARM_RUN_DIR"  # the run whose workers the forkserver prepares for, set by the launcher
# Signals for the launcher's process group that the forkserver must outlive: the launcher forwards
# preemption notices to the workers itself, and a forkserver gone takes the workers' exit codes with it.
_SHIELDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGQUIT)


# When the forkserver started, for its forks: its imports are their start-up (the run report's, through
# llmops_model.train.loop.process_started).
STARTED_ENV = "LLMOPS_PROCESS_STARTED"


def _preload() -> None:
    """In the forkserver, as it imports this module: prepare for the run's workers."""
    import psutil

    from llmops.runs.rundir import RunDir
    from llmops_model import entrypoint

    os.environ[STARTED_ENV] = str(psutil.Process().create_time())
    for sig in _SHIELDED:
        signal.signal(sig, signal.SIG_IGN)
    # Ends with the launcher that started it, and its workers with it (each dies with its parent,
    # llmops_model.entrypoint): multiprocessing's own end of a forkserver, at the launcher's pipe closing,
    # never came, as every worker holds that pipe open too.
    procs.die_with_parent(signal.SIGKILL)
    spec = RunDir(Path(os.environ[ENV])).read_spec()
    entrypoint.prepare(spec)
    from llmops_model.hf import samples

    samples.preload(spec)  # rank 0's, after the training: shared by the forks, unused by the other ranks


def worker(run_dir: str, released: float | None = None) -> int:
    """A worker's life in a fork: look like ``python -m llmops_model.entrypoint RUN_DIR``, then be it.
    `released`: when a launcher that stood by (llmops.procs.STANDBY_ENV) started the stage."""
    os.setsid()
    if released is not None:  # the forkserver imported while the stage before ended: not this stage's start-up
        os.environ[STARTED_ENV] = str(released)
    for sig in _SHIELDED:
        signal.signal(sig, signal.SIG_DFL)
    # The title goes where the forkserver's long command line was, never over the environment block that
    # /proc/PID/environ shows (the forkserver's, hence the job's, less the per-rank variables).
    os.environ.setdefault("SPT_NOENV", "1")
    try:
        import setproctitle

        setproctitle.setproctitle(title(run_dir, int(os.environ.get("RANK", "0"))))
    except ImportError:
        pass
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # the forkserver's OpenMP read it before torchrun set it
        import torch

        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    from llmops_model import entrypoint

    sys.argv = [entrypoint.__file__, run_dir]
    code = entrypoint.main([run_dir])
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        raise SystemExit(code)  # the process's exit code, as a fresh interpreter's would be
    return code


# The forkserver imports this module with ENV set; the launcher imports it (at its own import) before it sets ENV.
def title(run_dir: str, rank: int) -> str:
    return f"python -m llmops_model.entrypoint {run_dir} (rank {rank})"


def find_workers(run_dir: Path) -> dict[int, psutil.Process]:
    """The training workers of a run on this machine by rank, forked (titled) or started as a command (the
    rank in their environment); for tests, benchmarks and people who look."""
    import psutil

    key, found = str(Path(run_dir).resolve()), {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            line = " ".join(p.info["cmdline"] or [])
            if f"llmops_model.entrypoint {key}" not in line:
                continue
            parent = p.parent()
            if parent is not None and " ".join(parent.cmdline()) == line:
                continue  # a worker's own fork (an asynchronous checkpoint writer)
            titled = re.search(r"\(rank (\d+)\)", line)
            found[int(titled.group(1)) if titled else int(p.environ()["RANK"])] = p
        except (psutil.Error, KeyError, ValueError):
            continue
    return found


if os.environ.get(ENV):
    try:
        _preload()
    except Exception as exc:  # noqa: BLE001 (the forkserver drops a preload's ImportError silently)
        # Each worker then imports for itself, and meets and reports the same problem.
        print(f"[llmops] warm start: preparing the workers failed ({type(exc).__name__}: {exc}); "
              "each worker imports on its own", file=sys.stderr, flush=True)
