"""The run directory: the one place a run's state lives, for every backend.

::

    runs/<name>-<YYYYmmdd-HHMMSS>/
        spec.yaml          the resolved spec, written once at submit; every stage and restart reads it
        status.json        state, backend, restarts, exit code (written by the backend's supervisor)
        logs/              <stage>.restart-<n>.log: a restart never overwrites an earlier log
        stages/<stage>/    per stage:
            metrics.jsonl  one row per logged step (see llmops_model.train.metrics)
            progress.json  the latest row
            eval.jsonl     held-out evaluations (pre-training and align stages)
        checkpoints/       pretrain's, unless checkpoint.dir points elsewhere
        checkpoints-<s>/   align stage s's, unless its checkpoint_dir does
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmops.errors import UserError
from llmops.files import atomic_write
from llmops.spec.load import dump_spec, read_resolved
from llmops.spec.run import RunSpec

DEFAULT_RUNS_DIR = "runs"

# Run states. Terminal ones never change again unless the run is resumed.
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
TERMINAL = {SUCCEEDED, FAILED, CANCELLED}


def runs_root(override: str | os.PathLike | None = None) -> Path:
    return Path(override or os.environ.get("LLMOPS_RUNS_DIR") or DEFAULT_RUNS_DIR)


@dataclass
class Status:
    state: str = PENDING
    backend: str = "local"
    restarts: int = 0
    exit_code: int | None = None
    message: str = ""
    supervisor_pid: int | None = None
    supervisor_started: float | None = None
    """When the supervisor process started: with its pid, what identifies it (the local backend)."""
    job_pgid: int | None = None
    job_started: float | None = None
    job_id: str | None = None
    stage: str | None = None
    """The stage running now (or the last one that ran)."""
    stages: dict[str, dict] = field(default_factory=dict)
    """Per stage, as far as the backend knows: state, restarts, started_at, ended_at, exit_code, message."""
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None

    def ended(self, stage: str | None = None) -> bool:
        """The run, or the stage, has ended: its logs will not grow any more."""
        return self.state in TERMINAL or (stage is not None and self.stages.get(stage, {}).get("state") in TERMINAL)


_DAMAGED = "llmops writes it whole: restore the run folder from where it was copied, or remove the run"
_NUMBER = (int, float)
_FIELDS = {"state": str, "backend": str, "restarts": int, "exit_code": (int, type(None)), "message": str,
           "supervisor_pid": (int, type(None)), "supervisor_started": (*_NUMBER, type(None)),
           "job_pgid": (int, type(None)), "job_started": (*_NUMBER, type(None)), "job_id": (str, type(None)),
           "stage": (str, type(None)), "stages": dict, "submitted_at": _NUMBER, "started_at": (*_NUMBER, type(None)),
           "ended_at": (*_NUMBER, type(None))}


def _status_problem(data: object) -> str | None:
    """What is wrong with a status.json's content, or None."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    for key, kind in _FIELDS.items():
        value = data.get(key)
        if key in data and (not isinstance(value, kind) or isinstance(value, bool)
                            or isinstance(value, float) and not math.isfinite(value)):
            return f"{key} = {str(value)[:40]!r} is not of its kind"
    for name, record in data.get("stages", {}).items():
        if not isinstance(record, dict) or not all(
                record.get(k) is None or number(record[k]) for k in ("started_at", "ended_at", "restarts", "exit_code")
        ) or not isinstance(
                record.get("state", ""), str) or not isinstance(record.get("message", ""), str):
            return f"the record of stage {str(name)[:40]!r} is not of its kind"
    return None


