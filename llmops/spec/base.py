"""What every section of the run spec shares: strict models, absolute paths, and errors users can act on.

Backends type their own sections (``slurm:``, ``k8s:``) and their profile
sections with :class:`SpecModel` too, and turn pydantic's errors into
:class:`~llmops.errors.Problem` with :func:`problems_from`, so that a bad key
reads the same wherever it was written.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from llmops.errors import Problem


class SpecModel(BaseModel):
    """A section of the spec: unknown keys are errors, field docstrings become the schema's descriptions, and
    no number is infinite or NaN (every numeric field also has an upper bound of its own)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_flag_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads `true` as 1 for a number (`steps: true` trained one step): a flag where a number is
        meant is a slip. (Text stays accepted: YAML 1.1 reads `lr: 3e-4` as the text '3e-4'.)"""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kinds = _kinds(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and kinds & {int, float}:
                raise ValueError("is true/false where a number is meant")
        return value


def _kinds(annotation: Any) -> set[type]:
    """The plain types a field's annotation accepts (through Optional, unions, Annotated and Literal values)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {type(a) for a in typing.get_args(annotation)}
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return set().union(*(_kinds(a) for a in typing.get_args(annotation)))
    return {annotation} if isinstance(annotation, type) else {object}


def absolute_path(path: str) -> str:
    """The path made absolute against the current folder (where llmops was started)."""
    return os.path.abspath(os.path.expanduser(path))


def problems_from(exc: ValidationError, model: type[BaseModel], *, prefix: Sequence[str] = (),
                  fix: str | None = None) -> list[Problem]:
    """Every error of a failed validation of `model` as a Problem: the field path (under `prefix`), the value,
    what is wrong and the fix; an unknown key gets the closest known one, or the list of keys allowed there."""
    out = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        path = ".".join([*prefix, *loc]) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, err["loc"][:-1])
            close = difflib.get_close_matches(loc[-1], allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed keys here: {', '.join(allowed)}"
            out.append(Problem(path, None, "is not a known field", hint))
        elif kind == "missing":
            out.append(Problem(path, None, "is required", f"add {loc[-1]}: <value>"))
        else:
            message = err["msg"].rstrip(".").removeprefix("Value error, ")
            if message[1:2].islower():  # a sentence to go after the field's name; not an acronym or a name
                message = message[:1].lower() + message[1:]
            out.append(Problem(path, err.get("input"), message, fix or _fix_for(kind, err)))
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The fields of the model found by following `loc` from `model` (list indices and dict keys skipped)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            continue
        nested = _model_in(field.annotation)
        if nested is not None:
            model = nested
    return list(model.model_fields)


def _model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (itself, or inside Optional, list[...] or dict[..., ...])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _fix_for(kind: str, err: dict) -> str:
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        return f"use one of {ctx.get('expected')}"
    if kind.startswith(("greater", "less")):
        return "change the value to satisfy the bound"
    if kind == "finite_number":
        return "give a finite number"
    if kind == "string_pattern_mismatch":
        return "use lowercase letters, digits and dashes, starting and ending with a letter or digit"
    if kind.endswith(("_parsing", "_type")):
        return "give a value of the type shown in `llmops schema`"
    return "see `llmops schema` for the allowed values"
