"""Reading units into documents. Bad records are returned as :class:`Bad`, never raised.

Every record of the input either becomes a :class:`Document` or a :class:`Bad`
with a reason (invalid_utf8, malformed_json, missing_text_field,
text_not_a_string, empty, too_large, unreadable_file), so nothing is lost
silently and one bad line never stops a run.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from llmops.prepare.document import Document
from llmops.prepare.progress import Advance
from llmops.prepare.sources import Unit, assign
from llmops.prepare.steps.base import PipelineStep
from llmops.spec.prepare import InputSpec

RAW_KEEP = 2000  # characters of a bad record kept in the quarantine file


def _ignore(amount: float) -> None:
    pass


@dataclass
class Bad:
    """An input record that is not a usable document, and why."""

    source: str
    position: int
    reason: str
    detail: str
    raw: str

    def to_dict(self) -> dict:
        return {"source": self.source, "position": self.position, "reason": self.reason,
                "detail": self.detail, "raw": self.raw}


def read_unit(unit: Unit, spec: InputSpec, progress: Advance = _ignore) -> Iterator[tuple[Document | Bad, int]]:
    """(document or bad record, input bytes it took) for each record of the unit, in order.

    `progress` is told how many bytes of the file on disk (compressed or not) have been read.
    """
    try:
        if unit.kind == "jsonl":
            yield from _jsonl(unit, spec, progress)
        elif unit.kind == "text":
            yield _text_file(unit, spec)
        elif unit.kind == "parquet":
            yield from _parquet(unit, spec)
        elif unit.kind == "docstrings":
            yield from _docstrings(unit)
        else:
            raise ValueError(f"unknown unit kind {unit.kind!r}")
    except (OSError, EOFError, zlib.error, SyntaxError, ValueError) as exc:
        # A truncated archive, a vanished file, a corrupt Parquet page: the records
        # read so far stand, the rest of the unit is one quarantined record.
        yield Bad(unit.source, -1, "unreadable_file", f"{type(exc).__name__}: {exc}", ""), 0


def _open(unit: Unit) -> tuple[BinaryIO, BinaryIO]:
    """(decompressed stream, the file on disk): the second tells how far into the file we are."""
    raw = open(unit.path, "rb", buffering=1 << 20)
    if unit.compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if unit.compression == "zstd":
        return io.BufferedReader(_Zstd(raw), 1 << 20), raw
    return raw, raw


class _Zstd(io.RawIOBase):
    """A zstd file, frame after frame. zstandard's stream reader ends silently where a truncated file ends
    inside a frame (every record of a cut download vanishes, none quarantined); this one raises EOFError
    there, and ValueError for data that is not zstd, after handing over what came before.

    Its decompression object has no output limit, and zstd expands up to ~32,768 times (a block of one
    repeated byte is 4 bytes): fed a MiB at once, a crafted file of kilobytes became gigabytes in one call.
    It is fed :data:`_PIECE` bytes at a time, so one call yields at most ~32 MiB (at no measurable cost:
    100 MB of text decompressed in the same 0.10 s fed 2 KiB or 1 MiB at a time)."""

    _PIECE = 1 << 10

    def __init__(self, raw: BinaryIO):
        import zstandard

        self._raw, self._error = raw, zstandard.ZstdError
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._frame, self._in_frame = self._new(), False
        self._pending = memoryview(b"")  # compressed bytes read but not yet fed
        self._out, self._at = b"", 0  # decompressed bytes, and how many of them were handed over

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._at == len(self._out):
            if not self._pending:
                chunk = self._raw.read(1 << 20)
                if not chunk:
                    if self._in_frame:
                        raise EOFError("the zstd data ends inside a frame: the file is truncated")
                    return 0
                self._pending = memoryview(chunk)
            piece, self._pending = self._pending[:self._PIECE], self._pending[self._PIECE:]
            self._out, self._at = self._feed(piece), 0
        n = min(len(buffer), len(self._out) - self._at)
        buffer[:n] = memoryview(self._out)[self._at:self._at + n]
        self._at += n
        return n

    def _feed(self, data) -> bytes:
        out = []
        while data:
            try:
                out.append(self._frame.decompress(data))
            except self._error as exc:
                raise ValueError(f"not zstd data, or corrupt: {exc}") from None
            self._in_frame = not self._frame.eof
            data = b""
            if self._frame.eof:
                data, self._frame = self._frame.unused_data, self._new()
        return b"".join(out)


def _jsonl(unit: Unit, spec: InputSpec, progress: Advance) -> Iterator[tuple[Document | Bad, int]]:
    # JSON escapes can triple a text's size; longer lines are skipped unread.
    limit = 3 * spec.max_document_bytes + (1 << 20)
    f, raw = _open(unit)
    with raw, f:
        pos = unit.start
        if unit.start > 0:  # the line that straddles the boundary belongs to the previous unit
            f.seek(unit.start - 1)
            pos = unit.start - 1
            while piece := f.readline(1 << 20):  # in pieces: the line may be the rest of a huge file
                pos += len(piece)
                if piece.endswith(b"\n"):
                    break
        told = raw.tell()
        while unit.end < 0 or pos < unit.end:
            line = f.readline(limit)
            if not line:
                return
            n = len(line)
            if n == limit and not line.endswith(b"\n"):
                while (more := f.readline(1 << 20)) and not more.endswith(b"\n"):
                    n += len(more)
                n += len(more)
                yield Bad(unit.source, pos, "too_large", f"a line of {n:,} bytes",
                          line[:RAW_KEEP].decode("utf-8", "replace")), n
            elif line.strip():
                yield _json_record(line, unit.source, pos, spec), n
            pos += n
            if raw.tell() - told >= 1 << 20:
                progress(raw.tell() - told)
                told = raw.tell()


def _json_record(line: bytes, source: str, pos: int, spec: InputSpec) -> Document | Bad:
    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Bad(source, pos, "invalid_utf8", str(exc), line[:RAW_KEEP].decode("utf-8", "replace"))
    if pos == 0:  # a byte order mark that some editors put at the start of a file
        s = s.removeprefix("\ufeff")
    try:
        obj = json.loads(s)
    except ValueError as exc:
        return Bad(source, pos, "malformed_json", str(exc), s[:RAW_KEEP])
    except RecursionError:
        return Bad(source, pos, "malformed_json", "nested too deeply", s[:RAW_KEEP])
    if not isinstance(obj, dict):
        return Bad(source, pos, "malformed_json", f"a JSON {type(obj).__name__}, not an object", s[:RAW_KEEP])
    doc_id = obj.get(spec.id_field) if spec.id_field else None
    return _document(obj.get(spec.text_field, _MISSING), doc_id, source, pos, spec, raw=s)


_MISSING = object()


MAX_ID_BYTES = 1024


def _document(text: object, doc_id: object, source: str, pos: int, spec: InputSpec, *, raw: str) -> Document | Bad:
    """Check one record's text and make it a document, or say why not."""
    if text is _MISSING or text is None:
        return Bad(source, pos, "missing_text_field", f"no {spec.text_field!r} field", raw[:RAW_KEEP])
    if not isinstance(text, str):
        return Bad(source, pos, "text_not_a_string", f"{spec.text_field!r} is a {type(text).__name__}",
                   raw[:RAW_KEEP])
    try:
        nbytes = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate from a "\ud800" escape
        return Bad(source, pos, "invalid_utf8", str(exc), raw[:RAW_KEEP])
    if nbytes > spec.max_document_bytes:
        return Bad(source, pos, "too_large", f"{nbytes:,} bytes > input.max_document_bytes", text[:RAW_KEEP])
    if not text.strip():
        return Bad(source, pos, "empty", "no text", raw[:RAW_KEEP])
    if doc_id is None or doc_id == "":
        doc_id = f"{source}#{pos}"
    try:
        id_bytes = len(str(doc_id).encode("utf-8"))
    except UnicodeEncodeError as exc:  # an id with a lone surrogate, or a file name that is not UTF-8
        return Bad(source, pos, "invalid_utf8", f"the id: {exc}", raw[:RAW_KEEP])
    if id_bytes > MAX_ID_BYTES:  # an id is a name: a text in the id field was a second copy of a document
        return Bad(source, pos, "id_too_large", f"an id of {id_bytes:,} bytes > {MAX_ID_BYTES:,}", raw[:RAW_KEEP])
    return Document(str(doc_id), text, source, pos, nbytes)


