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

import os
import re
import stat
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


MAX_BYTES = 1 << 20
"""A spec file larger than this is refused: run specs are a few kilobytes."""
MAX_NODES = 20_000
"""YAML nodes a spec may hold once its aliases are expanded (an alias bomb of a few hundred bytes holds billions)."""
_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}


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
    """The file's YAML, bounded: a regular file of at most MAX_BYTES of UTF-8, the standard tags only, at most
    MAX_NODES nodes with aliases expanded and no alias that contains itself. SpecError (exit 2) otherwise."""
    text = _read_text(path)
    loader = None
    try:
        # libyaml where present: the pure-Python scanner takes seconds for a few kilobytes of nested brackets.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
        node = loader.get_single_node()
        if node is not None:
            _check_nodes(node, str(path))
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError(str(path), [Problem("(yaml)", where, f"is not valid YAML: {getattr(exc, 'problem', exc)}",
                                            "fix the YAML syntax at that position")]) from None
    except RecursionError:
        raise SpecError(str(path), [Problem("(yaml)", None, "is nested too deeply", "a run spec is a few levels "
                                            "of mappings and lists; flatten the file")]) from None
    except (ValueError, TypeError, AttributeError) as exc:  # a standard tag with a value it cannot take
        raise SpecError(str(path), [Problem("(yaml)", None, f"holds a value YAML cannot read: {exc}",
                                            "remove the explicit tag (!!int, !!float, ...) or fix its value")
                                    ]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _read_text(path: Path) -> str:
    def refuse(message: str, fix: str) -> SpecError:
        return SpecError(str(path), [Problem("(file)", str(path), message, fix)])

    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise refuse("is not a regular file", "give the path of a YAML file")
        if info.st_size > MAX_BYTES:
            raise refuse(f"is {info.st_size:,} bytes, more than a run spec's limit of {MAX_BYTES:,}",
                         "a run spec is a few kilobytes of YAML: check that this is the right file")
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise refuse(f"cannot be read: {exc.strerror}", "check the path") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"is not UTF-8 text (byte {exc.start} is not)", "save the spec as UTF-8 YAML") from None


_NUMBERS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
# YAML 1.1's numbers that read as something else than they look: 010 is 8 (octal), 1:30 is 90 (base 60).
_SURPRISING_NUMBER = re.compile(r"[-+]?0[0-7_]+|[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?")


def _where(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


def _unique_keys(node: yaml.MappingNode, source: str) -> None:
    """A key given twice in one mapping: YAML loaders keep the last silently (`steps: 4` then `steps: 40000`)."""
    seen: dict[tuple[str, str], yaml.Node] = {}
    for k, _ in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
            continue
        if (k.tag, k.value) in seen:
            raise SpecError(source, [Problem("(yaml)", k.value, f"is given twice in one mapping "
                                             f"({_where(seen[k.tag, k.value])} and {_where(k)}), and the later "
                                             "would silently win", "keep one of them")])
        seen[k.tag, k.value] = k


def _plain_number(node: yaml.ScalarNode, source: str) -> None:
    if _SURPRISING_NUMBER.fullmatch(node.value):
        raise SpecError(source, [Problem("(yaml)", node.value, f"({_where(node)}) is read by YAML as "
                                         f"{yaml.safe_load(node.value)!r} (a leading 0 is octal, a colon base 60)",
                                         "write the number without a leading 0 or colon, or quote it if it is text")])


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Count the nodes with aliases expanded (each shared node counted once per use) and check the tags."""
    sizes: dict[int, int] = {}
    pending: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in pending:
            raise SpecError(source, [Problem("(yaml)", None, "holds an alias inside its own anchor",
                                             "a run spec cannot refer to itself; write the value out")])
        if node.tag not in _TAGS:
            raise SpecError(source, [Problem("(yaml)", node.tag, "is a tag run specs do not take",
                                             "remove the tag: plain strings, numbers, booleans, lists and "
                                             "mappings only")])
        if isinstance(node, yaml.MappingNode):
            _unique_keys(node, source)
        elif isinstance(node, yaml.ScalarNode) and node.tag in _NUMBERS and not node.style:
            _plain_number(node, source)
        pending.add(key)
        children = [v for pair in node.value for v in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        total = 1 + sum(size(child) for child in children)
        pending.discard(key)
        if total > MAX_NODES:
            raise SpecError(source, [Problem("(yaml)", None, f"holds more than {MAX_NODES:,} values once its "
                                             "aliases are expanded", "write the spec without nested aliases")])
        sizes[key] = total
        return total

    size(root)
