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
node, whether the signal reached the launcher or the workers directly.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from llmops.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_REQUEUE
from llmops.procs import children

# torchrun's agent keeps handling these (it stops the workers and exits); preemption
# notices are this wrapper's to forward.
_AGENT_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"
_NOTICES = (signal.SIGTERM, signal.SIGUSR1)


def _forward_to_workers(signum, frame) -> None:
    """Pass a preemption notice to every worker (this process's children)."""
    for pid in children(os.getpid()):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m llmops_model.launch [torchrun options] RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[-1])
    # Newer torchrun reads --signals-to-handle (default from PET_SIGNALS_TO_HANDLE) and exports
    # it as TORCHELASTIC_SIGNALS_TO_HANDLE; older ones read only the latter.
    os.environ["PET_SIGNALS_TO_HANDLE"] = os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = _AGENT_SIGNALS
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for sig in _NOTICES:
        signal.signal(sig, _forward_to_workers)

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args([*argv[:-1], "-m", "llmops_model.entrypoint", str(run_dir)])
    try:
        run(args)
    except ChildFailedError as exc:
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
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
