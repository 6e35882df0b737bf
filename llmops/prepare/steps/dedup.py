"""The global deduplication reduce: every shard's hashes and signatures, one decision.

Documents are numbered in global order (shard by shard, each in its input
order), and the earliest document of each duplicate group is kept, so the
result does not depend on how the input was sharded.

1. Exact: documents with the same hash of normalised words form a group.
2. Near: the remaining documents go through :class:`datasketch.MinHashLSH`
   (banded signatures; groups of bands in parallel processes); every
   candidate pair whose estimated Jaccard similarity (the share of equal
   signature values) reaches ``dedup.threshold`` is joined in a union-find,
   and each connected cluster keeps its earliest member.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmops.prepare.progress import Advance
from llmops.prepare.steps.minhash import EMPTY, permutations
from llmops.spec.prepare import DedupSpec


@dataclass
class Decision:
    """Per document (global order): the index of the kept document it duplicates (-1: kept), why, how
    similar, and through which dropped document (-1: directly)."""

    duplicate_of: np.ndarray
    kind: np.ndarray
    """0 kept, 1 exact duplicate, 2 near duplicate."""
    similarity: np.ndarray
    exact_clusters: int
    near_clusters: int
    largest_cluster: int
    """Documents sharing one kept document, the kept one included."""
    candidate_pairs: int
    via: np.ndarray
    """An exact duplicate whose first copy was itself dropped as a near duplicate: that first copy."""


KEPT, EXACT, NEAR = 0, 1, 2


def deduplicate(exact: np.ndarray, sigs: np.ndarray, spec: DedupSpec, progress: Advance | None = None,
                workers: int = 1) -> Decision:
    """Decide every document's fate; `workers` processes share the LSH bands."""
    n = len(exact)
    dup_of = np.full(n, -1, dtype=np.int64)
    kind = np.zeros(n, dtype=np.int8)
    sim = np.zeros(n, dtype=np.float32)
    exact_clusters = 0
    if spec.exact and n:
        _, first, inverse = np.unique(exact, return_index=True, return_inverse=True)
        keeper = first[inverse]
        dups = keeper != np.arange(n)
        dup_of[dups], kind[dups], sim[dups] = keeper[dups], EXACT, 1.0
        exact_clusters = len(np.unique(keeper[dups]))
    near_clusters, pairs = 0, 0
    if spec.near and n:
        alive = np.flatnonzero((kind == KEPT) & (sigs != EMPTY).any(axis=1))
        parent, pairs = _near_pairs(sigs, alive, spec, progress, workers)
        near_clusters = _apply_clusters(parent, sigs, dup_of, kind, sim)
    # The first of a group of exact copies may itself be a near duplicate of an earlier document (near
    # clustering runs after the exact groups): its copies then duplicate that earlier, kept, document.
    via = np.full(n, -1, dtype=np.int64)
    chained = np.flatnonzero(kind == EXACT)
    chained = chained[kind[dup_of[chained]] == NEAR]
    via[chained] = dup_of[chained]
    dup_of[chained], sim[chained] = dup_of[via[chained]], sim[via[chained]]
    return Decision(dup_of, kind, sim, exact_clusters, near_clusters, _largest(dup_of), pairs, via)


def _largest(dup_of: np.ndarray) -> int:
    """Size of the largest group of documents that share one kept document."""
    if len(dup_of) == 0:
        return 0
    return int(np.bincount(np.where(dup_of >= 0, dup_of, np.arange(len(dup_of)))).max())


def _near_pairs(sigs: np.ndarray, alive: np.ndarray, spec: DedupSpec, progress: Advance | None,
                workers: int) -> tuple[dict[int, int], int]:
    """Union-find parents (global index -> parent) of documents with a verified near-duplicate.

    The LSH bands are independent, so `workers` processes each index a group of
    them (its own MinHashLSH over those columns of the signatures); the
    candidate pairs of all groups are verified against whole signatures here.
    """
    bands, rows = spec.lsh_params()
    groups = [g for g in np.array_split(np.arange(bands), max(1, min(workers, bands))) if len(g)]
    jobs = [(sigs, alive, int(g[0]) * rows, len(g), rows, spec.seed, progress, len(groups)) for g in groups]
    if len(jobs) == 1:
        found = [_candidates(jobs[0])]
    else:
        from llmops.prepare import workers as worker_pool

        global _JOBS
        _JOBS = jobs  # inherited by the forked workers: the signatures are not copied through a pipe
        found = worker_pool.ordered(len(jobs), _candidates_of, list(range(len(jobs))), what="prepare dedup")
    pairs = np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
    n = len(sigs)
    first, second = pairs // n, pairs % n
    parent: dict[int, int] = {}
    for start in range(0, len(pairs), 65536):  # blocks bound the (pairs x num_perm) comparison
        a, b = first[start:start + 65536], second[start:start + 65536]
        keep = (sigs[a] == sigs[b]).mean(axis=1) >= spec.threshold
        for i, j in zip(a[keep].tolist(), b[keep].tolist()):
            _union(parent, i, j)
    return parent, len(pairs)


_JOBS: list = []


def _candidates_of(index: int) -> np.ndarray:
    return _candidates(_JOBS[index])


def _candidates(job: tuple) -> np.ndarray:
    """Candidate pairs (encoded later * n + earlier) from one group of LSH bands, via datasketch."""
    from datasketch import MinHash, MinHashLSH

    sigs, alive, first_col, bands, rows, seed, progress, groups = job
    width = bands * rows
    cols = slice(first_col, first_col + width)
    lsh = MinHashLSH(num_perm=width, params=(bands, rows))
    perms = permutations(sigs.shape[1], seed)[:, cols].copy()
    n, out = len(sigs), []
    for count, i in enumerate(alive.tolist()):
        m = MinHash(num_perm=width, seed=seed, hashvalues=sigs[i, cols], permutations=perms, scheme="affine32")
        # Query before inserting: every candidate is an earlier document, each pair is seen once.
        out += [i * n + j for j in lsh.query(m)]
        lsh.insert(i, m, check_duplication=False)
        if progress is not None and count % 256 == 255:
            progress(256 / groups)
    if hasattr(progress, "flush"):  # a Tracker in a forked worker: what it batched would be lost
        progress.flush()
    return np.array(out, dtype=np.int64)


def _find(parent: dict[int, int], x: int) -> int:
    root = x
    while parent.get(root, root) != root:
        root = parent[root]
    while parent.get(x, x) != root:  # path compression
        parent[x], x = root, parent[x]
    return root


def _union(parent: dict[int, int], a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        lo, hi = min(ra, rb), max(ra, rb)
        parent[hi] = lo  # the root is always the earliest member: it is the one kept
        parent.setdefault(lo, lo)


def _apply_clusters(parent: dict[int, int], sigs: np.ndarray, dup_of: np.ndarray, kind: np.ndarray,
                    sim: np.ndarray) -> int:
    """Mark every non-root member as a near duplicate of its cluster's root; returns the cluster count."""
    roots = set()
    for x in list(parent):
        root = _find(parent, x)
        roots.add(root)
        if root != x:
            dup_of[x], kind[x] = root, NEAR
            sim[x] = float((sigs[x] == sigs[root]).mean())
    return len(roots)
