"""torchrun, with an exit code that says why the job stopped.

``python -m llmops_model.launch [torchrun options] RUN_DIR`` runs one torchrun
agent on this node with ``llmops_model.entrypoint RUN_DIR`` as the worker.
torchrun itself exits 1 whenever a worker fails, which hides the difference
between "crashed" and "checkpointed after a preemption notice"; backends need
that difference to decide between requeueing and giving up. This wrapper
exits 75 when the workers exited 75, 0 on success, and 1 otherwise.

Preemption notices (SIGTERM, and SIGUSR1, which Slurm sends before a time
limit with ``--signal=USR1@...``) are forwarded by this wrapper to the
workers instead of being handled by torchrun's agent: the agent would tear
the workers down after a fixed grace period and report its own signal,
losing the workers' exit codes. This way the agent keeps watching, sees the
workers checkpoint and exit 75, and the exit code says "requeue" on every
node, whether the signal reached the launcher or the workers directly. A
notice that comes before the workers exist (the launcher importing, meeting
its peers, forking) is kept for them: each takes it when it starts, trains
to its first step boundary, checkpoints and exits 75.

On several nodes the rendezvous store lives in node 0's agent. When a stop
reaches the run, node 0's workers can checkpoint and exit a moment before
another node's, and its agent exits with the store. The other agents ask that
store, while their workers are healthy, whether new nodes wait to join; the
question then fails and torchrun exits 1, "crashed", although its workers are
about to exit 75. This wrapper's c10d rendezvous answers "nobody waits" for a
grace period once the store is gone, so those workers can finish; workers
still running after it mean node 0 crashed, and the agent fails as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from llmops import procs
from llmops.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_HUNG, EXIT_OK, EXIT_REQUEUE
from llmops.procs import workers
from llmops_model import warm  # before warm.ENV is set here: only the forkserver prepares workers
from llmops_model.train import heartbeat

# torchrun's agent keeps handling these (it stops the workers and exits); preemption
# notices are this wrapper's to forward.
_AGENT_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"
_NOTICES = (signal.SIGTERM, signal.SIGUSR1)

# torchrun's c10d rendezvous, tolerant of node 0 leaving first (see the module docstring).
RDZV_BACKEND = "llmops-c10d"
# Seconds this node's workers get to exit on their own once the store is gone; torchrun's
# `--rdzv-conf store_loss_grace=S` overrides it. A checkpoint is collective, so node 0 leaves
# only after every node's workers have written theirs: what is left is their exit (seconds).
# Longer only delays the failure when node 0 crashed.
STORE_LOSS_GRACE_SECONDS = 60.0


def _forward_to_workers(signum, frame) -> None:
    """Pass a preemption notice to every worker, and keep it for workers not started yet (heartbeat.leave_notice)."""
    heartbeat.leave_notice(signum)
    for pid in workers(os.getpid()):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _create_rendezvous(params):
    """torchrun's c10d rendezvous with a grace period for a lost store (a creator for its registry)."""
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import (
        create_backend,
    )
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler

    backend, store = create_backend(params)
    grace = float(params.get("store_loss_grace", STORE_LOSS_GRACE_SECONDS))
    return _StoreLossTolerant(create_handler(store, backend, params), grace)


class _StoreLossTolerant:
    """The c10d handler, except for the one question the agent asks while its workers run."""

    def __init__(self, inner, grace: float):
        self._inner, self._grace = inner, grace
        self._store_lost_at: float | None = None

    def __getattr__(self, name: str):  # everything else is the c10d handler's
        return getattr(self._inner, name)

    def get_backend(self) -> str:
        return RDZV_BACKEND

    def num_nodes_waiting(self) -> int:
        from torch.distributed.elastic.rendezvous import RendezvousConnectionError

        if self._store_lost_at is None:
            try:
                return self._inner.num_nodes_waiting()
            except RendezvousConnectionError:
                self._store_lost_at = time.monotonic()
                print(f"[llmops] the rendezvous store (node 0's launcher) is gone; giving this node's "
                      f"workers {self._grace:.0f}s to finish", file=sys.stderr, flush=True)
        # Gone stays gone: asking again only fills the log with the store client's warnings.
        if time.monotonic() - self._store_lost_at > self._grace:
            raise RendezvousConnectionError(
                f"the rendezvous store is gone and this node's workers still run {self._grace:.0f}s later: "
                "node 0 stopped without them (see its log)")
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m llmops_model.launch [torchrun options] RUN_DIR", file=sys.stderr)
        return 2
    return run_agent(argv[:-1], ["-m", "llmops_model.entrypoint", argv[-1]], run_dir=argv[-1])


