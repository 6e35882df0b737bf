"""torchrun, with an exit code that says why the job stopped.

``python -m llmops_model.launch [torchrun options] RUN_DIR`` runs one torchrun
agent on this node with ``llmops_model.entrypoint RUN_DIR`` as the worker.
torchrun itself exits 1 whenever a worker fails, which hides the difference
between "crashed" and "checkpointed after a preemption notice"; backends need
that difference to decide between requeueing and giving up. This wrapper
exits 75 when every failed worker exited 75 (or the agent was signalled and
the workers reported a preemption checkpoint), 0 on success, and 1 otherwise.

It also asks torchrun to forward SIGUSR1, the signal Slurm sends before a
time limit (``--signal=USR1@...``), to the workers.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from llmops.errors import EXIT_FAILED, EXIT_OK, EXIT_REQUEUE

_FORWARDED = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def _preempted_since(run_dir: Path, started: float) -> bool:
    try:
        info = json.loads((run_dir / "last_exit.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("code") == EXIT_REQUEUE and info.get("time", 0) >= started


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m llmops_model.launch [torchrun options] RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[-1])
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", _FORWARDED)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args([*argv[:-1], "-m", "llmops_model.entrypoint", str(run_dir)])
    started = time.time()
    try:
        run(args)
    except ChildFailedError as exc:
        codes = {f.exitcode for f in exc.failures.values()}
        # torchrun tears the other workers down with SIGTERM as soon as the first one exits,
        # so a clean preemption can show up as 75 next to -SIGTERM.
        if EXIT_REQUEUE in codes and codes <= {EXIT_REQUEUE, -signal.SIGTERM}:
            return EXIT_REQUEUE
        print(f"[llmops] workers failed with exit codes {sorted(codes)}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except SignalException as exc:
        if _preempted_since(run_dir, started):
            return EXIT_REQUEUE
        print(f"[llmops] launcher stopped by signal {exc.sigval.name}", file=sys.stderr, flush=True)
        return 128 + int(exc.sigval)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
