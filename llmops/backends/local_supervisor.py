"""The detached process that runs a local job: ``python -m llmops.backends.local_supervisor RUN_DIR``.

It launches the per-node launcher, writes ``status.json``, and decides what
an exit means, following NeMo-Run's requeue loop:

* 0: the run finished; SUCCEEDED.
* 75 (checkpointed after a preemption notice) or a crash: start again from
  the latest checkpoint, up to ``restarts.max_restarts`` times, each attempt
  logging to its own ``<stage>.restart-<n>.log``.
* 2 (bad input): FAILED at once; restarting cannot help.
* any exit after ``llmops cancel``: CANCELLED.

SIGTERM or SIGINT to the supervisor is treated as a cancel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmops.backends.local import launch_command, local_stage, signal_job
from llmops.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_REQUEUE
from llmops.rundir import CANCELLED, FAILED, RUNNING, SUCCEEDED, RunDir


def supervise(run: RunDir) -> int:
    spec = run.read_spec()
    status = run.read_status()
    restart = status.restarts
    stage = local_stage(spec)  # one training stage per local run for now
    child: subprocess.Popen | None = None

    def on_signal(signum, frame):
        run.cancel_marker.touch()
        if child is not None and child.poll() is None:
            signal_job(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run.update_status(state=RUNNING, started_at=time.time(), supervisor_pid=os.getpid(), ended_at=None,
                      exit_code=None, message="", stage=stage)
    while True:
        if run.cancel_marker.exists():
            return _finish(run, CANCELLED, None, "cancelled before the job started")
        log = open(run.log_path(stage, restart), "ab")
        child = subprocess.Popen(
            launch_command(spec, run), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "LLMOPS_RESTART": str(restart), "LLMOPS_STAGE": stage},
        )
        log.close()
        run.update_status(job_pgid=child.pid, restarts=restart)
        code = child.wait()
        if run.cancel_marker.exists():
            note = "checkpointed; `llmops resume` continues it" if code == EXIT_REQUEUE else f"exit code {code}"
            return _finish(run, CANCELLED, code, f"cancelled by the user ({note})")
        if code == EXIT_OK:
            return _finish(run, SUCCEEDED, code, "finished")
        if code == EXIT_BAD_INPUT:
            return _finish(run, FAILED, code, "the job rejected its input; see the log")
        if restart >= spec.restarts.max_restarts:
            return _finish(run, FAILED, code, f"exit code {code} after {restart} restart(s) "
                           f"(restarts.max_restarts = {spec.restarts.max_restarts})")
        reason = "preempted" if code == EXIT_REQUEUE else f"crashed with exit code {code}"
        restart += 1
        run.update_status(restarts=restart, message=f"restart {restart}: {reason}")


def _finish(run: RunDir, state: str, code: int | None, message: str) -> int:
    run.update_status(state=state, exit_code=code, message=message, ended_at=time.time(), job_pgid=None)
    return 0


def main() -> int:
    run = RunDir(Path(sys.argv[1]))
    try:
        return supervise(run)
    except Exception as exc:  # the supervisor must leave a terminal state behind
        run.update_status(state=FAILED, message=f"supervisor error: {exc}", ended_at=time.time())
        raise


if __name__ == "__main__":
    sys.exit(main())
