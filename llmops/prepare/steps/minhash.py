"""MinHash signatures and exact-duplicate hashes, computed in the map phase.

Signatures are datasketch's own: the ``affine32`` scheme of
:class:`datasketch.MinHash` (a MurmurHash3 pre-mix of each 32-bit shingle
hash, then ``a*h + b mod 2**32`` with datasketch's permutation parameters for
the seed). We compute them for all shingles of a document in one vector
operation instead of datasketch's per-shingle Python hashing; a test checks
the values equal ``MinHash.update_batch`` exactly, so the reduce phase can
hand them to :class:`datasketch.MinHashLSH` as ordinary MinHash objects.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import xxhash

from llmops.prepare.document import Document, ngram_hashes
from llmops.prepare.steps.base import PipelineStep
from llmops.spec.prepare import DedupSpec

EMPTY = np.uint32(0xFFFFFFFF)  # datasketch's initial value: a signature of no shingles
_BLOCK = 4096


def permutations(num_perm: int, seed: int) -> np.ndarray:
    """datasketch's affine32 permutation parameters (a 2 x num_perm uint32 array) for this seed."""
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before permuting."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def shingles(doc: Document, ngram: int) -> np.ndarray:
    """32-bit hashes of the document's word n-grams (one shingle of all words when there are fewer)."""
    words = doc.norm_hashes
    n = min(ngram, len(words))
    if n == 0:
        return np.empty(0, dtype=np.uint32)
    return (ngram_hashes(words, n) >> np.uint64(32)).astype(np.uint32)


def signature(shingle_hashes: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """The MinHash of a set of 32-bit shingle hashes (all EMPTY for an empty set)."""
    out = np.full(perms.shape[1], EMPTY, dtype=np.uint32)
    a, b = perms
    # Blocks bound the (shingles x num_perm) temporary for very long documents.
    for start in range(0, len(shingle_hashes), _BLOCK):
        mixed = fmix32(shingle_hashes[start:start + _BLOCK]).reshape(-1, 1)
        np.minimum(out, (mixed * a + b).min(axis=0), out=out)
    return out


def exact_hash(doc: Document) -> int:
    """64-bit hash of the normalised words: equal for texts that differ only in case, punctuation, spacing."""
    return xxhash.xxh3_64_intdigest(doc.norm_hashes.tobytes())


class Signatures(PipelineStep):
    """Passes documents on unchanged, writing each one's (exact hash, size) and MinHash signature.

    The records go straight to two binary files, so a shard's memory does not
    grow with its size: `exact_out` gets two uint64 per document, `sig_out`
    `num_perm` uint32 (nothing when near-duplicate detection is off).
    """

    name = "minhash"

    def __init__(self, spec: DedupSpec, exact_out: BinaryIO, sig_out: BinaryIO):
        super().__init__()
        self.spec, self.exact_out, self.sig_out = spec, exact_out, sig_out
        self.perms = permutations(spec.num_perm, spec.seed) if spec.near else None

    def run(self, docs: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        stats, clock = self.stats, time.perf_counter
        for doc in docs:
            start = clock()
            self.exact_out.write(np.array([exact_hash(doc), doc.nbytes], dtype=np.uint64).tobytes())
            if self.perms is not None:
                sh = shingles(doc, self.spec.ngram)
                stats.totals["shingles"] += len(sh)
                self.sig_out.write(signature(sh, self.perms).tobytes())
            stats.seconds += clock() - start
            stats.docs_in += 1
            stats.docs_out += 1
            stats.bytes_in += doc.nbytes
            stats.bytes_out += doc.nbytes
            yield doc


def read_exact(path: Path) -> np.ndarray:
    """(n, 2) uint64: exact hash and UTF-8 size per document."""
    return np.fromfile(path, dtype=np.uint64).reshape(-1, 2)


def read_signatures(path: Path, num_perm: int) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint32).reshape(-1, num_perm)
