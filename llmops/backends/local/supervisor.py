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

A process of the job that nothing else watches (the launcher, its forkserver, data preparation and its workers;
llmops.backends.local.stopped) and that stays stopped for ``restarts.hang_timeout`` is a hang: the supervisor
says so in the stage log, kills the job and restarts the stage, as after the watchdog's exit 76.

A stage that already SUCCEEDED (``llmops resume`` of a run that stopped
later) is not run again. SIGTERM or SIGINT to the supervisor is a cancel.

On CPU runs with the warm start (llmops_model.warm) the next training
stage's launcher is started ahead, standing by: once data preparation is past
its clean phase, and once a training stage is within STANDBY_LEAD seconds of
its last step. It imports torch and starts its forkserver, which imports
Megatron, on cores the stage leaves idle, then waits for a "go" on its stdin;
the stage starts with its workers forked at once. It keeps standing by while
the stage before restarts, and is told to exit, its log removed, when the
stage it stood by for does not run (a failure, a cancel).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llmops.backends.local import stopped
from llmops.backends.local.backend import SUPERVISOR_STOPPED, launch_command, prepare_command, signal_job
from llmops.errors import EXIT_BAD_INPUT, EXIT_HUNG, EXIT_OK, EXIT_REQUEUE
from llmops.prepare.pipeline import clean_done
from llmops.procs import STANDBY_ENV, started, warm_start
from llmops.runs import report
from llmops.runs.rundir import CANCELLED, FAILED, RUNNING, SUCCEEDED, RunDir, why_restarted

# Seconds before a training stage's last step at which the next stage's launcher starts. Its imports take
# 4.4 s on an idle core and about 9 s beside a training stage on two cores, which leaves ~17% of them idle
# (gloo waits); started 4 s ahead it was still importing when the stage ended (the tiny pipeline 51.5 s),
# 7 or 12 s ahead it was ready (48.3 s, 48.2 s). Bounded, so that it does not wait through a long stage.
STANDBY_LEAD = 10.0


@dataclass
class _Standby:
    """A launcher started ahead of its stage (llmops.procs.STANDBY_ENV), waiting for its "go"."""

    stage: str
    attempt: int
    proc: subprocess.Popen


