"""Finding the input and cutting it into units of work, then units into shards.

A unit is a whole file, a byte range of a large uncompressed JSONL file, one
Parquet row group, or one standard-library module (the built-in corpus). The
list of units depends only on the input, never on the shard count, and each
shard takes a contiguous run of units balanced by bytes: so concatenating the
shards' outputs in shard order gives the same documents, in the same order,
for any number of shards.
"""

from __future__ import annotations

import os
import stat
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

from llmops.errors import UserError
from llmops.spec.prepare import InputSpec

_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
            ".txt": "text", ".text": "text", ".md": "text", ".rst": "text"}
_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
# Standard-library folders that hold tests, vendored code or demos rather than documented API.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass(frozen=True)
class Unit:
    """A piece of input that one task reads from start to end."""

    path: str
    kind: str
    """jsonl, parquet, text or docstrings."""
    compression: str
    """none, gzip or zstd."""
    source: str
    """How documents from this unit name their origin (in ids and outputs)."""
    size: int
    """Bytes on disk, to balance shards."""
    start: int = 0
    """Byte offset (JSONL), row group (Parquet)."""
    end: int = -1
    """Byte offset where the next unit starts, or -1 for the end of the file."""

    def to_dict(self) -> dict:
        return asdict(self)


def discover(spec: InputSpec) -> tuple[list[Unit], list[str]]:
    """All units of the input, in a stable order, and the files skipped: of an unknown format, not regular files
    (a FIFO, a device), or links that lead out of the folder or pattern that found them.

    Raises UserError for a path that does not exist or a glob that matches nothing.
    """
    if spec.builtin == "python-docstrings":
        return docstring_units(), []
    files, skipped = _input_files(spec)
    units = [u for path, kind, compression in files for u in _units_of(path, kind, compression, spec.chunk_bytes)]
    return units, skipped


def listing(spec: InputSpec) -> dict[str, list[int]]:
    """Each file the input reads, with its size and modification time (ns): what tells a plan made of this input
    from one made of an earlier state of it. Only stat, never opening a file (a Parquet footer, a gzip stream):
    cheap enough to take again at every start, even for millions of files. A file rewritten in place changes
    its time; a copy that keeps size and time (``rsync -t``, ``cp -p``) of different content would go unseen."""
    paths = [u.path for u in docstring_units()] if spec.builtin else [f[0] for f in _input_files(spec)[0]]
    found = {}
    for path in paths:
        try:
            info = os.stat(path)
        except FileNotFoundError:  # deleted since it was listed: its absence says the input changed
            continue
        found[path] = [info.st_size, info.st_mtime_ns]
    return found


def _input_files(spec: InputSpec) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(path, kind, compression) of each file the input reads, in a stable order, and the files it skips."""
    files: list[tuple[str, str, str]] = []
    skipped: list[str] = []
    for i, entry in enumerate(spec.paths):
        found, left = _expand(entry, i, follow_links=spec.follow_links)
        skipped += left
        for path, listed in found:
            kind, compression = _format_of(path, spec.format)
            if kind is None:
                if listed:
                    raise UserError(f"prepare.input.paths[{i}] = {path!r}: cannot tell the format from the name",
                                    "name it .jsonl/.parquet/.txt (optionally .gz/.zst), or set input.format")
                skipped.append(path)
                continue
            files.append((path, kind, compression))
    return files, skipped


def _expand(entry: str, i: int, *, follow_links: bool = False) -> tuple[list[tuple[str, bool]], list[str]]:
    """(file, named explicitly) pairs for one input.paths entry, and the files it found but skips.

    A path that exists is taken as it is written, even with glob characters in its name (`data[1].jsonl`).
    Data folders come from elsewhere: a link in one may point anywhere (`/proc/self/environ`, a credentials
    file), so what a folder or a pattern finds must really lie under the folder, or the pattern's fixed part
    (unless `follow_links`)."""
    path = Path(entry)
    if path.is_file() or (path.exists() and not path.is_dir()):
        if _pseudo(os.path.realpath(path)) or not _regular(path):
            raise UserError(f"prepare.input.paths[{i}] = {entry!r}: not a data file (a device, a pipe, or a file "
                            "of /proc, /sys or /dev)", "name regular files of data")
        return [(entry, True)], []
    if path.is_dir():
        found = [p for p in path.rglob("*") if not _hidden(p.relative_to(path)) and not p.is_dir()]
        files, left = _within(found, path, follow_links)
        if not files:
            raise UserError(f"prepare.input.paths[{i}] = {entry!r}: the folder holds no file" +
                            (f" it may read ({len(left)} link(s) out of it, or special files)" if left else ""),
                            "point at a folder with data" + (_FOLLOW if left else ""))
        return [(f, False) for f in files], left
    if any(c in entry for c in "*?["):
        files, left = _glob(entry, follow_links)
        if not files:
            raise UserError(f"prepare.input.paths[{i}] = {entry!r}: the pattern matches no file" +
                            (f" it may read ({len(left)} link(s) out of its folder, or special files)" if left
                             else ""), "check the pattern, or the folder it starts from" + (_FOLLOW if left else ""))
        return [(p, False) for p in files], left
    raise UserError(f"prepare.input.paths[{i}] = {entry!r}: no such file or folder",
                    "check the path (relative paths start from the folder you run llmops in)")


def missing(entry: str) -> str | None:
    """Why an input.paths entry names no input (cheaply: the first match of a pattern is enough), or None."""
    if Path(entry).exists():
        return None
    if any(c in entry for c in "*?["):
        anchor, pattern = _split_pattern(entry)
        hit = next((p for p in anchor.glob(pattern) if p.is_file()), None)
        return None if hit else "matches no file"
    return "does not exist"


def _split_pattern(pattern: str) -> tuple[Path, str]:
    """A glob pattern's fixed folder and the rest."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    return (Path(*parts[:first]) if first else Path(".")), str(Path(*parts[first:]))


