"""The Slurm backend: sbatch scripts that requeue themselves, submitted here or over SSH.

``dry_run`` resolves the spec's `slurm:` section against the cluster profile,
refuses what the profile says the nodes cannot do, and renders one batch
script per torchrun stage plus ``slurm/submit.sh``, which chains the stages
with ``--dependency=afterok`` (data preparation fans out through submitit,
see :mod:`llmops.backends.slurm.fanout`). ``submit`` asks the cluster itself
(`sinfo`) whether the request fits, then runs that very ``submit.sh``.

State lives where the jobs write it, the run directory: ``refresh`` combines
squeue with the events the batch scripts record (:mod:`.status`), so
no accounting database (sacct) is needed.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmops import secrets, shell
from llmops.backends.base import Backend, Request
from llmops.backends.slurm.cluster import (
    check_fit,
    jobs_from,
    parse_sinfo,
    profile_facts,
    sinfo_command,
    squeue_command,
)
from llmops.backends.slurm.render import FANOUT_STAGES, Target, render_stage, render_submit
from llmops.backends.slurm.rules import run_dir_problems, static_problems
from llmops.backends.slurm.shards import read_shards, task_log
from llmops.backends.slurm.spec import OPTIONS, SlurmProfile, SlurmSpec, parse_profile_section, resolve
from llmops.backends.slurm.status import combine, fanout_stage, parse_events, read_text, torchrun_stage
from llmops.backends.slurm.transport import LocalTransport, SshTransport
from llmops.errors import Problem, SpecError, UserError
from llmops.runs.logs import follow_logs
from llmops.runs.rundir import PENDING, TERMINAL, RunDir, number
from llmops.spec.run import RunSpec

JOBS_FILE = "slurm/jobs.json"


@dataclass
class SlurmRequest(Request):
    slurm: SlurmSpec
    scripts: dict[str, str] = field(default_factory=dict)

    def files(self) -> dict[str, str]:
        return dict(self.scripts)


def transport_for(slurm: SlurmSpec) -> LocalTransport | SshTransport:
    if slurm.login:
        return SshTransport(slurm.login, slurm.remote_root or "", list(slurm.ssh_options))
    return LocalTransport()


class SlurmBackend(Backend):
    name = "slurm"
    section = SlurmSpec
    options = OPTIONS
    poll_seconds = 2.0
    """How often `logs --follow` asks the cluster whether the run has ended."""

    def validate(self, spec: RunSpec) -> list[Problem]:
        """The settings themselves, and against what the cluster profile says its nodes offer."""
        profile, env, profile_name = _profile(spec)
        slurm = resolve(spec.slurm, profile, env)
        problems = static_problems(slurm)
        if profile is not None:
            problems += check_fit(spec, slurm, profile_facts(profile_name, profile.partitions, profile.gpus_per_node,
                                                              profile.cpus_per_node, slurm.partition))
        return problems

    def shell_fields(self, spec: RunSpec) -> list[Problem]:
        own = spec.slurm or SlurmSpec()
        why = {"setup": "runs its lines as shell in the batch script",
               "ssh_options": "passes options to ssh (ProxyCommand runs a command here)",
               "python": "names the program every node runs", "sbatch_args": "passes options to sbatch"}
        fix = "leave it to the cluster profile (the platform team's), or run without --strict"
        loads = sorted(k for k in own.env if k in shell.CODE_PATHS)
        return [Problem(f"slurm.{name}", getattr(own, name), f"{reason}, which strict mode refuses", fix)
                for name, reason in why.items() if getattr(own, name)] + [
                Problem(f"slurm.env.{k}", own.env[k], "chooses the code the nodes' programs load, which strict mode "
                        "refuses", fix) for k in loads]

    def dry_run(self, spec: RunSpec, run_path: Path) -> SlurmRequest:
        profile, env, _ = _profile(spec)
        slurm = resolve(spec.slurm, profile, env)
        # The profile is read once, here: the run directory keeps the merged settings for every restart.
        spec = spec.model_copy(update={"slurm": slurm})
        transport = transport_for(slurm)
        python = slurm.python or (sys.executable if isinstance(transport, LocalTransport) else "python3")
        target = Target(run_dir=transport.cluster_path(run_path), python=python, run_id=run_path.name)
        problems = run_dir_problems(target.run_dir)
        if problems:
            raise SpecError(f"{spec.name} (backend slurm)", problems)
        scripts = {f"slurm/{stage}.sbatch": render_stage(spec, slurm, stage=stage, target=target)
                   for stage in spec.stages if stage not in FANOUT_STAGES}
        scripts["slurm/submit.sh"] = render_submit(spec, target=target)
        return SlurmRequest(backend=self.name, spec=spec, run_path=run_path, slurm=slurm, scripts=scripts)

    def submit(self, request: SlurmRequest, run: RunDir) -> None:
        slurm = request.slurm
        transport = transport_for(slurm)
        run.logs.mkdir(exist_ok=True)  # a resume of a run whose logs/ was removed: the scripts write there
        for name, text in request.files().items():
            (run.path / name).parent.mkdir(parents=True, exist_ok=True)
            (run.path / name).write_text(text)
        self._check_live(request, transport)
        pushed = ["spec.yaml", *request.files()]
        if request.secrets:
            secrets.write_env_file(run.path / secrets.FILE, request.secrets)
            pushed.append(secrets.FILE)
        try:
            transport.push(run, pushed)
        finally:
            if isinstance(transport, SshTransport):  # the cluster's copy is the one the jobs read
                (run.path / secrets.FILE).unlink(missing_ok=True)
        remote = transport.cluster_path(run.path)
        transport.run(["rm", "-f", f"{remote}/cancel-requested"])  # a resume starts without the old request
        res = transport.run(["bash", f"{remote}/slurm/submit.sh"], timeout=300)
        if res.returncode != 0:
            if request.secrets:  # nothing was queued: no job will read them
                transport.run(["rm", "-f", f"{remote}/{secrets.FILE}"])
            raise refusal(res.stderr)
        stages = _parse_submitted(res.stdout, list(request.spec.stages))
        (run.path / JOBS_FILE).write_text(json.dumps({"stages": stages, "submitted_at": time.time()}, indent=1))
        ids = [i for stage_ids in stages.values() for i in stage_ids]
        run.update_status(state=PENDING, backend=self.name, job_id=",".join(ids), exit_code=None, ended_at=None,
                          message=f"submitted as job(s) {', '.join(ids) or '(none: every stage had finished)'}")

    def _check_live(self, request: SlurmRequest, transport) -> None:
        """Ask the cluster whether the request fits, before anything is queued."""
        res = transport.run(sinfo_command())
        if res.returncode != 0:
            raise UserError(f"cannot reach Slurm (`sinfo` failed: {_last_lines(res.stderr)})",
                            "run llmops where the Slurm clients work (the login node), or set slurm.login")
        problems = check_fit(request.spec, request.slurm, parse_sinfo(res.stdout))
        if problems:
            raise SpecError(f"{request.spec.name} (checked against the cluster)", problems)

    def refresh(self, run: RunDir) -> None:
        record = _jobs_record(run)
        if record is None:
            return  # planned or rendered, never submitted
        spec = run.read_spec()
        transport = transport_for(spec.slurm or SlurmSpec())
        status = run.read_status()
        stages: dict[str, list[str]] = record["stages"]
        ids = [i for stage_ids in stages.values() for i in stage_ids]
        jobs = jobs_from(transport.run(squeue_command(ids))) if ids else {}
        if status.state in TERMINAL and not any(jobs[i].alive for i in ids if i in jobs):
            return  # decided when the jobs ended, with facts squeue may have forgotten since
        transport.pull(run)
        events = parse_events(read_text(run.path / "slurm/events.log"))
        cancel = run.cancel_marker.exists()
        views = []
        for stage in spec.stages:
            finished = (run.path / "slurm" / f"{stage}.finished").exists()
            if stage in FANOUT_STAGES:
                shards = read_shards(run.path, stage)
                views.append((stage, fanout_stage(stage, stages.get(stage, []), jobs, finished=finished,
                                                  shards_expected=shards.expected, shards_done=len(shards.done),
                                                  failures=shards.failures, unfinished=shards.unfinished,
                                                  restarts=shards.restarts, cancel_requested=cancel)))
            else:
                job_id = (stages.get(stage) or [""])[-1]
                views.append((stage, torchrun_stage(stage, job_id, events, jobs.get(job_id), finished=finished,
                                                    cancel_requested=cancel)))
        stage, view = combine(views)
        starts = [e.time for e in events if e.kind == "start" and e.time >= record["submitted_at"] - 5]
        per_stage = {name: {"state": v.state, "restarts": v.restart, "exit_code": v.code, "message": v.message}
                     for name, v in views}
        run.update_status(state=view.state, restarts=view.restart, exit_code=view.code, stage=stage,
                          stages=per_stage, message=view.message if len(views) == 1 else f"{stage}: {view.message}",
                          started_at=min(starts) if starts else None,
                          ended_at=(events[-1].time if events else time.time()) if view.state in TERMINAL else None)

    def logs(self, run: RunDir, *, follow: bool, stage: str = "pretrain", first_restart: int = 0) -> Iterator[str]:
        checked = {"at": 0.0, "done": False}

        def is_done() -> bool:
            if time.monotonic() - checked["at"] >= self.poll_seconds:
                self.refresh(run)  # also brings the logs over from the cluster when it is remote
                checked.update(at=time.monotonic(), done=run.read_status().ended(stage))
            return checked["done"]

        is_done()
        if stage in FANOUT_STAGES:
            yield from _task_logs(run, stage=stage, follow=follow, is_done=is_done)
        else:
            yield from follow_logs(run, stage=stage, follow=follow, is_done=is_done, first_restart=first_restart)

    def cancel(self, run: RunDir, *, force: bool = False) -> None:
        """Cancel the run's jobs, found in jobs.json, or where that is gone or damaged, in status.json; a run
        whose status.json is damaged is cancelled too (its jobs would run on)."""
        found = _job_ids(run)
        if found is None:
            raise UserError(f"neither {run.path / JOBS_FILE} nor {run.path / 'status.json'} can be read, so the "
                            "run's Slurm jobs are unknown", f"find them with `squeue --me` (their names start "
                            f"with {run.read_spec().name}) and scancel them")
        batch, arrays = found
        try:
            if not batch + arrays or run.read_status().state in TERMINAL:
                return
        except UserError:
            pass  # damaged status: cancel what jobs.json names
        spec = run.read_spec()
        transport = transport_for(spec.slurm or SlurmSpec())
        run.cancel_marker.touch()
        transport.run(["touch", f"{transport.cluster_path(run.path)}/cancel-requested"])
        if arrays:
            _kill_shards(transport, arrays)
        if force:
            if batch:
                transport.run(["scancel", "--signal=KILL", "--full", *batch])
                transport.run(["scancel", *batch])
            return
        # Waiting jobs go at once. In running ones SIGTERM goes to the training processes only (their steps):
        # they checkpoint and exit, and the batch script sees the cancel marker and does not requeue.
        # Not to the batch script with --full: srun, which runs there, ends its step on SIGTERM at once.
        if batch:
            transport.run(["scancel", "--state=PENDING", *batch])
            transport.run(["scancel", "--state=RUNNING", "--signal=TERM", *batch])


def _profile(spec: RunSpec) -> tuple[SlurmProfile | None, dict[str, str], str]:
    if not spec.profile:
        return None, {}, ""
    from llmops.profiles import load_profile

    profile = load_profile(spec.profile)
    return parse_profile_section(profile.slurm, f"cluster profile {profile.name}"), profile.env, profile.name


def _jobs_record(run: RunDir) -> dict | None:
    """slurm/jobs.json, the job ids of each stage; None where the run was never submitted. UserError when it is
    damaged, or gone from a run that was submitted (status.json names its jobs): its status cannot be told."""
    path = run.path / JOBS_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        status = run.read_status()
        if status.job_id and status.state not in TERMINAL:
            raise UserError(f"{path} is gone, so the state of the run's Slurm job(s) {status.job_id} cannot be told",
                            f"`llmops cancel {run.id}` still reaches them (status.json names them); restore the "
                            "file from where the run folder was copied to follow the run") from None
        return None
    except (OSError, ValueError) as exc:
        data = exc
    stages = data.get("stages") if isinstance(data, dict) else None
    if not (isinstance(stages, dict) and all(isinstance(ids, list) and all(isinstance(i, str) for i in ids)
                                             for ids in stages.values())
            and number(data.get("submitted_at"))):
        raise UserError(f"{path} is damaged (llmops writes it whole at submit): its job ids cannot be read",
                        f"`llmops cancel {run.id}` still reaches the jobs status.json names; restore the file "
                        "from where the run folder was copied")
    return data


def _job_ids(run: RunDir) -> tuple[list[str], list[str]] | None:
    """The run's batch and job-array ids, from jobs.json or, where it is gone or damaged, from status.json (all
    taken as batch jobs); None where neither can be read."""
    try:
        record = _jobs_record(run)
    except UserError:
        record = None
    if record is not None:
        return ([i for s, ids in record["stages"].items() if s not in FANOUT_STAGES for i in ids],
                [i for s, ids in record["stages"].items() if s in FANOUT_STAGES for i in ids])
    try:
        job_id = run.read_status().job_id
    except UserError:
        return None
    return [i for i in (job_id or "").split(",") if i], []


def _parse_submitted(stdout: str, stages: list[str]) -> dict[str, list[str]]:
    """submit.sh's "<stage> <job id>..." and "<stage> finished" lines. Only those: over SSH the script runs in a
    login shell, whose profile may print anything ("Disk quota 1234 of 5000"), and a word taken for a stage or
    a job id would be asked of squeue and handed to scancel."""
    found: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        stage, *rest = line.split()
        if stage not in stages or not rest:
            continue
        if rest == ["finished"]:
            found[stage] = []
        elif all(re.fullmatch(r"\d+", word) for word in rest):
            found[stage] = rest
    return found


def _task_logs(run: RunDir, *, stage: str, follow: bool, is_done, poll: float = 0.5) -> Iterator[str]:
    """Lines of a fan-out stage's per-task logs (`logs/<stage>.<phase>-<shard>.restart-<n>.log`), each
    prefixed with its task; with follow, new lines as they are written, until the run ends."""
    offsets: dict[Path, int] = {}
    while True:
        done = not follow or is_done()  # asked before reading, so nothing written in between is missed
        for path in sorted(run.logs.glob(f"{stage}.*.restart-*.log"), key=lambda p: p.stat().st_mtime):
            with open(path, "rb") as f:
                f.seek(offsets.get(path, 0))
                data = f.read()
            complete = data if done else data[:data.rfind(b"\n") + 1]
            offsets[path] = offsets.get(path, 0) + len(complete)
            task = path.name[len(stage) + 1:].rsplit(".restart-", 1)[0]
            yield from (f"[{task}] {line}" for line in complete.decode(errors="replace").splitlines())
            if done and offsets[path] == 0:
                yield from _empty_task_log(run, stage, task)
        if done:
            return
        time.sleep(poll)


def refusal(stderr: str) -> UserError:
    """The error for a submit.sh that failed. A fan-out stage's refusal already carries its fix (`Fix: ...`, from
    fanout's UserError): that one is kept, not printed beside a second, generic one."""
    why, sep, fix = _last_lines(stderr).partition("Fix: ")
    return UserError(f"Slurm refused the run: {why.strip() or 'no message'}",
                     fix.strip() if sep else "fix the request (partition, account, qos, time, resources) and "
                     "submit again")


