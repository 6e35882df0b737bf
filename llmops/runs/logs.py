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

from llmops.runs.rundir import RunDir, restart_of

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


PIECE = 1 << 20  # a line longer than this (a process that printed without newlines) is shown in pieces


def follow_logs(run: RunDir, *, stage: str, follow: bool, is_done: Callable[[], bool], first_restart: int = 0,
                poll: float = 0.2) -> Iterator[str]:
    """Lines of every restart's log in order, from `first_restart` on; with follow, also what is written until
    the stage ends. A log that is missing while later ones exist is said and passed over; memory stays within a
    piece of :data:`PIECE` whatever the lines' length."""
    restart = first_restart
    while True:
        path = run.log_path(stage, restart)
        while not path.exists():
            later = [k for k in map(restart_of, run.log_files(stage)) if k > restart]
            if later:
                yield f"[llmops] the log of restart {restart} is missing (from {run.logs}); restart {min(later)} next"
                restart = min(later)
                path = run.log_path(stage, restart)
                continue
            if not follow or is_done():
                return
            time.sleep(poll)
        with open(path, errors="replace") as f:
            lines = _Lines(f)
            while True:
                yield from lines.read()
                # At the end of the file for now: move on, stop, or wait for more.
                if run.log_path(stage, restart + 1).exists() or not follow or is_done():
                    yield from lines.read()  # what was written before the check
                    yield from lines.rest()
                    break
                time.sleep(poll)
        if not run.log_path(stage, restart + 1).exists():
            return
        restart += 1


class _Lines:
    """The whole lines of a growing file, at most :data:`PIECE` characters in memory."""

    def __init__(self, f):
        self.f, self.pending = f, ""

    def read(self) -> Iterator[str]:
        while piece := self.f.readline(PIECE):
            self.pending += piece
            if self.pending.endswith("\n") or len(self.pending) >= PIECE:
                line, self.pending = self.pending.removesuffix("\n"), ""
                yield line

    def rest(self) -> Iterator[str]:
        """The last line, if the file does not end in a newline."""
        if self.pending:
            line, self.pending = self.pending, ""
            yield line
