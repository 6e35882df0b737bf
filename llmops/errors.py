"""Errors the CLI turns into a message and an exit code instead of a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Exit codes shared by the CLI, the training entrypoint and every backend.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
# The training process saved a checkpoint after a preemption notice and wants to be
# started again (EX_TEMPFAIL from sysexits.h). Backends requeue on this code.
EXIT_REQUEUE = 75
# The node's launcher found the job hung (no rank made progress for restarts.hang_timeout), wrote every
# rank's stacks to the log and stopped it. Backends restart it, as after a crash.
EXIT_HUNG = 76


@dataclass(frozen=True)
class Problem:
    """One thing wrong with user input: where, what value, what is wrong, how to fix it."""

    path: str
    value: Any
    message: str
    fix: str

    def render(self) -> str:
        """One line; a long path, value or message is cut short (a spec may hold megabytes in one value)."""
        shown = "" if self.value is None else f" = {cut(repr(self.value), 120)}"
        fix = self.fix if self.fix.endswith((".", "?", "!")) else self.fix + "."
        return f"{cut(self.path, 120)}{shown}: {cut(self.message, 400)}. Fix: {fix}"


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and how long it was (values in messages are cut short)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class UserError(Exception):
    """Bad input from the user: exit code 2 and a one-paragraph message."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def render(self) -> str:
        return self.message + (f"\nFix: {self.fix}" if self.fix else "")


class SpecError(UserError):
    """A run spec that does not validate; carries every problem found."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s) in the run spec")

    def render(self) -> str:
        lines = [self.message + ":"] + [f"  - {p.render()}" for p in self.problems]
        return "\n".join(lines)