class Supervisor:
    def __init__(self, run: RunDir):
        self.run = run
        self.spec = run.read_spec()
        self.child: subprocess.Popen | None = None
        self.stage: str | None = None
        self.next_stage: str | None = None  # the stage after this one, for a launcher standing by
        self.standby: _Standby | None = None
        self.message = ""  # the run's message as this supervisor last wrote it
        self.stopped: stopped.Found | None = None  # why the last attempt was stopped, if its job was found stopped

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
        todo = [s for s in self.spec.stages if s not in done]
        for stage, following in zip(todo, [*todo[1:], None]):
            self.next_stage = following
            state, code, message = self.run_stage(stage)
            if state != SUCCEEDED:
                where = f"{stage}: " if len(self.spec.stages) > 1 else ""
                return self.finish(state, code, where + message)
        return self.finish(SUCCEEDED, EXIT_OK, "finished")

    def run_stage(self, stage: str) -> tuple[str, int | None, str]:
        """Run one stage to its end, restarting it as the exit codes say; (state, exit code, message)."""
        run, max_restarts = self.run, self.spec.restarts.max_restarts
        self.stage = stage
        # A resumed stage keeps its earlier logs; a launcher standing by for it has written the next one.
        attempt = self.standby.attempt if self.standby and self.standby.stage == stage else len(run.log_files(stage))
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
            reason = {EXIT_REQUEUE: "preempted", EXIT_HUNG: _hang(run, stage, attempt)}.get(
                code, f"crashed with exit code {code}")
            if self.stopped is not None:
                reason = (f"hung ({self.stopped.role} stayed stopped for the hang timeout; see "
                          f"{run.log_path(stage, attempt).name})")
            retries += 1
            attempt += 1
            status = run.read_status()
            record = status.stages.get(stage, {})
            restarts = record.get("restarts", 0) + 1
            run.update_stage(stage, restarts=restarts, message=f"restart {restarts}: {reason}",
                             why=why_restarted(record, attempt, reason))
            self.message = f"{stage}: restart {restarts}: {reason}"
            run.update_status(restarts=status.restarts + 1, message=self.message)

    def launch(self, stage: str, attempt: int) -> int:
        run = self.run
        ahead = self._released(stage, attempt)
        self.child = ahead or self._start(stage, attempt)
        run.update_status(job_pgid=self.child.pid, job_started=started(self.child.pid))
        if run.cancel_marker.exists():  # a cancel that read the status before the pid was there (backend.cancel)
            signal_job(self.child.pid, signal.SIGTERM, stage=stage)
        run.update_stage(stage, launched_ahead=ahead is not None)
        launched = time.time()
        following = self.next_stage if self.next_stage in self.spec.training_stages and warm_start(self.spec) else None
        pace: dict = {}
        self.stopped = None
        watch = stopped.Watch(self.child.pid, prepare=stage == "prepare",
                              timeout=self.spec.restarts.hang_timeout or stopped.DEFAULT_TIMEOUT)
        while True:
            try:
                code = self.child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if watch.due():
                self._continued()
                found = watch.check()
                if found is not None:
                    code = self._stop_stopped(stage, attempt, found, launched=launched)
                    break
            if following and self.standby is None and self._winding_down(stage, since=launched, pace=pace):
                attempt_ahead = len(run.log_files(following))
                try:
                    ahead = self._start(following, attempt_ahead, standby=True)
                except OSError as exc:  # a head start only: the stage will start as usual
                    print(f"llmops: could not start the next stage's launcher ahead: {exc}", file=sys.stderr)
                    following = None
                    continue
                self.standby = _Standby(following, attempt_ahead, ahead)
        run.update_status(job_pgid=None, job_started=None)
        return code

    def _stop_stopped(self, stage: str, attempt: int, found: stopped.Found, *, launched: float) -> int:
        """Kill the job whose process `found` stayed stopped, saying so in the stage log and events; EXIT_HUNG."""
        self.stopped = found
        what, then = (("the preparation cannot go on", "restarts from its finished shards") if stage == "prepare" else
                      ("nothing collects the workers' exits", "restarts from its latest complete checkpoint"))
        finished = stage != "prepare" and _finished_at(self.run, since=launched)
        if finished:
            then = "has finished: its last step and final checkpoint are complete"
        line = (f"[llmops] hung: {found.role} (pid {found.pid}) has been stopped for {found.seconds:.0f}s (SIGSTOP, or "
                f"a debugger holds it; hang timeout {found.timeout:.0f}s): {what}; the job is killed and the stage "
                f"{then}\n")
        with open(self.run.log_path(stage, attempt), "a") as log:
            log.write(line)
        if not finished:  # what the report marks the restart with
            events = self.run.stage_dir(stage)
            events.mkdir(parents=True, exist_ok=True)
            with open(events / "events.jsonl", "a") as f:
                f.write(json.dumps({"event": "hung", "time": time.time(), "restart": attempt, "stopped": found.role,
                                    "silent": found.seconds, "timeout": found.timeout}) + "\n")
        signal_job(self.child.pid, signal.SIGKILL, stage=stage)  # the whole tree: a stopped process dies of it too
        self.child.wait()
        return EXIT_HUNG

    def _continued(self) -> None:
        """The note `llmops status` left in the run's message while this supervisor was stopped is stale now."""
        if self.run.read_status().message.startswith(SUPERVISOR_STOPPED):
            self.run.update_status(message=self.message)

    def _winding_down(self, stage: str, *, since: float, pace: dict) -> bool:
        """Whether the next stage's launcher may start: data preparation past its clean phase (the rest leaves
        cores idle), a training stage within STANDBY_LEAD seconds of its last step or past it. The time left is
        the steps left at the pace seen since this attempt's first logged step (evaluations and saves included),
        from the stage's progress.json; `pace` keeps that first step and its time."""
        if stage == "prepare":
            return clean_done(self.spec.prepare)
        try:
            row = json.loads((self.run.stage_dir(stage) / "progress.json").read_text())
            if row["time"] >= since:
                first_step, first_time = pace.setdefault("first", (row["step"], row["time"]))
                if row["step"] > first_step:
                    per_step = (row["time"] - first_time) / (row["step"] - first_step)
                    if (row["steps"] - row["step"]) * per_step < STANDBY_LEAD:
                        return True
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return _finished_at(self.run, since=since)

    def _start(self, stage: str, attempt: int, *, standby: bool = False) -> subprocess.Popen:
        run = self.run
        command = prepare_command(run.path) if stage == "prepare" else launch_command(self.spec, run.path)
        env = {k: v for k, v in os.environ.items() if k != STANDBY_ENV}
        env.update(LLMOPS_RESTART=str(attempt), LLMOPS_STAGE=stage)
        if standby:
            env[STANDBY_ENV] = "1"
        with open(run.log_path(stage, attempt), "ab") as log:
            return subprocess.Popen(command, stdin=subprocess.PIPE if standby else subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def _released(self, stage: str, attempt: int) -> subprocess.Popen | None:
        """The launcher standing by for this attempt of `stage`, told to go; None when there is none. One for a
        later stage (the stage before restarting) keeps standing by."""
        standby = self.standby
        if standby is None or standby.stage != stage:
            return None
        self.standby = None
        if standby.attempt == attempt and standby.proc.poll() is None:
            try:
                standby.proc.stdin.write(b"go\n")
                standby.proc.stdin.close()
                return standby.proc
            except OSError:  # it died while it stood by: start one afresh
                pass
        self._dismiss(standby)
        return None

    def dismiss_standby(self) -> None:
        if self.standby is not None:
            self._dismiss(self.standby)
            self.standby = None

    def _dismiss(self, standby: _Standby) -> None:
        """Tell a launcher standing by to exit (end of its stdin), wait for it, and remove the log it began, unless
        it ended otherwise than dismissed (it died standing by, or had to be killed): that log is kept, the only
        account of why; a launcher started afresh for the same attempt writes on after it."""
        try:
            standby.proc.stdin.close()
        except OSError:
            pass
        try:
            standby.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(standby.proc.pid, signal.SIGKILL)  # its own session: the launcher and its forkserver
            standby.proc.wait()
        if standby.proc.returncode == 0:
            self.run.log_path(standby.stage, standby.attempt).unlink(missing_ok=True)

    def stop_job(self, grace: float = 120.0) -> None:
        """Stop the stage's launcher as a cancel does (its workers checkpoint and exit), killed after `grace`
        seconds; for when this supervisor cannot go on, so that nothing it started outlives it unwatched."""
        child = self.child
        if child is None or child.poll() is not None:
            return
        signal_job(child.pid, signal.SIGTERM, stage=self.stage)
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_job(child.pid, signal.SIGKILL, stage=self.stage)
            child.wait()

    def end_stage(self, stage: str, state: str, code: int | None, message: str) -> tuple[str, int | None, str]:
        self.run.update_stage(stage, state=state, exit_code=code, message=message, ended_at=time.time())
        return state, code, message

    def finish(self, state: str, code: int | None, message: str) -> int:
        self.dismiss_standby()
        self.run.update_status(state=state, exit_code=code, message=message, ended_at=time.time(), job_pgid=None)
        try:
            report.write(self.run)
        except Exception as exc:  # noqa: BLE001 (the report is a courtesy; the run's outcome stands)
            print(f"llmops: could not write the run report: {exc}", file=sys.stderr)
        else:
            self.send_report()
        return 0

    def send_report(self) -> None:
        """The final report to the run's trackers, if the spec names any (within their bounded time)."""
        if self.spec.tracking is None:
            return
        from llmops_model.train import tracking

        def say(line: str) -> None:
            print(f"[llmops] {line}", flush=True)

        try:
            tracking.log_report(self.spec, self.run.path, info=say)
        except Exception as exc:  # noqa: BLE001 (a missing client or a tracker that is down: the run stands)
            print(f"llmops: the run report was not sent to the trackers: {exc}", file=sys.stderr)


def _finished_at(run: RunDir, *, since: float) -> bool:
    """Whether the attempt launched at `since` wrote its exit record with code 0 (rank 0 writes it after the
    last step and the final checkpoint): a cancel or a signal that arrives after that is too late to stop it."""
    try:
        record = json.loads((run.path / "last_exit.json").read_text())
    except (OSError, ValueError):
        return False
    return record.get("code") == EXIT_OK and record.get("time", 0) >= since


def _hang(run: RunDir, stage: str, attempt: int) -> str:
    """Why the launcher's watchdog stopped `attempt`, as a restart's reason: in start-up (its `hung` event says so;
    the bound was then restarts.collective_timeout), or later."""
    log = run.log_path(stage, attempt).name
    try:
        lines = (run.stage_dir(stage) / "events.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "hung" and event.get("restart") == attempt:
            if event.get("starting"):
                return f"hung in start-up (no progress within the start-up timeout; stacks in {log})"
            break
    return f"hung (no progress within the hang timeout; stacks in {log})"


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
    supervisor = None
    try:
        supervisor = Supervisor(run)
        return supervisor.supervise()
    except Exception as exc:  # the supervisor must leave a terminal state behind, and no job running unwatched
        if supervisor is not None:
            supervisor.dismiss_standby()
            supervisor.stop_job()
        run.update_status(state=FAILED, message=f"supervisor error: {exc}", ended_at=time.time(), job_pgid=None)
        raise


if __name__ == "__main__":
    sys.exit(main())
