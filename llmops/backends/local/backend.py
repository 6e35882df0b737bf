"""The local backend: the run's stages on this machine, watched by a detached supervisor.

``submit`` starts :mod:`llmops.backends.local.supervisor` in its own session,
so the run outlives the terminal that started it; the supervisor runs the
stages in order (data preparation as ``llmops prepare``, training stages as
torchrun), restarts a stage after a crash or preemption (up to
``restarts.max_restarts``) and keeps ``status.json`` current.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmops.backends.base import Backend, Request
from llmops.backends.local.stopped import is_stopped
from llmops.errors import Problem, UserError
from llmops.procs import descendants, is_ours, started, workers
from llmops.runs.logs import follow_logs
from llmops.runs.rundir import TERMINAL, RunDir
from llmops.spec.run import RunSpec


def first_pending(run: RunDir, spec: RunSpec) -> str:
    """The first stage that has not succeeded yet (where a started or resumed run begins)."""
    done = run.read_status().stages
    return next((s for s in spec.stages if done.get(s, {}).get("state") != "SUCCEEDED"), spec.stages[-1])


def prepare_command(run_path: Path) -> list[str]:
    """The data-preparation stage: `llmops prepare` on the resolved spec (workers: one per core)."""
    return [sys.executable, "-m", "llmops", "prepare", "--resolved", str(run_path.resolve() / "spec.yaml")]


def launch_command(spec: RunSpec, run_path: Path) -> list[str]:
    """The per-node launcher (torchrun with exit-code mapping) for a single-node run."""
    return [
        sys.executable, "-m", "llmops_model.launch",
        "--standalone", "--nnodes", "1", "--nproc-per-node", str(spec.resources.procs_per_node),
        str(run_path.resolve()),
    ]


@dataclass
class LocalRequest(Request):
    command: list[str]
    env: dict[str, str]

    def files(self) -> dict[str, str]:
        env = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(self.env.items()))
        script = (f"#!/usr/bin/env bash\n# llmops local run {self.run_id}: one torchrun agent on this machine.\n"
                  f"set -euo pipefail\n{env}exec {shlex.join(self.command)}\n")
        return {"launch.sh": script}


def job_env(spec: RunSpec) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}
    if spec.resources.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run stays on the CPU even on a GPU machine
        # Each process gets its share of the cores; oversubscription slows gloo collectives badly.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // spec.resources.procs_per_node))
    return env


class LocalBackend(Backend):
    name = "local"

    def validate(self, spec: RunSpec) -> list[Problem]:
        if spec.resources.nodes != 1:
            return [Problem("resources.nodes", spec.resources.nodes, "is more than the one node the local backend "
                            "runs on", "set resources.nodes: 1, or use backend: slurm or k8s for multi-node runs")]
        return []

    def dry_run(self, spec: RunSpec, run_path: Path) -> LocalRequest:
        if spec.training_stages and not spec.resources.cpu:
            _check_gpus(spec.resources.gpus_per_node)
        return LocalRequest(backend=self.name, spec=spec, run_path=run_path,
                            command=launch_command(spec, run_path), env=job_env(spec))

    def submit(self, request: LocalRequest, run: RunDir) -> None:
        log = open(run.logs / "supervisor.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmops.backends.local.supervisor", str(run.path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            # The secrets live in the supervisor's environment only, which its stages inherit.
            start_new_session=True, env={**os.environ, **request.env, **request.secrets},
        )
        log.close()
        run.update_status(supervisor_pid=proc.pid, supervisor_started=started(proc.pid), job_id=str(proc.pid),
                          stage=first_pending(run, request.spec))

    def refresh(self, run: RunDir) -> None:
        """A run whose supervisor is gone has ended, once nothing of its job runs any more: a launcher that
        outlives its supervisor is checkpointing and stopping (llmops.procs.die_with_parent), and until it has,
        the run is not stopped (a resume then would start a second trainer beside it)."""
        status = run.read_status()
        if status.state in TERMINAL or not status.supervisor_pid:
            return
        if _supervisor_alive(run, status):
            _note_stopped(run, status)
            return
        if is_ours(status.job_pgid, started_at=status.job_started, token=run.id):
            if not status.message.startswith(_UNSUPERVISED):
                run.update_status(message=f"{_UNSUPERVISED} (launcher pid {status.job_pgid}): it is stopping at a "
                                  f"checkpoint; `llmops cancel {run.id}` stops it, `--force` at once")
            return
        cancelled = run.cancel_marker.exists()
        state = "CANCELLED" if cancelled else "FAILED"
        message = ("cancelled by the user after its supervisor process was gone" if cancelled else
                   "the supervisor process is gone (killed, or the machine restarted; its log: logs/supervisor.log); "
                   "resume the run with `llmops resume`")
        if status.stage and status.stages.get(status.stage, {}).get("state") not in TERMINAL:
            run.update_stage(status.stage, state=state, message=message, ended_at=time.time())
        run.update_status(state=state, message=message, ended_at=time.time(), job_pgid=None)

    def logs(self, run: RunDir, *, follow: bool, stage: str = "pretrain", first_restart: int = 0) -> Iterator[str]:
        yield from follow_logs(run, stage=stage, follow=follow, is_done=lambda: self._done(run, stage),
                               first_restart=first_restart)

    def _done(self, run: RunDir, stage: str) -> bool:
        """The stage (or the whole run) has ended: its log will not grow any more."""
        self.refresh(run)
        return run.read_status().ended(stage)

    def cancel(self, run: RunDir, *, force: bool = False) -> None:
        """Signal the run's processes, each checked to still be the run's own (pid, start time, run id). A
        cancel while one is under way adds nothing (its signal could reach the launcher as it shuts down, and a
        checkpointed stop would read as a kill); `force` still kills."""
        try:
            state = run.read_status().state
        except UserError as exc:  # damaged: its pids are unknown, but the run's processes name its folder
            if not force:
                raise UserError(exc.message, f"`llmops cancel --force {run.id}` kills the processes that run it "
                                "(those whose command line names the run folder)") from None
            killed = _kill_by_folder(run)
            raise UserError(f"{exc.message}; killed the {len(killed)} process(es) that named the run folder",
                            exc.fix) from None
        if state in TERMINAL or (run.cancel_marker.exists() and not force):
            return
        # The marker before the launcher's pid is read: a supervisor that launches in between finds the marker
        # once it has recorded the launcher (Supervisor.launch) and passes the cancel on itself.
        run.cancel_marker.touch()
        status = run.read_status()
        if is_ours(status.job_pgid, started_at=status.job_started, token=run.id):
            signal_job(status.job_pgid, signal.SIGKILL if force else signal.SIGTERM, stage=status.stage)
        if _supervisor_alive(run, status):
            if force:
                os.kill(status.supervisor_pid, signal.SIGTERM)
            if is_stopped(status.supervisor_pid):  # stopped, it would never record the cancel, nor act on --force
                os.kill(status.supervisor_pid, signal.SIGCONT)


_UNSUPERVISED = "the supervisor process is gone, but its job still runs"
# The run's message while its supervisor is stopped (the supervisor puts its own back once it goes on).
SUPERVISOR_STOPPED = "the supervisor process is stopped"


def _note_stopped(run: RunDir, status) -> None:
    """Say in the run's message that its supervisor is stopped (SIGSTOP, a debugger): until it goes on, nothing
    records the run's progress, restarts a stage or ends the run, and the run would read as RUNNING for good. Written
    only while it is stopped (it writes status.json itself otherwise)."""
    pid = status.supervisor_pid
    if status.message.startswith(SUPERVISOR_STOPPED) or not is_stopped(pid):
        return
    run.update_status(message=f"{SUPERVISOR_STOPPED} (pid {pid}: SIGSTOP, or a debugger holds it): nothing "
                      f"records the run's progress or restarts it; `kill -CONT {pid}` lets it go on, `llmops cancel "
                      f"{run.id}` continues it and stops the run")


def _kill_by_folder(run: RunDir) -> list[int]:
    """SIGKILL this user's processes of the run: the supervisor, the launcher, the workers and data preparation,
    each recognised by its module and the run folder in its command line (the folder's path, with the run's id
    and time stamp, names no other run); never another program that names the folder (`llmops logs -f`, an
    editor). Their pids."""
    import psutil

    found = []
    folders = {str(run.path.absolute()), str(run.path.resolve())}  # as the supervisor and the launcher name it
    supervisors = [f" llmops.backends.local.supervisor {f} " for f in folders]
    marks = [*supervisors, *(f" llmops_model.entrypoint {f} " for f in folders),
             *(f" prepare --resolved {f}/spec.yaml " for f in folders)]
    for p in psutil.process_iter(["cmdline", "uids"]):
        try:
            line = f" {' '.join(p.info['cmdline'] or [])} "
            launcher = " llmops_model.launch " in line and any(line.endswith(f" {f} ") for f in folders)
            if p.info["uids"].real == os.getuid() and (launcher or any(mark in line for mark in marks)):
                # the supervisor first: it would start a new attempt
                found.append((not any(m in line for m in supervisors), p))
        except psutil.Error:
            continue
    killed = []
    for _, p in sorted(found, key=lambda f: f[0]):
        try:
            p.kill()
            killed.append(p.pid)
        except psutil.Error:
            continue
    return killed


def _supervisor_alive(run: RunDir, status) -> bool:
    return is_ours(status.supervisor_pid, started_at=status.supervisor_started, token=run.id)


def signal_job(launcher_pid: int, sig: int, *, stage: str | None = None) -> None:
    """Signal the training workers (llmops.procs.workers) so they checkpoint and exit.

    The torchrun agent then sees its workers exit 75 and reports a preemption.
    With SIGKILL, or for data preparation (which resumes from its finished
    shards), the whole process group gets the signal at once.
    """
    if sig == signal.SIGKILL or stage == "prepare":
        tree = descendants(launcher_pid)  # read before the kill: orphans are re-parented away
        try:
            os.killpg(launcher_pid, sig)
        except ProcessLookupError:
            pass
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return
    targets = workers(launcher_pid) or [launcher_pid]
    for pid in targets:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _check_gpus(wanted: int | None) -> None:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
        have = len([line for line in out.splitlines() if line.startswith("GPU ")])
    except (OSError, subprocess.SubprocessError):
        have = 0
    if wanted and have < wanted:
        raise UserError(f"resources.gpus_per_node = {wanted}, but this machine has {have} GPU(s)",
                        "lower gpus_per_node, or set cpu: true with processes_per_node for a CPU run")