class RunDir:
    """Reads and writes one run's directory. All writes are atomic replaces."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def spec_path(self) -> Path:
        return self.path / "spec.yaml"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def log_path(self, stage: str, restart: int) -> Path:
        return self.logs / f"{stage}.restart-{restart}.log"

    def log_files(self, stage: str = "pretrain") -> list[Path]:
        return sorted(self.logs.glob(f"{stage}.restart-*.log"), key=restart_of)

    @classmethod
    def create(cls, spec: RunSpec, path: Path, *, status: bool = True) -> RunDir:
        """The run directory at `path` with the resolved spec (and, for a run, its first status.json)."""
        path.mkdir(parents=True, exist_ok=True)
        (path / "logs").mkdir(exist_ok=True)
        run = cls(path)
        atomic_write(run.spec_path, dump_spec(spec))
        if status:
            run.write_status(Status(backend=spec.backend))
        return run

    def read_spec(self) -> RunSpec:
        """The spec the run was submitted with (validated, never resolved again)."""
        if not self.spec_path.is_file():
            raise UserError(f"{self.path} is not a run directory (no spec.yaml)",
                            "pass a run id from `llmops status` or the path of a run directory")
        return read_resolved(self.spec_path)

    def read_status(self) -> Status:
        """The run's status.json; a run folder not yet given one is PENDING. UserError naming the file when it
        is damaged (llmops writes it whole, so that is a folder copied or edited by hand): read as PENDING, a
        finished run looked as if submitted just now."""
        path = self.path / "status.json"
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return Status()
        except OSError as exc:
            raise UserError(f"{path} cannot be read ({exc.strerror or exc})", "check the run folder's permissions") \
                from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{path} is damaged: not JSON ({exc})", _DAMAGED) from None
        problem = _status_problem(data)
        if problem:
            raise UserError(f"{path} is damaged: {problem}", _DAMAGED)
        return Status(**{k: v for k, v in data.items() if k in Status.__dataclass_fields__})

    def write_status(self, status: Status) -> None:
        atomic_write(self.path / "status.json", json.dumps(asdict(status), indent=1))

    def update_status(self, **changes) -> Status:
        status = self.read_status()
        for key, value in changes.items():
            setattr(status, key, value)
        self.write_status(status)
        return status

    def stage_dir(self, stage: str) -> Path:
        """The stage's metrics and markers (created by whoever writes there first)."""
        return self.path / "stages" / stage

    def update_stage(self, stage: str, **changes) -> Status:
        """Change one stage's record (and make it the current stage)."""
        status = self.read_status()
        status.stages = {**status.stages, stage: {**status.stages.get(stage, {}), **changes}}
        status.stage = stage
        self.write_status(status)
        return status

    def progress(self, stage: str | None = None) -> dict | None:
        """The latest logged step of `stage`, or of the stage running now (the last one to log)."""
        if stage is None:
            stage = self.read_status().stage
            if stage is None:
                found = sorted(self.path.glob("stages/*/progress.json"), key=lambda p: p.stat().st_mtime)
                stage = found[-1].parent.name if found else None
        if stage is None:
            return None
        try:
            row = json.loads((self.stage_dir(stage) / "progress.json").read_text())
        except (OSError, ValueError):
            return None
        return row if step_row(row) else None

    def metrics(self, stage: str = "pretrain", name: str = "metrics.jsonl") -> list[dict]:
        """Logged steps of `stage`, the latest row for each step (a re-run step replaces the earlier row)."""
        rows: dict[int, dict] = {}
        for row in jsonl_rows(self.stage_dir(stage) / name):
            if step_row(row):
                rows[row["step"]] = row
        return [rows[s] for s in sorted(rows)]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock (a file lock on llmops.lock in the folder): what is checked and changed under it
        is one step for every llmops process on this machine, so two resumes at once cannot both start it."""
        with open(self.path / "llmops.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    @property
    def cancel_marker(self) -> Path:
        return self.path / "cancel-requested"


def new_run_path(name: str, root: Path) -> Path:
    """A run directory's path under root that is not taken: <name>-<YYYYmmdd-HHMMSS>[-n]."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = root / f"{name}-{stamp}", 1
    while path.exists():
        n += 1
        path = root / f"{name}-{stamp}-{n}"
    return path.absolute()


_RUN_ID = re.compile(r"(?P<name>.+)-(?P<stamp>\d{8}-\d{6})(?:-(?P<n>\d+))?")  # see new_run_path


RENDERED = ".llmops-render"
"""Left in a folder `llmops render` wrote: the run id and the files written, which a later render there replaces."""


