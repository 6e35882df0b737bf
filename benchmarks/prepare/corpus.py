"""The data-preparation benchmarks' corpora: real text from this machine, nothing downloaded.

Base documents (real English, installed by Debian packages)::

    apt-get install -y python3-doc manpages manpages-dev

- python3-doc's reStructuredText sources (``/usr/share/doc/python3*/html/_sources``),
  cut into sections of a few kilobytes at blank lines;
- man pages (``/usr/share/man/man[1-8]``, English only), troff markup stripped, one
  document per page;
- this Python's standard-library docstrings of 200 characters or more.

:func:`build_throughput_corpus` expands the base to a target size by controlled
expansion: each output document is a base document with every word replaced,
with probability 0.12, by a random word of the base vocabulary (two variants of
one base document then share about a tenth of their word 5-grams: distinct
documents, as far as deduplication is concerned), plus 3% exact copies and 3%
near copies (1.5% of words replaced) of earlier output documents. Seeded, so
the same machine builds the same corpus; ids say what each document is
(``v<variant>-<base>``, ``exact-<k>``, ``near-<k>``), and copies name their
original in ``copy_of`` (an extra field that readers ignore).

Run it alone to see the base corpus: ``python benchmarks/prepare/corpus.py``.
"""

from __future__ import annotations

import ast
import glob
import gzip
import json
import os
import random
import re
import sysconfig
from pathlib import Path

_TROFF_ESCAPE = re.compile(r"\\f[BIRP0-9]|\\f\(..|\\f\[[^]]*\]|\\\(..|\\\[[^]]*\]|\\[&|^/,%:]|\\s[-+]?\d")
_TROFF_MACRO = re.compile(r"^\.(?:SH|SS|TH)\s+(.*)$|^\.(?:B|I|BR|IR|RB|RI|BI|IB|TP|IP|PP|LP|P|nf|fi|br|sp|in|RS|RE"
                          r"|ft|ad|na|ne|hy|nh|ti|ds|de|if|ie|el|tr|so|\\\"|EX|EE|UR|UE|MT|ME|SY|YS|OP)\b ?(.*)$")


def python_doc_sections(min_chars: int = 400, target: int = 3000) -> list[str]:
    out = []
    # python3, python3-dev, python3.11-venv, ... are symlinks to one folder: read each file once.
    files = {os.path.realpath(p) for p in glob.glob("/usr/share/doc/python3*/html/_sources/**/*.txt", recursive=True)}
    for path in sorted(files):
        cur: list[str] = []
        size = 0
        for para in Path(path).read_text(errors="replace").split("\n\n"):
            cur.append(para)
            size += len(para)
            if size >= target:
                out.append("\n\n".join(cur))
                cur, size = [], 0
        if size >= min_chars:
            out.append("\n\n".join(cur))
    return out


def man_pages(min_chars: int = 400) -> list[str]:
    out = []
    for path in sorted(glob.glob("/usr/share/man/man[1-8]/*.gz")):
        try:
            raw = gzip.decompress(Path(path).read_bytes()).decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        text = strip_troff(raw)
        if len(text) >= min_chars and not text.startswith(".so"):
            out.append(text)
    return out


def strip_troff(raw: str) -> str:
    lines = []
    for line in raw.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        m = _TROFF_MACRO.match(line)
        if m:
            line = (m.group(1) or m.group(2) or "").replace('"', "")
        elif line.startswith("."):
            continue
        lines.append(_TROFF_ESCAPE.sub("", line).replace("\\-", "-").replace("\\e", "\\"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def docstrings(min_chars: int = 200) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.rglob("*.py")):
        if {"test", "tests", "site-packages", "idle_test"} & set(p.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(p.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    out.append(doc)
    return out


def base_documents() -> list[str]:
    docs = python_doc_sections() + man_pages() + docstrings()
    if sum(map(len, docs)) < 5_000_000:
        raise SystemExit("too little base text on this machine: apt-get install -y python3-doc manpages manpages-dev")
    return docs


def substitute(text: str, rng: random.Random, vocab: list[str], rate: float) -> str:
    """Replace each space-separated word with probability `rate` (line breaks and indentation stay)."""
    parts = text.split(" ")
    for i in range(len(parts)):
        if parts[i] and rng.random() < rate:
            parts[i] = rng.choice(vocab)
    return " ".join(parts)


def build_throughput_corpus(folder: Path, *, size_mb: float, files: int = 16, seed: int = 0) -> dict:
    """Write `files` JSONL files of about `size_mb` MB in total to `folder` (reused when already there)."""
    manifest = folder / "manifest.json"
    if manifest.exists():
        info = json.loads(manifest.read_text())
        if info["size_mb"] == size_mb and info["files"] == files and info["seed"] == seed:
            return info
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    base = base_documents()
    vocab = sorted({w for doc in base[:3000] for w in re.findall(r"[A-Za-z]{2,}", doc)})
    target = int(size_mb * 1e6)
    outs = [open(folder / f"part-{k:03d}.jsonl", "w", encoding="utf-8") for k in range(files)]
    written, docs = 0, 0
    recent: list[tuple[str, str]] = []  # (id, text) of the latest documents, sources for copies
    counts = {"variants": 0, "exact": 0, "near": 0}
    while written < target:
        roll = rng.random()
        record: dict = {}
        if roll < 0.06 and recent:
            kind = "exact" if roll < 0.03 else "near"
            source_id, source = rng.choice(recent)
            text = source if kind == "exact" else substitute(source, rng, vocab, 0.015)
            record = {"id": f"{kind}-{counts[kind]}", "text": text, "copy_of": source_id}
        else:
            kind, i = "variants", rng.randrange(len(base))
            record = {"id": f"v{counts[kind]}-{i}", "text": substitute(base[i], rng, vocab, 0.12)}
        counts[kind] += 1
        recent = (recent + [(record["id"], record["text"])])[-2000:]
        line = json.dumps(record, ensure_ascii=False) + "\n"
        outs[docs % files].write(line)
        written += len(line.encode())
        docs += 1
    for f in outs:
        f.close()
    info = {"size_mb": size_mb, "files": files, "seed": seed, "documents": docs, "bytes": written,
            "base_documents": len(base), "base_bytes": sum(len(d.encode()) for d in base), **counts}
    manifest.write_text(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    sources = {"python3-doc sections": python_doc_sections(), "man pages": man_pages(), "docstrings": docstrings()}
    for name, docs in sources.items():
        print(f"{name:>22}: {len(docs):7,} documents, {sum(len(d.encode()) for d in docs) / 1e6:6.1f} MB")
