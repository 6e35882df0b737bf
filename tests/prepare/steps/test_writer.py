"""Writers: megatron-core's indexed dataset (all or nothing), JSONL that concatenates."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
import zstandard

from llmops.prepare.document import Document
from llmops.prepare.steps.writer import IndexedWriter, concatenate, document_line, open_jsonl, token_dtype


def read(prefix) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix))
    return [np.array(ds[i]).tolist() for i in range(len(ds))]


def test_documents_read_back_through_megatron_exactly(tmp_path):
    w = IndexedWriter(tmp_path / "a", vocab_size=1000)
    for doc in ([5, 6, 7, 2], [9, 2], [2]):
        w.add(np.array(doc, dtype=w.dtype))
    assert not (tmp_path / "a.bin").exists(), "nothing under the final name before commit"
    w.commit()
    assert read(tmp_path / "a") == [[5, 6, 7, 2], [9, 2], [2]]
    assert token_dtype(1000) == np.uint16 and token_dtype(100_000) == np.int32


def test_shards_merge_in_order_and_an_abort_leaves_nothing(tmp_path):
    for name, docs in (("s0", [[1, 2], [3, 2]]), ("s1", []), ("s2", [[4, 4, 2]])):
        w = IndexedWriter(tmp_path / name, vocab_size=50)
        for d in docs:
            w.add(np.array(d, dtype=w.dtype))
        w.commit()
    merged = IndexedWriter(tmp_path / "all", vocab_size=50)
    for name in ("s0", "s1", "s2"):
        merged.append_dataset(tmp_path / name)
    merged.commit()
    assert read(tmp_path / "all") == [[1, 2], [3, 2], [4, 4, 2]]
    broken = IndexedWriter(tmp_path / "broken", vocab_size=50)
    broken.add(np.array([1, 2], dtype=broken.dtype))
    broken.abort()
    assert sorted(p.name for p in tmp_path.iterdir() if "broken" in p.name) == []


@pytest.mark.parametrize("compression, decompress", [
    ("zstd", lambda b: zstandard.ZstdDecompressor().stream_reader(io.BytesIO(b)).read()),
    ("gzip", gzip.decompress),
    ("none", lambda b: b),
])
def test_jsonl_parts_concatenate_into_one_valid_stream(tmp_path, compression, decompress):
    parts = []
    for k in range(3):
        path = tmp_path / f"part{k}"
        f = open_jsonl(path, compression)
        f.write(document_line(Document(f"id-{k}", f"text {k} ✓", "src", 0)))
        f.close()
        parts.append(path)
    out = io.BytesIO()
    concatenate(parts, out)
    lines = decompress(out.getvalue()).decode().splitlines()
    assert [json.loads(x) for x in lines] == [{"id": f"id-{k}", "text": f"text {k} ✓", "source": "src"}
                                             for k in range(3)]