def _spec(run_dir: str | None):
    """The run's spec, or None (the workers report a bad spec; the launcher falls back to its defaults)."""
    if run_dir is None:
        return None
    from llmops.runs.rundir import RunDir

    try:
        return RunDir(Path(run_dir)).read_spec()
    except Exception:  # noqa: BLE001
        return None


def _watch(args, run_dir: str | None, spec, folder: Path) -> heartbeat.Watchdog:
    """A watchdog over this node's workers' heartbeats in `folder`."""
    from torch.distributed.run import determine_local_world_size

    ranks = determine_local_world_size(str(args.nproc_per_node))  # "4", or "gpu"/"auto"
    stage = os.environ.get("LLMOPS_STAGE", "pretrain")
    restart = int(os.environ.get("LLMOPS_RESTART", "0"))  # the report counts the hang against this attempt

    def on_hang(silence: heartbeat.Silence) -> None:
        if silence.finished:  # nothing is lost: the stage's last checkpoint is complete
            print(f"[llmops] {silence.describe()}; their Python stacks follow, then they are stopped",
                  file=sys.stderr, flush=True)
            return
        print(f"[llmops] hung: {silence.describe()}; every rank's Python stacks follow, then the workers are "
              "stopped and the stage restarts from its latest complete checkpoint", file=sys.stderr, flush=True)
        if run_dir is not None:
            events = Path(run_dir) / "stages" / stage / "events.jsonl"
            with open(events, "a") as f:
                f.write(json.dumps({"event": "hung", "time": time.time(), "restart": restart, "rank": silence.rank,
                                    "step": silence.step, "phase": silence.phase, "silent": silence.seconds,
                                    "timeout": silence.timeout, "starting": silence.starting}) + "\n")

    # restarts.hang_timeout unset: learned from the steps (llmops_model.train.heartbeat). A start-up may be silent
    # as long as a collective may wait (parts of it take long on a large job), and no less than a step.
    hang = spec.restarts.hang_timeout if spec else None
    startup = max(spec.restarts.collective_timeout, hang or 0.0) if spec else None
    return heartbeat.Watchdog(folder, ranks=ranks, timeout=hang, startup=startup,
                              workers=lambda: workers(os.getpid()), on_hang=on_hang)


def _without_traceback(record: logging.LogRecord) -> bool:
    record.exc_info = record.exc_text = None
    return True


@contextlib.contextmanager
def _forked_workers(run_dir: str, released: float | None):
    """Within: torchrun starts its workers as forks of the forkserver (_start_forkserver).

    torchrun launches a command in fresh interpreters and a function through multiprocessing; its run()
    decides the rendezvous and then calls elastic_launch(config, entrypoint=the command). The function it gets
    here instead is llmops_model.warm.worker, which runs the same entrypoint in a fork. `released`: when a
    launcher that stood by was told to go (its workers' start-up counts from then)."""
    import torch.distributed.run as torchrun

    launch = torchrun.elastic_launch

    def elastic_launch(config, entrypoint):
        config.start_method = "forkserver"
        return lambda *_command: launch(config, entrypoint=warm.worker)(run_dir, released)

    # For a function's worker that exits non-zero torchrun logs its own exception's traceback under the
    # one line it writes for a command's ("failed (exitcode: 75) local_rank: ..."): the line is enough.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_without_traceback)
    torchrun.elastic_launch = elastic_launch
    try:
        yield
    finally:
        torchrun.elastic_launch = launch