_FOLLOW = "; to read files reached through links to elsewhere, set prepare.input.follow_links: true"


def _glob(pattern: str, follow_links: bool = False) -> tuple[list[str], list[str]]:
    """Files matching a glob pattern, and those it skips (see _within). `**` descends into real folders only,
    never through a symlinked one (glob.glob follows them: a link to a parent folder made it read each file
    forty times over)."""
    anchor, rest = _split_pattern(pattern)
    return _within([p for p in anchor.glob(rest) if not p.is_dir()], anchor, follow_links)


def _within(found: list[Path], root: Path, follow_links: bool = False) -> tuple[list[str], list[str]]:
    """`found` split into regular files whose real path lies under `root`'s (anywhere but /proc, /sys and /dev
    with `follow_links`), each once, and the rest."""
    top = os.path.realpath(root)
    ok, left = [], []
    for p in found:
        real = os.path.realpath(p)
        inside = follow_links or real == top or real.startswith(top.rstrip(os.sep) + os.sep)
        (ok if inside and not _pseudo(real) and _regular(p) else left).append(p)
    return _once(ok), sorted(str(p) for p in left)


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a dangling link
        return False


def _pseudo(real: str) -> bool:
    """The kernel's file systems: /proc/self/environ reads as a regular file of secrets."""
    return any(real == top or real.startswith(top + "/") for top in ("/proc", "/sys", "/dev"))


def _once(paths) -> list[str]:
    """Each file once, by its real path (two links to one file are one input), in name order."""
    seen: set[str] = set()
    out = []
    for p in sorted(paths):
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            out.append(str(p))
    return out


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _format_of(path: str, forced: str) -> tuple[str | None, str]:
    name = path.lower()
    compression = "none"
    for ext, comp in _COMPRESSION.items():
        if name.endswith(ext):
            compression, name = comp, name[: -len(ext)]
    if forced != "auto":
        return forced, compression
    return _FORMATS.get(os.path.splitext(name)[1]), compression


def _source_name(path: str) -> str:
    """A path as documents name their origin: text, whatever bytes the file name holds (a name that is not
    UTF-8 comes from the file system with surrogates, which no output file could encode)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _units_of(path: str, kind: str, compression: str, chunk_bytes: int) -> list[Unit]:
    size = os.path.getsize(path)
    source = _source_name(path)
    if kind == "parquet":
        return _parquet_units(path)
    if kind == "jsonl" and compression == "none" and size > chunk_bytes:
        starts = range(0, size, chunk_bytes)
        return [Unit(path, kind, compression, source, min(chunk_bytes, size - s), s,
                     s + chunk_bytes if s + chunk_bytes < size else -1) for s in starts]
    return [Unit(path, kind, compression, source, size)]


def _parquet_units(path: str) -> list[Unit]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...: all mean "not a Parquet file"
        raise UserError(f"{path}: cannot be read as Parquet ({exc})", "check the file, or set input.format") from None
    return [Unit(path, "parquet", "none", _source_name(path), meta.row_group(g).total_byte_size, g, g + 1)
            for g in range(meta.num_row_groups)]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def docstring_units() -> list[Unit]:
    """One unit per module of this interpreter's standard library (tests and vendored code left out)."""
    root = stdlib_root()
    units = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if _STDLIB_SKIP.intersection(rel.parts[:-1]) or rel.parts[0].startswith("test"):
            continue
        units.append(Unit(str(p), "docstrings", "none", rel.as_posix(), p.stat().st_size))
    return units


def assign(units: list[Unit], num_shards: int) -> list[list[int]]:
    """Contiguous runs of unit indices, one per shard, balanced by bytes (some may be empty)."""
    total = sum(u.size for u in units) or 1
    shards: list[list[int]] = [[] for _ in range(num_shards)]
    seen = 0
    for i, u in enumerate(units):
        middle = seen + u.size / 2
        shards[min(num_shards - 1, int(middle * num_shards / total))].append(i)
        seen += u.size
    return shards
