"""A Slurm run's state, from two witnesses: the queue and the run directory.

The queue (squeue) knows whether a job is waiting or running, and for a few
minutes after it ends (MinJobAge) how it ended. It does not know what the
training made of it; that is what the batch scripts write into the run
directory: ``slurm/events.log`` (one line per start, notice, requeue and
outcome) and ``slurm/<stage>.finished``. Sites without slurmdbd have no sacct,
so nothing here depends on accounting.

These functions are pure, so every combination is tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmops.runs.rundir import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED

# Slurm job states in which the job may still run (or run again, after a requeue).
_WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "SUSPENDED", "STOPPED"}
_ACTIVE = {"CONFIGURING", "RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"}


@dataclass(frozen=True)
class Event:
    """One line of slurm/events.log: `<time> <stage> job=<id> restart=<n> <kind> [key=value ...] [reason=...]`."""

    time: float
    stage: str
    job: str
    restart: int
    kind: str
    fields: dict[str, str]

    @property
    def code(self) -> int | None:
        try:
            return int(self.fields["code"])
        except (KeyError, ValueError):
            return None

    @property
    def reason(self) -> str:
        return self.fields.get("reason", "")


@dataclass(frozen=True)
class Job:
    """What squeue says about one job (or one array task)."""

    job_id: str
    state: str
    reason: str
    restarts: int

    @property
    def alive(self) -> bool:
        return self.state in _WAITING or self.state in _ACTIVE


@dataclass(frozen=True)
class StageView:
    state: str
    message: str
    restart: int = 0
    code: int | None = None


def parse_events(text: str) -> list[Event]:
    """Complete lines only: the last one may be half-written (a node failure mid-write)."""
    out = []
    for line in text.split("\n")[:-1]:
        head, sep, reason = line.partition(" reason=")
        parts = head.split()
        if len(parts) < 5 or not parts[2].startswith("job=") or not parts[3].startswith("restart="):
            continue
        fields = dict(p.split("=", 1) for p in parts[5:] if "=" in p)
        if sep:
            fields["reason"] = reason
        try:
            out.append(Event(float(parts[0]), parts[1], parts[2][4:], int(parts[3][8:]), parts[4], fields))
        except ValueError:
            continue
    return out


def parse_squeue(text: str) -> dict[str, Job]:
    """Jobs from `squeue -h -t all -O JobArrayID:|,ArrayJobID:|,State:|,Reason:|,RestartCnt:|`, by id.

    JobArrayID, not JobID: JobID is each array task's own raw id (task 4 of array 129 may be job 133), so
    tasks would be filed under unrelated ids. JobArrayID lists them as `123_4`, or `123_[5-9]` while still
    pending together; the array's own id `123` stands for its liveliest task, so an array counts as alive
    while any of its tasks is. :func:`array_tasks` gives every task.
    """
    jobs: dict[str, Job] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) < 5 or not cells[0]:
            continue
        job_id, array_id, state, reason, restarts = cells[:5]
        job = Job(job_id, state.split()[0] if state else "UNKNOWN", reason,
                  int(restarts) if restarts.isdigit() else 0)
        jobs[job_id] = job
        if "_" in job_id:
            array = jobs.get(array_id)
            if array is None or _liveliness(job) > _liveliness(array):
                jobs[array_id] = job
    return jobs


def array_tasks(job_id: str, jobs: dict[str, Job]) -> list[Job]:
    """Every task squeue lists of array `job_id` (the job itself where it is no array)."""
    tasks = [j for k, j in jobs.items() if k.startswith(f"{job_id}_")]
    return tasks or ([jobs[job_id]] if job_id in jobs else [])


def held(job: Job) -> bool:
    """Slurm shows a hold in the reason (JobHeldAdmin, JobHeldUser, "job requeued in held state", and "launch
    failed requeued held" after a node failure), the state staying PENDING; older releases had a held state."""
    return job.state in _WAITING and ("HOLD" in job.state or "held" in job.reason.lower())


def _liveliness(job: Job) -> int:
    return 2 if job.state in _ACTIVE else 1 if job.state in _WAITING else 0


def torchrun_stage(stage: str, job_id: str, events: list[Event], job: Job | None, *,
                   finished: bool, cancel_requested: bool) -> StageView:
    """The state of one torchrun stage from its job and the events its batch script wrote."""
    mine = [e for e in events if e.stage == stage and e.job == job_id]
    last = mine[-1] if mine else None
    restart = last.restart if last else 0
    code = last.code if last else None
    if finished:
        return StageView(SUCCEEDED, "finished", restart, 0)
    if job is not None and job.alive:
        if job.state in _ACTIVE:
            where = f" (restart {restart})" if restart else ""
            return StageView(RUNNING, f"running as job {job_id}{where}", restart, None)
        hold = f"; held: release it with `scontrol release {job_id}`" if held(job) else ""
        if last is not None and last.kind in ("requeue", "stopped"):
            return StageView(PENDING, f"requeued ({last.reason}); waiting to start again as restart "
                             f"{restart + 1}{hold}", restart, code)
        return StageView(PENDING, f"waiting in the queue as job {job_id} ({job.reason}){hold}", restart, None)
    if last is not None and last.kind == "failed":
        return StageView(FAILED, last.reason, restart, code)
    if cancel_requested or (last is not None and last.kind == "cancelled"):
        return StageView(CANCELLED, "cancelled by the user", restart, code)
    if job is None and last is not None and last.kind == "stopped":  # squeue has forgotten the job by now
        return StageView(CANCELLED, f"job {job_id} was stopped in Slurm ({last.reason}) and left the queue "
                         "(scancel outside llmops): its checkpoint is saved, `llmops resume` continues it",
                         restart, code)
    return _ended_without_outcome(job_id, job, restart, code)


def fanout_stage(stage: str, job_ids: list[str], jobs: dict[str, Job], *, finished: bool,
                 shards_expected: int, shards_done: int, failures: list[tuple[str, str]],
                 cancel_requested: bool, unfinished: list[tuple[str, str]] = (), restarts: int = 0) -> StageView:
    """The state of a submitit fan-out stage (one array per phase) from its arrays' tasks and shard markers.

    Shards leave a `.done` or `.failed` marker each (no shared log: appends from many nodes are not
    atomic on NFS); a failed shard fails the stage once its array has nothing left to run. A shard killed
    outright leaves no marker: `unfinished` names those of the first phase that did not finish, with the
    evidence (submitit's log). After a cancel the stage stays RUNNING while any task is still on the
    cluster (stopping), so that no resume starts a second copy of a shard beside it."""
    if finished:
        return StageView(SUCCEEDED, f"finished ({shards_done} task(s))", restarts, 0)
    alive = [t for j in job_ids for t in array_tasks(j, jobs) if t.alive]
    progress = f"{shards_done}/{shards_expected or '?'} task(s) done"
    if alive and cancel_requested:
        return StageView(RUNNING, f"stopping after the cancel: task(s) {', '.join(t.job_id for t in alive)} still "
                         "on the cluster; `llmops resume` is possible once they are gone", restarts)
    stuck = [t.job_id for t in alive if held(t)]
    hold = f"; held: release with `scontrol release {' '.join(stuck)}`" if stuck else ""
    if any(t.state in _ACTIVE for t in alive):
        return StageView(RUNNING, f"running ({progress}){hold}", restarts)
    if alive:
        return StageView(PENDING, f"waiting in the queue ({alive[0].reason}; {progress}){hold}", restarts)
    if failures:
        shard, reason = failures[0]
        more = f" (and {len(failures) - 1} more shard(s))" if len(failures) > 1 else ""
        return StageView(FAILED, f"task {shard} failed: {reason}{more}", restarts, 1)
    if cancel_requested:
        return StageView(CANCELLED, "cancelled by the user", restarts)
    if unfinished:
        shard, evidence = unfinished[0]
        more = f" (and {len(unfinished) - 1} more shard(s))" if len(unfinished) > 1 else ""
        return StageView(FAILED, f"task {shard} ended without finishing, killed or its node lost ({evidence}){more}; "
                         f"the phases after it were cancelled by Slurm; {progress}", restarts, 1)
    ended = [jobs[j] for j in job_ids if j in jobs]
    how = f"ended as {ended[-1].state}" if ended else "left the queue"
    return StageView(FAILED, f"arrays {', '.join(job_ids)} {how} with {progress}; see logs/{stage}.*", restarts)


def _ended_without_outcome(job_id: str, job: Job | None, restart: int, code: int | None) -> StageView:
    """The job is gone and its script recorded no outcome: Slurm ended it (or the node died)."""
    if job is None:
        return StageView(FAILED, f"job {job_id} left the queue without recording an outcome (node failure, "
                         f"or scancel outside llmops); see logs/", restart, code)
    if job.state == "CANCELLED" and "Dependency" in job.reason:  # --kill-on-invalid-dep: the stage before failed
        return StageView(CANCELLED, f"job {job_id} was cancelled by Slurm before it started ({job.reason}): the "
                         "stage before it did not succeed", restart, code)
    if job.state == "CANCELLED":
        return StageView(CANCELLED, f"job {job_id} was cancelled in Slurm (scancel outside llmops)", restart, code)
    if job.state == "TIMEOUT":
        return StageView(FAILED, f"job {job_id} hit its time limit before it could checkpoint; raise "
                         "slurm.signal_lead (the notice must cover a step and a checkpoint save)", restart, code)
    return StageView(FAILED, f"job {job_id} ended as {job.state} ({job.reason}) without recording an "
                     "outcome; see its logs/slurm-*.out", restart, code)


def combine(views: list[tuple[str, StageView]]) -> tuple[str, StageView]:
    """The run's state: the first stage that has not succeeded decides; all succeeded is success."""
    return next(((s, v) for s, v in views if v.state != SUCCEEDED), views[-1])


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
