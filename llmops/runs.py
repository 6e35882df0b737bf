"""Library functions behind the CLI: submit, follow, resume and cancel runs."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llmops.backends import get_backend
from llmops.backends.base import Request
from llmops.errors import UserError
from llmops.rundir import PENDING, TERMINAL, RunDir, Status
from llmops.spec import RunSpec

STEP_LINE = re.compile(r"^(?:\[[^\]]*\]:)?\[step (\d+)/(\d+)\] (.*)$")


@dataclass
class StepLine:
    step: int
    steps: int
    fields: dict[str, str]


def parse_step_line(line: str) -> StepLine | None:
    """Parse the trainer's stable step line (see llmops_model.metrics)."""
    m = STEP_LINE.match(line.strip())
    if not m:
        return None
    fields = dict(kv.split("=", 1) for kv in m.group(3).split() if "=" in kv)
    return StepLine(int(m.group(1)), int(m.group(2)), fields)


def plan(spec: RunSpec, *, root: Path, backend: str | None = None, path: Path | None = None) -> Request:
    """Create the run directory and the backend's request, starting nothing."""
    name = backend or spec.backend
    be = get_backend(name)
    if name != spec.backend:
        spec = spec.model_copy(update={"backend": name})
    run = RunDir.create(spec, root, path=path)
    try:
        return be.dry_run(spec, run)
    except UserError:
        _discard(run)
        raise


def _discard(run: RunDir) -> None:
    import shutil

    shutil.rmtree(run.path, ignore_errors=True)


def render(spec: RunSpec, *, out: Path, backend: str | None = None) -> list[Path]:
    """Write the resolved spec and the backend's artefacts into `out`; returns the files written."""
    request = plan(spec, root=out.parent, backend=backend, path=out)
    written = [request.run.spec_path]
    for name, text in request.files().items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if text.startswith("#!"):
            target.chmod(0o755)
        written.append(target)
    (out / "status.json").unlink(missing_ok=True)  # a rendered folder is not a run yet
    return written


def submit(request: Request) -> RunDir:
    spec = request.run.read_spec()
    get_backend(spec.backend).submit(request)
    return request.run


def status(run: RunDir) -> Status:
    get_backend(run.read_spec().backend).refresh(run)
    return run.read_status()


def logs(run: RunDir, *, follow: bool, stage: str | None = None) -> Iterator[str]:
    """One stage's log lines (default: the stage running now); with follow, until that stage ends."""
    spec = run.read_spec()
    stage = stage or run.read_status().stage or spec.stages[0]
    if stage not in spec.stages:
        raise UserError(f"run {run.id} has no '{stage}' stage (its stages: {', '.join(spec.stages)})",
                        f"pass --stage with one of {', '.join(spec.stages)}")
    return get_backend(spec.backend).logs(run, follow=follow, stage=stage)


def cancel(run: RunDir, *, force: bool = False, wait: float = 120.0) -> Status:
    """Ask the run to checkpoint and stop; wait until nothing of it runs any more."""
    backend = get_backend(run.read_spec().backend)
    backend.cancel(run, force=force)
    deadline = time.time() + wait
    while time.time() < deadline:
        backend.refresh(run)
        st = run.read_status()
        if st.state in TERMINAL:
            return st
        time.sleep(0.5)
    backend.cancel(run, force=True)
    time.sleep(1.0)
    backend.refresh(run)
    return run.read_status()


def resume(run: RunDir) -> RunDir:
    """Start a stopped run again; it continues from its latest complete checkpoint."""
    get_backend(run.read_spec().backend).refresh(run)
    st = run.read_status()
    if st.state not in TERMINAL:
        raise UserError(f"run {run.id} is {st.state}, not stopped",
                        f"follow it with `llmops logs {run.id} -f`, or cancel it first")
    run.cancel_marker.unlink(missing_ok=True)
    run.update_status(state=PENDING, restarts=st.restarts + 1, exit_code=None, message="resumed by the user")
    spec = run.read_spec()
    backend = get_backend(spec.backend)
    backend.submit(backend.dry_run(spec, run))
    return run


def follow(run: RunDir, *, on_line: Callable[[str], None]) -> Status:
    """Stream the log of each stage, from the one running now, to `on_line` until the run ends."""
    spec = run.read_spec()
    stages = spec.stages
    i = stages.index(run.read_status().stage) if run.read_status().stage in stages else 0
    while True:
        if len(stages) > 1:
            on_line(f"[llmops] ---- stage {stages[i]} ({i + 1}/{len(stages)})")
        for line in logs(run, follow=True, stage=stages[i]):
            on_line(line)
        st = status(run)
        if i + 1 == len(stages) or (st.state in TERMINAL and stages[i + 1] not in st.stages):
            return st  # the last stage, or the run ended before the next one started
        i += 1