def resolve_run(ref: str, root: Path) -> RunDir:
    """A run from a path, an exact id under root, or an exact name (the newest run of exactly that name).

    Never a prefix: with runs `tiny-cpu-...` and `tiny-cpu-synthetic-...`, `tiny-cpu` is the former only.
    A folder `llmops render` wrote has a spec but is no run (nothing was submitted): UserError.
    """
    for folder in (Path(ref), root / ref):
        if (folder / "spec.yaml").is_file():
            if (folder / RENDERED).is_file() and not (folder / "status.json").exists():
                raise UserError(f"{folder} is a folder `llmops render` wrote, not a run: nothing of it was "
                                "submitted, so it has no status, logs or processes",
                                f"submit its scripts yourself, or start the run with `llmops submit "
                                f"{folder / 'spec.yaml'}`")
            return RunDir(folder)
    runs = [p for p in root.iterdir() if (p / "spec.yaml").is_file()] if root.is_dir() else []
    named = [(m["stamp"], int(m["n"] or 1), p) for p in runs if (m := _RUN_ID.fullmatch(p.name)) and m["name"] == ref]
    if named:
        return RunDir(max(named)[2])  # the newest, by the time in its id
    close = sorted(p.name for p in runs if p.name.startswith(ref))
    raise UserError(f"no run '{ref}' under {root}" + (f"; runs that start so: {', '.join(close[:8])}" if close else ""),
                    "pass a run's exact id or name (`llmops status` lists them), or --runs-dir where it was started")


def list_runs(root: Path) -> list[RunDir]:
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in root.iterdir() if (p / "spec.yaml").is_file()]

    def submitted(run: RunDir) -> float:
        try:
            return run.read_status().submitted_at
        except UserError:  # listed first, where `llmops status` says what is wrong with it
            return 0.0

    return sorted(runs, key=submitted)


def checkpoint_root(spec: RunSpec, stage: str, run_dir: os.PathLike | str) -> str:
    """Where training stage `stage` saves and resumes (pretrain or an align stage's name)."""
    if stage == "pretrain":
        return spec.checkpoint.dir or os.path.join(run_dir, "checkpoints")
    a = spec.align_stage(stage)
    return a.checkpoint_dir or os.path.join(run_dir, f"checkpoints-{a.stage}")


def start_root(spec: RunSpec, stage: str, run_dir: os.PathLike | str) -> str:
    """What align stage `stage` starts from: its start_from, else the previous training stage's checkpoints."""
    a = spec.align_stage(stage)
    if a.start_from is not None:
        return a.start_from
    order = spec.training_stages
    before = order[order.index(stage) - 1] if order.index(stage) > 0 else "pretrain"
    return checkpoint_root(spec, before, run_dir)


def restart_of(log: Path) -> int:
    """The attempt a stage log belongs to (`<stage>.restart-<n>.log`)."""
    return int(log.name.rsplit("restart-", 1)[1].split(".")[0])


def jsonl_rows(path: Path) -> Iterator[Any]:
    """The rows of a JSON-lines file a run appends to, read a line at a time (a long run's metrics.jsonl is hundreds
    of megabytes). A line that is not JSON, cut off by a kill mid-write or damaged (bytes that are not UTF-8), is
    left out; no file, no rows."""
    try:
        f = path.open("rb")
    except OSError:
        return
    with f:
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def why_restarted(record: dict, restart: int, reason: str) -> dict[str, str]:
    """A stage record's `why` with `reason` for its restart number `restart`: what ended the attempt before it, as
    the one who restarted it knew (the supervisor, the user's resume), which the report prefers to its guess from
    the stage's events (a killed rank leaves no exit event; a cancel and a preemption both exit 75)."""
    why = record.get("why")
    return {**(why if isinstance(why, dict) else {}), str(restart): reason}


def number(value: object, *, whole: bool = False) -> bool:
    """A JSON number as llmops writes one: finite and not a boolean (`whole`: an integer), and an integer within
    what a float holds exactly (a 400-digit step was an OverflowError in `status` and `report`)."""
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        return False
    return abs(value) < 1 << 53 if isinstance(value, int) else math.isfinite(value)


def step_row(row: object) -> bool:
    """A metrics or progress row as the trainer writes it: an object with a whole step, and where present, a
    finite time and numbers for steps, loss (NaN allowed) and tokens (a row edited by hand or damaged is left
    out)."""
    if not isinstance(row, dict) or not number(row.get("step"), whole=True):
        return False
    for key in ("time", "steps", "loss", "tokens", "tokens_per_s", "step_time"):
        value = row.get(key)
        if value is not None and not (number(value) or key == "loss" and isinstance(value, float)):
            return False
    return number(row.get("restart", 0), whole=True)
