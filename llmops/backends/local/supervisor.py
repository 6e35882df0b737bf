"""The detached process that runs a local job: ``python -m llmops.backends.local.supervisor RUN_DIR``.

It runs the spec's stages in order (prepare, pretrain, then each align
stage), one process tree at a time, keeps ``status.json`` current (the run
and each stage) and decides what an exit means, following NeMo-Run's
requeue loop:

* 0: the stage finished; the next one starts. After the last: SUCCEEDED.
* 75 (checkpointed after a preemption notice), 76 (hung: the launcher's
  watchdog stopped it) or a crash: start the stage
  again from its latest checkpoint (prepare: from its finished shards), up to
  ``restarts.max_restarts`` times per stage. Every attempt logs to its own
  ``logs/<stage>.restart-<n>.log``.
* 2 (bad input): FAILED at once; restarting cannot help.
* any exit after ``llmops cancel``: CANCELLED.

A stage that already SUCCEEDED (``llmops resume`` of a run that stopped
later) is not run again. SIGTERM or SIGINT to the supervisor is a cancel.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmops.backends.local.backend import launch_command, prepare_command, signal_job
from llmops.errors import EXIT_BAD_INPUT, EXIT_HUNG, EXIT_OK, EXIT_REQUEUE
from llmops.procs import started
from llmops.runs import report
from llmops.runs.rundir import CANCELLED, FAILED, RUNNING, SUCCEEDED, RunDir


class Supervisor:
    def __init__(self, run: RunDir):
        self.run = run
        self.spec = run.read_spec()
        self.child: subprocess.Popen | None = None
        self.stage: str | None = None

    def on_signal(self, signum, frame) -> None:
        self.run.cancel_marker.touch()
        if self.child is not None and self.child.poll() is None:
            signal_job(self.child.pid, signal.SIGTERM, stage=self.stage)

    def supervise(self) -> int:
        run = self.run
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        run.update_status(state=RUNNING, started_at=run.read_status().started_at or time.time(),
                          supervisor_pid=os.getpid(), supervisor_started=started(os.getpid()), ended_at=None,
                          exit_code=None, message="")
        done = {s for s, rec in run.read_status().stages.items() if rec.get("state") == SUCCEEDED}
        for stage in self.spec.stages:
            if stage in done:
                continue
            state, code, message = self.run_stage(stage)
            if state != SUCCEEDED:
                where = f"{stage}: " if len(self.spec.stages) > 1 else ""
                return self.finish(state, code, where + message)
        return self.finish(SUCCEEDED, EXIT_OK, "finished")

    def run_stage(self, stage: str) -> tuple[str, int | None, str]:
        """Run one stage to its end, restarting it as the exit codes say; (state, exit code, message)."""
        run, max_restarts = self.run, self.spec.restarts.max_restarts
        self.stage = stage
        attempt = len(run.log_files(stage))  # a resumed stage keeps its earlier logs
        retries = 0
        record = run.read_status().stages.get(stage, {})
        run.update_stage(stage, state=RUNNING, started_at=record.get("started_at") or time.time(),
                         ended_at=None, exit_code=None, message="", restarts=record.get("restarts", 0))
        while True:
            if run.cancel_marker.exists():
                return self.end_stage(stage, CANCELLED, None, "cancelled before the stage started")
            launched = time.time()
            code = self.launch(stage, attempt)
            if code != EXIT_OK and stage != "prepare" and _finished_at(run, since=launched):
                code = EXIT_OK  # the training finished its last step; the stop only reached its shutdown
            if code == EXIT_OK:
                return self.end_stage(stage, SUCCEEDED, code, "finished")
            if run.cancel_marker.exists():
                note = "checkpointed; `llmops resume` continues it" if code == EXIT_REQUEUE else f"exit code {code}"
                return self.end_stage(stage, CANCELLED, code, f"cancelled by the user ({note})")
            if code == EXIT_BAD_INPUT:
                reason = _error_line(run.log_path(stage, attempt)) or "the job rejected its input"
                return self.end_stage(stage, FAILED, code, f"{reason} (see {run.log_path(stage, attempt)})")
            if retries >= max_restarts:
                return self.end_stage(stage, FAILED, code, f"exit code {code} after {retries} restart(s) "
                                      f"(restarts.max_restarts = {max_restarts})")
            reason = {EXIT_REQUEUE: "preempted", EXIT_HUNG: "hung (no progress within the hang timeout; stacks in "
                      f"{run.log_path(stage, attempt).name})"}.get(code, f"crashed with exit code {code}")
            retries += 1
            attempt += 1
            status = run.read_status()
            record = status.stages.get(stage, {})
            restarts = record.get("restarts", 0) + 1
            run.update_stage(stage, restarts=restarts, message=f"restart {restarts}: {reason}",
                             restart_reasons=[*record.get("restart_reasons", []), reason])
            run.update_status(restarts=status.restarts + 1, message=f"{stage}: restart {restarts}: {reason}")

    def launch(self, stage: str, attempt: int) -> int:
        run = self.run
        command = prepare_command(run.path) if stage == "prepare" else launch_command(self.spec, run.path)
        env = {**os.environ, "LLMOPS_RESTART": str(attempt), "LLMOPS_STAGE": stage}
        with open(run.log_path(stage, attempt), "ab") as log:
            self.child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, env=env)
        run.update_status(job_pgid=self.child.pid, job_started=started(self.child.pid))
        code = self.child.wait()
        run.update_status(job_pgid=None, job_started=None)
        return code

    def end_stage(self, stage: str, state: str, code: int | None, message: str) -> tuple[str, int | None, str]:
        self.run.update_stage(stage, state=state, exit_code=code, message=message, ended_at=time.time())
        return state, code, message

    def finish(self, state: str, code: int | None, message: str) -> int:
        self.run.update_status(state=state, exit_code=code, message=message, ended_at=time.time(), job_pgid=None)
        try:
            report.write(self.run)
        except Exception as exc:  # noqa: BLE001 (the report is a courtesy; the run's outcome stands)
            print(f"llmops: could not write the run report: {exc}", file=sys.stderr)
        return 0


def _finished_at(run: RunDir, *, since: float) -> bool:
    """Whether the attempt launched at `since` wrote its exit record with code 0 (rank 0 writes it after the
    last step and the final checkpoint): a cancel or a signal that arrives after that is too late to stop it."""
    try:
        record = json.loads((run.path / "last_exit.json").read_text())
    except (OSError, ValueError):
        return False
    return record.get("code") == EXIT_OK and record.get("time", 0) >= since


def _error_line(log: Path) -> str | None:
    """The job's own one-line account of why it stopped (`error: ...` in its log), if it gave one."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return None
    found = [line.split("error: ", 1)[1] for line in lines if "error: " in line]
    return found[-1] if found else None


def main() -> int:
    run = RunDir(Path(sys.argv[1]))
    try:
        return Supervisor(run).supervise()
    except Exception as exc:  # the supervisor must leave a terminal state behind
        run.update_status(state=FAILED, message=f"supervisor error: {exc}", ended_at=time.time())
        raise


if __name__ == "__main__":
    sys.exit(main())