def _text_file(unit: Unit, spec: InputSpec) -> tuple[Document | Bad, int]:
    f, raw = _open(unit)
    with raw, f:
        data = f.read(spec.max_document_bytes + 1)
        if len(data) > spec.max_document_bytes:
            rest = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))
            return Bad(unit.source, 0, "too_large", f"{len(data) + rest:,} bytes > input.max_document_bytes",
                       data[:RAW_KEEP].decode("utf-8", "replace")), len(data) + rest
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Bad(unit.source, 0, "invalid_utf8", str(exc), data[:RAW_KEEP].decode("utf-8", "replace")), len(data)
    return _document(text, unit.source, unit.source, 0, spec, raw=text[:RAW_KEEP]), len(data)


def _parquet(unit: Unit, spec: InputSpec) -> Iterator[tuple[Document | Bad, int]]:
    """One row group, :data:`_PARQUET_BATCH_ROWS` rows at a time, each value's size looked at in Arrow before it
    becomes a Python string.

    The row group's size in the file says nothing of its size decoded: a dictionary page holds a value once
    for any number of rows, a DELTA_BYTE_ARRAY page a prefix once for every row (50 kB on disk were 80 GB of
    text, 2 kB were 2 GB). So batches are a few rows, and a value over input.max_document_bytes is quarantined
    from its length alone. Whatever Arrow refuses in the file (a schema it cannot map, a page it cannot
    decode, a value it cannot convert) ends the unit as one quarantined record, like a corrupt page."""
    import pyarrow as pa

    try:
        yield from _parquet_rows(unit, spec)
    except (pa.lib.ArrowException, KeyError, IndexError, OverflowError, MemoryError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def _parquet_rows(unit: Unit, spec: InputSpec) -> Iterator[tuple[Document | Bad, int]]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(unit.path)
    names = pf.schema_arrow.names
    rows = pf.metadata.row_group(unit.start).num_rows
    first = sum(pf.metadata.row_group(g).num_rows for g in range(unit.start))
    per_row = max(1, unit.size // max(1, rows))
    if spec.text_field not in names:
        for i in range(rows):
            yield _document(_MISSING, None, unit.source, first + i, spec, raw=""), per_row
        return
    columns = [c for c in (spec.text_field, spec.id_field) if c and c in names]
    twice = [c for c in columns if names.count(c) > 1]
    if twice:
        raise ValueError(f"the column {twice[0]!r} appears {names.count(twice[0])} times in the file's schema")
    pos = first
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[unit.start], columns=columns):
        # As bytes: Arrow does not check UTF-8, and one bad value failed the whole batch's to_pylist (the rest of
        # the row group lost, as one bad record)
        column = _as_bytes(batch.column(spec.text_field))
        sizes = pc.binary_length(column).to_pylist() if _is_text(column.type) else [None] * batch.num_rows
        big = [n is not None and n > spec.max_document_bytes for n in sizes]
        texts = column.to_pylist() if not any(big) else [None if b else column[i].as_py() for i, b in enumerate(big)]
        ids = (_as_bytes(batch.column(spec.id_field)).to_pylist() if spec.id_field in columns
               else [None] * batch.num_rows)
        for i, (text, doc_id) in enumerate(zip(texts, ids)):
            if isinstance(doc_id, bytes):
                try:
                    doc_id = doc_id.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield Bad(unit.source, pos, "invalid_utf8", f"the id: {exc}", ""), per_row
                    pos += 1
                    continue
            if big[i]:  # never made a Python string
                head = pc.binary_slice(column.slice(i, 1).cast("binary"), 0, RAW_KEEP)[0].as_py()
                yield Bad(unit.source, pos, "too_large", f"{sizes[i]:,} bytes > input.max_document_bytes",
                          head.decode("utf-8", "replace")), per_row
                pos += 1
                continue
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield Bad(unit.source, pos, "invalid_utf8", str(exc),
                              text[:RAW_KEEP].decode("utf-8", "replace")), per_row
                    pos += 1
                    continue
            raw = text[:RAW_KEEP] if isinstance(text, str) else ""
            yield _document(text, doc_id, unit.source, pos, spec, raw=raw), per_row
            pos += 1


def _as_bytes(column):
    """A text column as the bytes it holds (no copy), decoded row by row; categories decoded first."""
    import pyarrow as pa

    if pa.types.is_dictionary(column.type):  # pandas categories: the few rows of a batch, decoded, are small
        column = column.dictionary_decode()
    if pa.types.is_string(column.type):
        return column.view(pa.binary())
    if pa.types.is_large_string(column.type):
        return column.view(pa.large_binary())
    return column


def _is_text(kind) -> bool:
    import pyarrow as pa

    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind))


