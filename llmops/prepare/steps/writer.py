"""Output writers: Megatron indexed datasets (megatron-core's own builder) and JSONL.

megatron-core is imported here only, inside the functions that need it: it
pulls in torch, which the rest of ``llmops`` must not load.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import IO

import numpy as np

from llmops.prepare.document import Document
from llmops.prepare.workdir import temp_tag


def _indexed_dataset():
    from llmops_model.compat import mcore

    # "Transformer Engine and Apex are not installed": nothing to act on here
    with warnings.catch_warnings(), mcore.wandb_hidden():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def preload() -> None:
    """Import megatron-core now (before forking workers, which then share it)."""
    _indexed_dataset()


def token_dtype(vocab_size: int) -> type:
    """The smallest dtype Megatron stores these token ids in (uint16 below 65,500)."""
    return _indexed_dataset().DType.optimal_dtype(vocab_size)


class IndexedWriter:
    """One `.bin`/`.idx` pair, written under temporary names and renamed by :meth:`commit`."""

    def __init__(self, prefix: Path, vocab_size: int):
        ix = _indexed_dataset()
        self.prefix = prefix
        self.tmp = prefix.with_name(f".{prefix.name}.tmp-{temp_tag()}")
        self.dtype = token_dtype(vocab_size)
        self.builder = ix.IndexedDatasetBuilder(str(self.tmp) + ".bin", dtype=self.dtype)
        self.tokens = 0
        self.documents = 0

    def add(self, ids: np.ndarray) -> None:
        """Add one document (its token ids, end-of-document token included)."""
        import torch

        self.builder.add_document(torch.from_numpy(ids), [len(ids)])
        self.tokens += len(ids)
        self.documents += 1

    def append_dataset(self, prefix: Path) -> None:
        """Add every document of another indexed dataset (a shard's output)."""
        self.builder.add_index(str(prefix))

    def commit(self) -> None:
        self.builder.finalize(str(self.tmp) + ".idx")
        os.replace(str(self.tmp) + ".bin", str(self.prefix) + ".bin")
        os.replace(str(self.tmp) + ".idx", str(self.prefix) + ".idx")  # last: a .bin without .idx does not load

    def abort(self) -> None:
        self.builder.data_file.close()
        for suffix in (".bin", ".idx"):
            Path(str(self.tmp) + suffix).unlink(missing_ok=True)


def open_jsonl(path: Path, compression: str) -> IO[bytes]:
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).stream_writer(open(path, "wb"), closefd=True)
    if compression == "gzip":
        return gzip.open(path, "wb", compresslevel=6)
    return open(path, "wb", buffering=1 << 20)


def jsonl_suffix(compression: str) -> str:
    return {"zstd": ".jsonl.zst", "gzip": ".jsonl.gz", "none": ".jsonl"}[compression]


def document_line(doc: Document) -> bytes:
    record = {"id": doc.id, "text": doc.text, "source": doc.source}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def concatenate(parts: list[Path], out: IO[bytes]) -> int:
    """Append files byte for byte (zstd frames and gzip members concatenate into valid streams)."""
    total = 0
    for part in parts:
        with open(part, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        total += part.stat().st_size
    return total
