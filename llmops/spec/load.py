"""YAML in, a validated and resolved spec out; and the resolved spec back in, as written.

A spec travels one way: the user's file is validated and resolved once
(:func:`load_spec`: per-field checks, then :func:`llmops.spec.rules.check_rules`,
which fills in what is derived), the backend's dry run builds its request
from that, and ``submit`` writes it into the run directory as ``spec.yaml``
(:func:`dump_spec`). Every later reader (status, restarts, each training
rank) reads that file with :func:`read_resolved`, which validates it without
resolving it again: the run keeps the spec it was submitted with, even when
files it named have changed since.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmops.errors import Problem, SpecError
from llmops.spec.base import problems_from
from llmops.spec.rules import check_rules
from llmops.spec.run import RunSpec


def parse_spec(data: Any, source: str = "<spec>", *, backend: str | None = None) -> RunSpec:
    """Validate and resolve a mapping as a run spec (`backend` overrides its backend: field), raising
    :class:`SpecError` with every problem."""
    spec = _validate(data, source, backend=backend)
    problems = check_rules(spec)
    if problems:
        raise SpecError(source, problems)
    return spec


def load_spec(path: str | Path, *, backend: str | None = None) -> RunSpec:
    """Read, validate and resolve a run spec file."""
    return parse_spec(_read_yaml(Path(path)), str(path), backend=backend)


def read_resolved(path: str | Path) -> RunSpec:
    """A resolved spec as :func:`dump_spec` wrote it: validated, not resolved again."""
    return _validate(_read_yaml(Path(path)), str(path))


def dump_spec(spec: RunSpec) -> str:
    """The resolved spec as YAML: every default and preset value written out."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict:
    return RunSpec.model_json_schema()


def _validate(data: Any, source: str, *, backend: str | None = None) -> RunSpec:
    if not isinstance(data, dict):
        raise SpecError(source, [Problem("(top level)", type(data).__name__, "is not a mapping",
                                         "a run spec is a YAML mapping with name:, train:, ...")])
    if backend is not None:
        data = {**data, "backend": backend}
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, problems_from(exc, RunSpec)) from None


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(str(path), [Problem("(file)", str(path), f"cannot be read: {exc.strerror}",
                                            "check the path")]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError(str(path), [Problem("(yaml)", where, f"is not valid YAML: {getattr(exc, 'problem', exc)}",
                                            "fix the YAML syntax at that position")]) from None