def _empty_task_log(run: RunDir, stage: str, task: str) -> Iterator[str]:
    """A task killed before it wrote a line (SIGKILL, the OOM killer) has an empty log; how it ended is in
    submitit's log of it (`srun: error: n2: task 0: Killed`), shown in its place."""
    log = task_log(run.path, stage, task)
    text = read_text(log) if log is not None else ""
    if text:
        yield f"[{task}] (its own log is empty; submitit's log of it, {log.relative_to(run.path)}:)"
        yield from (f"[{task}] {line}" for line in text.splitlines())


def _kill_shards(transport, arrays: list[str]) -> None:
    """End the run's preparation arrays at once. A shard has nothing to checkpoint (it is redone from its start,
    and its files are renamed into place whole), while submitit ignores SIGTERM: a plain scancel left shards
    running for the cluster's KillWait (30 s), beside a resume's copy of them. So the tasks' steps get SIGKILL
    (a SIGKILL to the job itself is no faster: Slurm turns it into its own cancel, with KillWait), then the
    arrays are cancelled. Only the steps of these arrays, which llmops submitted, are signalled."""
    res = transport.run(["squeue", "-h", "-s", "-j", ",".join(arrays), "-o", "%i"])
    steps = [s for s in res.stdout.split() if re.fullmatch(r"\d+(_\d+)?\.\d+", s)] if res.returncode == 0 else []
    if steps:
        transport.run(["scancel", "--signal=KILL", *steps])
    transport.run(["scancel", *arrays])


def _last_lines(text: str, n: int = 3) -> str:
    return " ".join(text.strip().splitlines()[-n:]) or "no message"
