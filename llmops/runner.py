"""Library functions behind the CLI: plan, submit, render, follow, cancel and resume runs.

A spec travels one way: the loaded (resolved) spec goes to :func:`plan`,
which applies the backend's command-line options, checks the backend's rules
and takes its dry run, all in memory. The request it returns carries the
backend and the spec the run will keep; :func:`submit` and :func:`render`
are the only places that create a run directory, and they write that spec
into it once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from llmops import secrets
from llmops.backends.base import Backend, Request
from llmops.backends.registry import get_backend
from llmops.errors import Problem, SpecError, UserError
from llmops.runs.rundir import (
    CANCELLED,
    PENDING,
    RENDERED,
    SUCCEEDED,
    TERMINAL,
    RunDir,
    Status,
    new_run_path,
    why_restarted,
)
from llmops.spec.run import RunSpec


def check(spec: RunSpec, options: dict[str, dict[str, str]] | None = None, *,
          strict: bool = False) -> tuple[Backend, RunSpec]:
    """The spec's backend and the spec with that backend's command-line options applied, after the backend's
    own rules; SpecError (exit 2) with every problem, or with an option that belongs to another backend.

    `strict` (or a cluster profile with `strict: true`, or LLMOPS_STRICT=1) also refuses the spec's own
    fields that run commands by design (docs/trust-model.md)."""
    backend = get_backend(spec.backend)
    for name, values in (options or {}).items():
        if values and name != backend.name:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in values)
            raise UserError(f"{flags}: option(s) of the {name} backend, but this run uses the {backend.name} backend",
                            f"leave them out, or pass --backend {name}")
    spec = backend.with_options(spec, (options or {}).get(backend.name, {}))
    problems = backend.validate(spec)
    if strict or os.environ.get("LLMOPS_STRICT") == "1" or _strict_profile(spec):
        problems += backend.shell_fields(spec) + _profile_file(spec)
    if problems:
        raise SpecError(f"{spec.name} (backend {backend.name})", problems)
    return backend, spec


def _profile_file(spec: RunSpec) -> list[Problem]:
    """A profile the spec names by path is a file of the spec author's choosing, with the settings strict mode
    leaves to the platform team (a root user, the host's network, any namespace): strict mode takes profiles by
    name, from the search path the machine's owner set (llmops.profiles reads a `.yaml` path as a path)."""
    if spec.profile is None or not (Path(spec.profile).suffix in (".yaml", ".yml") and Path(spec.profile).is_file()):
        return []
    return [Problem("profile", spec.profile, "names a profile file of the spec's own, whose settings strict mode "
                    "leaves to the platform team", "name a profile installed on the search path (a folder in "
                    "LLMOPS_PROFILE_PATH, or ~/.config/llmops/profiles/), or run without --strict")]


def _strict_profile(spec: RunSpec) -> bool:
    if spec.profile is None:
        return False
    from llmops.profiles import load_profile

    return load_profile(spec.profile).strict


def plan(spec: RunSpec, *, root: Path | None = None, path: Path | None = None,
         options: dict[str, dict[str, str]] | None = None, strict: bool = False) -> Request:
    """The backend's request for a new run of `spec` (in a new folder under `root`, or at `path`), built in
    memory: nothing is written and nothing starts."""
    backend, spec = check(spec, options, strict=strict)
    if path is not None and not _RUN_ID.fullmatch(path.absolute().name):
        # The folder's name is the run's id: it goes into scripts, object names and labels
        raise UserError(f"{str(path)!r}: the folder's name {path.absolute().name!r} would be the run's id, which "
                        "is lower-case letters, digits and dashes, at most 100", "name the folder so, e.g. --out "
                        "render-1")
    run_path = path.absolute() if path is not None else new_run_path(spec.name, root or Path("runs"))
    return backend.dry_run(spec, run_path)


_RUN_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?")  # as new_run_path makes them


def submit(request: Request) -> RunDir:
    """Create the run directory with the request's spec and start the run; a refused submit leaves nothing."""
    if request.run_path.exists():
        raise UserError(f"{request.run_path} exists already", "submit again: a new run gets a new directory")
    request.secrets = secrets.read(request.spec)  # before anything is written: a missing one is exit 2
    try:
        run = RunDir.create(request.spec, request.run_path)
    except OSError as exc:  # the runs folder is a file, or not writable
        raise UserError(f"cannot make the run folder {request.run_path} ({exc.strerror or exc})",
                        "give --runs-dir (or LLMOPS_RUNS_DIR) a folder you can write in") from None
    try:
        get_backend(request.backend).submit(request, run)
    except UserError:  # refused before anything started: the folder is ours, just created, and empty of work
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    return run




def render(request: Request) -> list[Path]:
    """Write the resolved spec and the backend's artefacts into the request's folder; returns the files.

    A rendered folder is not a run (no status.json). Only a new or empty folder, or one an earlier render
    wrote, is written into; that render's files are removed first (left beside the new ones, a manifest of a
    stage the spec no longer has would be applied with `kubectl apply -f manifests/`), nothing else.
    """
    out = request.run_path
    if out.is_symlink() or out.exists() and not out.is_dir():
        raise UserError(f"{out} is a {'symbolic link' if out.is_symlink() else 'file'}",
                        "render into a new or empty folder (--out)")
    if not out.parent.is_dir():
        raise UserError(f"{out}: its parent {out.parent} is not a folder", "render into a folder that exists")
    if (out / "status.json").exists():
        raise UserError(f"{out} is a run directory", "render into a new folder (--out)")
    marker = out / RENDERED
    earlier = _rendered(marker, request.run_id)
    if out.is_dir() and any(out.iterdir()) and earlier is None:
        raise UserError(f"{out} is not empty, and not an earlier render of run {request.run_id}: llmops does not "
                        "write among files it did not make", "render into a new or empty folder (--out)")
    for rel in earlier or []:
        (out / rel).unlink(missing_ok=True)
    run = RunDir.create(request.spec, out, status=False)
    written = [run.spec_path]
    for name, text in request.files().items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if text.startswith("#!"):
            target.chmod(0o755)
        written.append(target)
    marker.write_text(json.dumps({"run": request.run_id,
                                  "files": sorted(str(p.relative_to(out)) for p in written)}, indent=1) + "\n")
    return written


def _rendered(marker: Path, run_id: str) -> list[str] | None:
    """The files an earlier render of `run_id` wrote (as its marker lists them; [] for a marker of an older
    llmops, which listed none), or None where no render of that run was made."""
    try:
        text = marker.read_text()
    except OSError:
        return None
    if text == run_id:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("run") != run_id:
        return None
    return [f for f in data.get("files", []) if isinstance(f, str) and ".." not in Path(f).parts
            and not Path(f).is_absolute()]


def status(run: RunDir) -> Status:
    get_backend(run.read_spec().backend).refresh(run)
    return run.read_status()


def logs(run: RunDir, *, follow: bool, stage: str | None = None, first_restart: int = 0) -> Iterator[str]:
    """One stage's log lines (default: the stage running now), from attempt `first_restart` on; with follow,
    until that stage ends."""
    spec = run.read_spec()
    stage = stage or run.read_status().stage or spec.stages[0]
    if stage not in spec.stages:
        raise UserError(f"run {run.id} has no '{stage}' stage (its stages: {', '.join(spec.stages)})",
                        f"pass --stage with one of {', '.join(spec.stages)}")
    return get_backend(spec.backend).logs(run, follow=follow, stage=stage, first_restart=first_restart)


def cancel(run: RunDir, *, force: bool = False, wait: float = 120.0) -> Status:
    """Ask the run to checkpoint and stop (with `force`, kill it); wait until nothing of it runs any more, or
    for `wait` seconds. It never escalates to a kill by itself: a run still stopping then is returned as it
    is, for the caller to say so."""
    backend = get_backend(run.read_spec().backend)
    backend.cancel(run, force=force)
    deadline = time.time() + wait
    while True:
        try:
            backend.refresh(run)
            st = run.read_status()
        except UserError as exc:  # a damaged run folder: the cancel went out, its outcome cannot be read
            raise UserError(f"the cancel was sent, but {exc.message[0].lower()}{exc.message[1:]}", exc.fix) from None
        if st.state in TERMINAL or time.time() >= deadline:
            return st
        time.sleep(0.5)


def resume(run: RunDir) -> RunDir:
    """Start a stopped run again from the spec it was submitted with; it continues from its latest complete
    checkpoint. A resume the backend refuses leaves the run's record as it was. Two at once: one starts the
    run, the other finds it PENDING."""
    with run.locked():
        return _resume(run)


def _resume(run: RunDir) -> RunDir:
    spec = run.read_spec()
    backend = get_backend(spec.backend)
    backend.refresh(run)
    before = run.read_status()
    if before.state == SUCCEEDED:
        raise UserError(f"run {run.id} has finished (SUCCEEDED): there is nothing to resume",
                        f"look at it with `llmops report {run.id}`, or start a new run of its spec: `llmops "
                        f"{'run' if spec.backend == 'local' else 'submit'} {run.spec_path}`")
    if before.state not in TERMINAL and run.cancel_marker.exists():
        raise UserError(f"run {run.id} is still stopping after its cancel ({before.message})",
                        f"wait until `llmops status {run.id}` says CANCELLED, then resume it")
    if before.state not in TERMINAL:
        raise UserError(f"run {run.id} is {before.state}, not stopped",
                        f"follow it with `llmops logs {run.id} -f`, or cancel it first")
    request = backend.dry_run(spec, run.path.absolute())
    request.secrets = secrets.read(spec)
    run.cancel_marker.unlink(missing_ok=True)
    stages = {name: _again(run, name, rec) for name, rec in before.stages.items()}
    run.update_status(state=PENDING, restarts=before.restarts + 1, exit_code=None, message="resumed by the user",
                      stages=stages, ended_at=None)
    try:
        backend.submit(request, run)
    except UserError:  # refused before anything started
        run.write_status(Status(**asdict(before)))
        raise
    return run


def _again(run: RunDir, stage: str, record: dict) -> dict:
    """A stage's record as a resume leaves it. One to run again is pending, not ended: a follower must wait for it,
    not replay its past. One that ran is restarted by the user: its next attempt is a restart, as the run's count
    says (the stage said 0 restarts beside the run's 1), with what stopped the one before."""
    if record.get("state") == SUCCEEDED:
        return record
    again = {**record, "state": PENDING, "message": "resumed"}
    if attempts := len(run.log_files(stage)):
        again.update(restarts=record.get("restarts", 0) + 1, why=why_restarted(record, attempts, _stopped(record)))
    return again


def _stopped(record: dict) -> str:
    """How a stage's last attempt ended, as its restart line says it."""
    if record.get("state") == CANCELLED:
        return "cancelled by the user"
    code = f" with exit code {record['exit_code']}" if record.get("exit_code") is not None else ""
    return f"failed{code}, then resumed by the user"


def follow(run: RunDir, *, on_line: Callable[[str, str], None],
           on_stage: Callable[[str, int, int], None] | None = None, new_only: bool = False,
           poll: float = 0.5) -> Status:
    """Stream the log of each stage, from the one running now, to `on_line(stage, line)` until the run ends;
    returns its final status. `on_stage(name, number, count)` hears of each stage as its log starts (runs of
    more than one stage). `new_only` (a resume) leaves out the attempts that ran before."""
    spec = run.read_spec()
    stages = spec.stages
    first = {s: len(run.log_files(s)) if new_only else 0 for s in stages}
    i = stages.index(run.read_status().stage) if run.read_status().stage in stages else 0
    while True:
        if len(stages) > 1 and on_stage is not None:
            on_stage(stages[i], i + 1, len(stages))
        for line in logs(run, follow=True, stage=stages[i], first_restart=first[stages[i]]):
            on_line(stages[i], line)
        st = status(run)
        if i + 1 == len(stages) or (st.state in TERMINAL and stages[i + 1] not in st.stages):
            break  # the last stage, or the run ended before the next one started
        i += 1
    while st.state not in TERMINAL:  # its last log is closed; the backend records the outcome a moment later
        time.sleep(poll)
        st = status(run)
    return st
