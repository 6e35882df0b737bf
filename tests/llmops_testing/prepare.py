"""Small generated corpora and specs for the data-preparation tests (`from llmops_testing.prepare import ...`).

Documents are sentences of real English words (taken from a few standard
library docstrings) in a seeded random order: distinct documents share
almost no 5-grams, and a controlled edit gives a known similarity.
"""

from __future__ import annotations

import ast
import json
import random
import re
import sysconfig
from pathlib import Path
from typing import Any

from llmops.spec.prepare import PrepareSpec

_MODULES = ("argparse.py", "json/__init__.py", "collections/__init__.py", "subprocess.py", "pathlib.py")


def vocabulary() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    words: set[str] = set()
    for name in _MODULES:
        tree = ast.parse((root / name).read_bytes())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                words.update(w.lower() for w in re.findall(r"[A-Za-z]{3,}", ast.get_docstring(node) or ""))
    return sorted(words)


VOCAB = vocabulary()


def make_text(rng: random.Random, words: int = 120) -> str:
    """Paragraphs of sentences, 8 to 16 words each."""
    out, sentence, para = [], [], []
    for _ in range(words):
        sentence.append(rng.choice(VOCAB))
        if len(sentence) >= rng.randint(8, 16):
            para.append(" ".join(sentence).capitalize() + ".")
            sentence = []
        if len(para) == 4:
            out.append(" ".join(para))
            para = []
    if sentence:
        para.append(" ".join(sentence).capitalize() + ".")
    if para:
        out.append(" ".join(para))
    return "\n\n".join(out)


def edit(text: str, rng: random.Random, rate: float) -> str:
    """Replace about `rate` of the words with random ones (a near-duplicate for small rates)."""
    words = text.split(" ")
    for i in range(len(words)):
        if rng.random() < rate:
            words[i] = rng.choice(VOCAB)
    return " ".join(words)


def make_corpus(n: int, *, seed: int = 0, exact_dups: int = 0, near_dups: int = 0) -> list[dict[str, Any]]:
    """`n` distinct documents, then `exact_dups` copies (new ids, upper case, doubled spaces) and
    `near_dups` copies with one word replaced (5-gram Jaccard above 0.85) of other documents, shuffled in.
    Copies carry `copy_of`: the id of their original (readers ignore the extra field)."""
    rng = random.Random(seed)
    docs = [{"id": f"doc-{i}", "text": make_text(rng, rng.randint(80, 200))} for i in range(n)]
    sources = rng.sample(range(n), exact_dups + near_dups)
    for k, i in enumerate(sources[:exact_dups]):
        docs.append({"id": f"exact-{k}", "text": docs[i]["text"].upper().replace(". ", ".  "), "copy_of": f"doc-{i}"})
    for k, i in enumerate(sources[exact_dups:]):
        words = docs[i]["text"].split(" ")
        at = rng.randrange(len(words))
        words[at] = "replaced" if words[at] != "replaced" else "changed"
        docs.append({"id": f"near-{k}", "text": " ".join(words), "copy_of": f"doc-{i}"})
    rng.shuffle(docs)
    return docs


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def prepare_spec(inputs: list[str] | None, out: Path, **sections: Any) -> PrepareSpec:
    """A spec for small corpora: short documents allowed, a small tokenizer, one process."""
    data: dict[str, Any] = {
        "input": {"paths": inputs} if inputs else {"builtin": "python-docstrings"},
        "filters": {"min_words": 20},
        "tokenizer": {"vocab_size": 400, "sample_bytes": 2_000_000},
        "output": {"dir": str(out)},
        "workers": 1,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return PrepareSpec.model_validate(data)
