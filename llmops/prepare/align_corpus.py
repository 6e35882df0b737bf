"""Alignment examples from the standard library's docstrings: real text, no download, deterministic.

Each public function or class of this Python's standard library with a
docstring gives a question and its answer: "What does `json.dumps` do?",
answered with the first sentence of its docstring. SFT conversations use
that answer (some with a system message, some with a second turn, some in
the prompt/response form); a preference pair takes it as the chosen
response and the answer about another name as the rejected one. Modules
are parsed with :mod:`ast`, never imported (importing the standard library
wholesale has side effects). The same Python and seed give the same set.

Command line (writes JSONL for ``align.data.path``)::

    python -m llmops.prepare.align_corpus sft conversations.jsonl [--examples N] [--seed S]
    python -m llmops.prepare.align_corpus dpo preferences.jsonl
    python -m llmops.prepare.align_corpus choice examples/eval/stdlib_docstrings.jsonl --examples 320

The ``choice`` kind is the multiple-choice evaluation task in ``examples/eval/``
(lm-evaluation-harness): a docstring's first sentence and four names, one of
them the name it documents.
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmops.prepare.sources import docstring_units
from llmops.runs.rundir import atomic_write

SYSTEM = "You answer questions about the Python standard library in one sentence."
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@dataclass(frozen=True)
class Entry:
    """One documented name and the first sentence of its docstring."""

    name: str
    """Qualified name, e.g. json.dumps."""
    module: str
    kind: str
    """function or class."""
    summary: str


def _summary(doc: str) -> str | None:
    """The docstring's first sentence, or None when it is too short or not prose."""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    sentence = _SENTENCE_END.split(first, maxsplit=1)[0]
    if len(sentence) < 20 or not sentence[0].isalpha() or ">>>" in sentence:
        return None
    return sentence


def _module_name(rel_path: str) -> str:
    parts = rel_path[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _documented() -> tuple[Entry, ...]:
    """Every public module-level function and class with a usable first sentence, sorted by name;
    distinct sentences only (the first name in file order keeps one).

    Parsing the whole standard library takes seconds (1.6 s here, 3.4 s on rank 0 of the tiny CPU run's first
    align stage while the other ranks wait), so the result is kept in the user's cache folder (which a run's
    prepare stage fills in the background, :func:`warm_cache`), keyed by the interpreter and every module's
    path, size and modification time; a cache that cannot be read or written is simply not used.
    """
    units = [u for u in docstring_units()
             if not any(part.startswith("_") for part in _module_name(u.source).split("."))]
    key = hashlib.sha256(json.dumps([sys.version, [(u.path, u.size, os.stat(u.path).st_mtime_ns) for u in units]])
                         .encode()).hexdigest()[:24]
    try:
        cache = _cache_dir() / f"stdlib-docstrings-{key}.json"
    except RuntimeError:  # a container with a made-up user id may have no home folder
        cache = None
    try:
        if cache is not None:
            return tuple(Entry(**e) for e in json.loads(cache.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    found = _parse(units)
    if cache is None:
        return found
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, json.dumps([e.__dict__ for e in found]))
    except OSError:
        pass
    return found


def warm_cache() -> subprocess.Popen:
    """Parse the standard library for :func:`_documented`'s cache in a background process (and return it, to
    be waited for): a run's prepare stage does this while it reads the same modules, so that its align stages
    start from the cache instead of parsing on one rank while the others wait."""
    return subprocess.Popen([sys.executable, "-m", __name__, _WARM], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # a failure: the stage parses


_WARM = "--warm-cache"


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmops"


def _parse(units) -> tuple[Entry, ...]:
    found: dict[str, Entry] = {}
    for unit in units:
        module = _module_name(unit.source)
        try:
            tree = ast.parse(Path(unit.path).read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name[0] == "_":
                continue
            summary = _summary(ast.get_docstring(node) or "")
            if summary is not None and summary not in found:
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                found[summary] = Entry(f"{module}.{node.name}", module, kind, summary)
    return tuple(sorted(found.values(), key=lambda e: e.name))


def entries(max_chars: int = 160) -> tuple[Entry, ...]:
    """The documented names whose first sentence has at most `max_chars` characters."""
    return tuple(e for e in _documented() if len(e.summary) <= max_chars)


def _pick(n: int, seed: int, max_chars: int) -> list[Entry]:
    pool = entries(max_chars)
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[:n]]


def _question(e: Entry) -> str:
    return f"What does the {e.kind} `{e.name}` do?"


def sft_records(n: int, *, seed: int = 0, max_chars: int = 160) -> list[dict]:
    """`n` conversations in the forms users bring: messages (with or without a system turn, one or two
    questions) and prompt/response pairs."""
    out = []
    for i, e in enumerate(_pick(n, seed, max_chars)):
        form = i % 4
        if form == 3:
            out.append({"prompt": _question(e), "response": e.summary})
            continue
        messages = [{"role": "system", "content": SYSTEM}] if form == 1 else []
        messages += [{"role": "user", "content": _question(e)}, {"role": "assistant", "content": e.summary}]
        if form == 2:
            messages += [{"role": "user", "content": "Which module is it in?"},
                         {"role": "assistant", "content": f"It is in the `{e.module}` module."}]
        out.append({"messages": messages})
    return out


def preference_records(n: int, *, seed: int = 0, max_chars: int = 160) -> list[dict]:
    """`n` pairs: the right docstring sentence is chosen, the one of another module's name rejected."""
    picked = _pick(n, seed, max_chars)
    rng = np.random.default_rng((seed, 1))
    out = []
    for e in picked:
        j = int(rng.integers(len(picked)))
        while picked[j].module == e.module:
            j = (j + 1) % len(picked)
        out.append({"prompt": _question(e), "chosen": e.summary, "rejected": picked[j].summary})
    return out


def choice_records(n: int, *, seed: int = 0, max_chars: int = 160, fewshot: int = 20) -> list[dict]:
    """`n` four-way questions: which name does this sentence document? The three wrong names are of the same
    kind (function or class) from other modules; the right one's position is uniform. The first `fewshot`
    are the "validation" split (lm-eval draws few-shot examples from it), the others "test"."""
    picked = _pick(n, seed, max_chars)
    pool = entries(max_chars)
    rng = np.random.default_rng((seed, 2))
    out = []
    for i, e in enumerate(picked):
        names = {e.name}
        while len(names) < 4:
            other = pool[int(rng.integers(len(pool)))]
            if other.kind == e.kind and other.module != e.module:
                names.add(other.name)
        choices = sorted(names - {e.name})
        answer = int(rng.integers(4))
        choices.insert(answer, e.name)
        out.append({"split": "validation" if i < fewshot else "test", "summary": e.summary, "kind": e.kind,
                    "choices": choices, "answer": answer})
    return out


def write_jsonl(records: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmops.prepare.align_corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("sft", "dpo", "choice"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-chars", type=int, default=160, help="longest answer, in characters")
    args = parser.parse_args(argv)
    make = {"sft": sft_records, "dpo": preference_records, "choice": choice_records}[args.kind]
    records = make(args.examples, seed=args.seed, max_chars=args.max_chars)
    write_jsonl(records, args.out)
    print(f"wrote {len(records)} {args.kind} examples to {args.out}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == [_WARM]:  # warm_cache()'s process
        _documented()
        sys.exit(0)
    sys.exit(main())
