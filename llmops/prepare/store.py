"""The documents a shard keeps between phases: an Arrow IPC file, read back memory-mapped.

Arrow keeps the texts in one buffer per batch, so the tokenize phase and the
tokenizer trainer read them without parsing, and the reduce phase reads the
id column alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from llmops.prepare.document import Document

BATCH, BATCH_CHARS = 1024, 256 << 20


def _schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("text", pa.large_string()), ("source", pa.string()),
                      ("position", pa.int64())])


class DocWriter:
    """Appends documents to an Arrow IPC file in batches."""

    def __init__(self, path: Path):
        import pyarrow as pa

        self._pa = pa
        self.sink = pa.OSFile(str(path), "wb")
        self.writer = pa.ipc.new_file(self.sink, _schema())
        self.pending: list[Document] = []
        self.pending_chars = 0
        self.count = 0

    def add(self, doc: Document) -> None:
        self.pending.append(doc)
        self.pending_chars += len(doc.text) + len(doc.id)  # at most 4 bytes each: a batch stays under 1 GiB
        # By bytes too: 1,024 documents of 5 MB (input.max_document_bytes) would pass the 2 GiB an Arrow string
        # column holds, and would all wait in memory
        if len(self.pending) >= BATCH or self.pending_chars >= BATCH_CHARS:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        docs, self.pending, self.pending_chars = self.pending, [], 0
        cols = [[d.id for d in docs], [d.text for d in docs], [d.source for d in docs], [d.position for d in docs]]
        self.writer.write_batch(self._pa.record_batch(cols, schema=_schema()))
        self.count += len(docs)

    def close(self) -> None:
        self._flush()
        self.writer.close()
        self.sink.close()


def _open(path: Path):
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(str(path), "r"))


def read_ids(path: Path) -> list[str]:
    reader = _open(path)
    out: list[str] = []
    for i in range(reader.num_record_batches):
        out += reader.get_batch(i).column(0).to_pylist()
    return out


def iter_docs(path: Path, skip: np.ndarray | None = None) -> Iterator[tuple[int, Document]]:
    """(index in the shard, document) for each document not in `skip` (sorted indices)."""
    reader = _open(path)
    drop = set(skip.tolist()) if skip is not None and len(skip) else set()
    index = 0
    for b in range(reader.num_record_batches):
        batch = reader.get_batch(b)
        ids, texts, sources, positions = (batch.column(c).to_pylist() for c in range(4))
        for doc_id, text, source, position in zip(ids, texts, sources, positions):
            if index not in drop:
                yield index, Document(doc_id, text, source, position)
            index += 1