def _start_forkserver(run_dir: str) -> None:
    """Start the forkserver now, so that it imports torch and Megatron for the workers while this process
    imports torchrun and meets the other nodes; it keeps the environment it starts with."""
    import multiprocessing
    from multiprocessing import forkserver

    os.environ[warm.ENV] = run_dir
    multiprocessing.set_forkserver_preload(["llmops_model.warm"])
    forkserver.ensure_running()


def run_agent(torchrun_argv: list[str], worker: list[str], *, run_dir: str | None = None) -> int:
    """One torchrun agent running ``worker`` (a script or ``-m module``, with its arguments)."""
    # Newer torchrun reads --signals-to-handle (default from PET_SIGNALS_TO_HANDLE) and exports
    # it as TORCHELASTIC_SIGNALS_TO_HANDLE; older ones read only the latter.
    os.environ["PET_SIGNALS_TO_HANDLE"] = os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = _AGENT_SIGNALS
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    beats = Path(tempfile.mkdtemp(prefix="llmops-heartbeats-"))  # a fresh folder each launch
    os.environ[heartbeat.ENV] = str(beats)
    for sig in _NOTICES:  # after the folder: a notice is kept there for workers not started yet
        signal.signal(sig, _forward_to_workers)
    # A supervisor (or srun's step) that ends takes the job with it: its preemption notice, so the workers
    # checkpoint and stop rather than train on unmanaged beside a resumed run.
    procs.die_with_parent(signal.SIGTERM)
    spec = _spec(run_dir)
    warm_start = spec is not None and procs.warm_start(spec)  # workers forked from llmops_model.warm
    if warm_start:
        _start_forkserver(run_dir)
    released = None

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import (
        RendezvousError,
        rendezvous_handler_registry,
    )
    from torch.distributed.run import parse_args, run

    args = parse_args([*torchrun_argv, *worker])
    if procs.standing_by():  # imported, the forkserver preloading: wait for the stage
        print("[llmops] standing by: this stage starts when the one before it ends", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip() != "go":  # the stage before failed, or the run was cancelled
            shutil.rmtree(os.environ.pop(heartbeat.ENV), ignore_errors=True)
            return EXIT_OK
        released = time.time()
    if args.rdzv_backend == "c10d" and not args.standalone:  # standalone: one node, its own store
        rendezvous_handler_registry.register(RDZV_BACKEND, _create_rendezvous)
        args.rdzv_backend = RDZV_BACKEND
    watchdog = _watch(args, run_dir, spec, beats)
    watchdog.start()
    try:
        if warm_start:
            with _forked_workers(run_dir, released):
                run(args)
        else:
            run(args)
    except ChildFailedError as exc:
        if watchdog.found is not None:
            return watchdog.found.code if watchdog.found.finished else EXIT_HUNG
        codes = {f.exitcode for f in exc.failures.values()}
        # torchrun tears the other workers down with SIGTERM as soon as the first one exits,
        # so a clean preemption can show up as 75 next to -SIGTERM.
        if EXIT_REQUEUE in codes and codes <= {EXIT_REQUEUE, -signal.SIGTERM}:
            return EXIT_REQUEUE
        # Bad input (the spec or the data) is the same on every restart: say so, do not retry.
        if EXIT_BAD_INPUT in codes and codes <= {EXIT_BAD_INPUT, -signal.SIGTERM}:
            return EXIT_BAD_INPUT
        print(f"[llmops] workers failed with exit codes {sorted(codes)}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except SignalException as exc:
        print(f"[llmops] launcher stopped by signal {exc.sigval.name}", file=sys.stderr, flush=True)
        return 128 + int(exc.sigval)
    except RendezvousError as exc:  # a crash of the node that holds the store, or one that never came
        print(f"[llmops] rendezvous failed ({type(exc).__name__}): {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        watchdog.stop()
        shutil.rmtree(os.environ.pop(heartbeat.ENV, ""), ignore_errors=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