# Rows per batch: a batch holds at most this many values of input.max_document_bytes (5 MB by default) decoded
_PARQUET_BATCH_ROWS = 32


def _docstrings(unit: Unit) -> Iterator[tuple[Document | Bad, int]]:
    """Docstrings of one module, found by parsing (importing could run arbitrary code)."""
    with open(unit.path, "rb") as f:
        source = f.read()
    tree = ast.parse(source, filename=unit.path)
    per_doc = 0
    found = list(_walk_docstrings(tree, ""))
    if found:
        per_doc = len(source) // len(found)
    seen: set[str] = set()
    for qualname, lineno, text in found:
        name = qualname if qualname not in seen else f"{qualname}@{lineno}"  # a def repeated under if/else
        seen.add(name)
        yield Document(f"python-docstrings:{unit.source}:{name}", text, unit.source, lineno), per_doc


_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _walk_docstrings(node: ast.AST, prefix: str) -> Iterator[tuple[str, int, str]]:
    """(qualified name, line, docstring) of a module and every class and function in it.

    Only statement bodies are searched (a def cannot hide in an expression),
    which skips most of the tree.
    """
    if isinstance(node, (ast.Module, *_DEFS)):
        text = ast.get_docstring(node, clean=True)
        if text and text.strip():
            yield prefix or "<module>", getattr(node, "lineno", 0), text
    for field in ("body", "orelse", "finalbody", "handlers", "cases"):
        for child in getattr(node, field, None) or ():
            if isinstance(child, _DEFS):
                yield from _walk_docstrings(child, f"{prefix}.{child.name}" if prefix else child.name)
            elif isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                yield from _walk_docstrings(child, prefix)


class Reader(PipelineStep):
    """The first step: this shard's units, as documents; bad records go to `quarantine`."""

    name = "read"

    def __init__(self, units: list[Unit], spec: InputSpec, quarantine: Callable[[Bad], None],
                 progress: Advance = _ignore):
        super().__init__()
        self.units, self.spec, self.quarantine, self.progress = units, spec, quarantine, progress

    def run(self, docs: Iterable[Document] | None = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        stats, clock = self.stats, time.perf_counter
        for index in assign(self.units, world_size)[rank]:
            unit = self.units[index]
            told = 0

            def tell(amount: float) -> None:
                nonlocal told
                told += amount
                self.progress(amount)

            records = read_unit(unit, self.spec, tell)
            while True:
                start = clock()
                item = next(records, None)
                stats.seconds += clock() - start
                if item is None:
                    break
                record, nbytes = item
                stats.docs_in += 1
                stats.bytes_in += nbytes
                if isinstance(record, Bad):
                    stats.drop(record.reason)
                    self.quarantine(record)
                    continue
                stats.docs_out += 1
                stats.bytes_out += record.nbytes
                yield record
            self.progress(max(0, unit.size - told))
