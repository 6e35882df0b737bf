"""A stage's logs as the run directory keeps them, and the trainer's step lines in them.

Every attempt of a stage logs to its own ``logs/<stage>.restart-<n>.log``;
:func:`follow_logs` reads them in order as one stream, and with ``follow``
waits for what is still being written (the local backend's own files, and
the Slurm backend's, pulled from the cluster).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from llmops.runs.rundir import RunDir

STEP_LINE = re.compile(r"^(?:\[[^\]]*\]:)?\[step (\d+)/(\d+)\] (.*)$")


@dataclass
class StepLine:
    step: int
    steps: int
    fields: dict[str, str]


def parse_step_line(line: str) -> StepLine | None:
    """Parse the trainer's stable step line (see llmops_model.train.metrics)."""
    m = STEP_LINE.match(line.strip())
    if not m:
        return None
    fields = dict(kv.split("=", 1) for kv in m.group(3).split() if "=" in kv)
    return StepLine(int(m.group(1)), int(m.group(2)), fields)


def follow_logs(run: RunDir, *, stage: str, follow: bool, is_done: Callable[[], bool], first_restart: int = 0,
                poll: float = 0.2) -> Iterator[str]:
    """Lines of every restart's log in order, from `first_restart` on; with follow, also what is written until
    the stage ends."""
    restart = first_restart
    while True:
        path = run.log_path(stage, restart)
        while not path.exists():
            if not follow or is_done():
                return
            time.sleep(poll)
        with open(path, errors="replace") as f:
            pending = ""
            while True:
                pending += f.readline()
                if pending.endswith("\n"):
                    yield pending[:-1]
                    pending = ""
                    continue
                # At the end of the file for now: move on, stop, or wait for more.
                if run.log_path(stage, restart + 1).exists() or not follow or is_done():
                    yield from (pending + f.read()).splitlines()
                    break
                time.sleep(poll)
        if not run.log_path(stage, restart + 1).exists():
            return
        restart += 1
