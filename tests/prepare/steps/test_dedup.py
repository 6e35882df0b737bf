"""The global decision: earliest kept, exact groups, verified near-duplicate clusters."""

from __future__ import annotations

import random

import numpy as np

from llmops.prepare.document import Document
from llmops.prepare.steps.dedup import EXACT, KEPT, NEAR, deduplicate
from llmops.prepare.steps.minhash import exact_hash, permutations, shingles, signature
from llmops.spec.prepare import DedupSpec
from llmops_testing.prepare import make_text


def arrays(texts: list[str], spec: DedupSpec) -> tuple[np.ndarray, np.ndarray]:
    perms = permutations(spec.num_perm, spec.seed)
    docs = [Document(str(i), t, "s", i) for i, t in enumerate(texts)]
    exact = np.array([exact_hash(d) for d in docs], dtype=np.uint64)
    sigs = np.vstack([signature(shingles(d, spec.ngram), perms) for d in docs])
    return exact, sigs


def replace_words(text: str, positions: list[int]) -> str:
    words = text.split(" ")
    for p in positions:
        words[p] = "zzz" + words[p]
    return " ".join(words)


def test_earliest_member_is_kept_and_every_other_points_at_it():
    rng = random.Random(0)
    a, b, c = (make_text(rng, 150) for _ in range(3))
    texts = [a, b, a.upper(), replace_words(b, [40]), c, replace_words(b, [90]), a]
    spec = DedupSpec()
    d = deduplicate(*arrays(texts, spec), spec)
    assert d.kind.tolist() == [KEPT, KEPT, EXACT, NEAR, KEPT, NEAR, EXACT]
    assert d.duplicate_of.tolist() == [-1, -1, 0, 1, -1, 1, 0]
    assert d.exact_clusters == 1 and d.near_clusters == 1 and d.largest_cluster == 3
    assert 0.8 < d.similarity[3] < 1.0 and d.similarity[2] == 1.0


def test_pairs_below_the_threshold_are_kept():
    rng = random.Random(1)
    base = make_text(rng, 200)
    words = len(base.split(" "))
    far = replace_words(base, list(range(0, words, 4)))  # a changed word every fourth: 5-gram Jaccard ~0
    spec = DedupSpec()
    d = deduplicate(*arrays([base, far], spec), spec)
    assert d.kind.tolist() == [KEPT, KEPT]


def test_chained_near_duplicates_form_one_cluster_kept_at_its_earliest():
    rng = random.Random(2)
    a = make_text(rng, 300)
    b = replace_words(a, [30, 130])
    c = replace_words(b, [200, 260])
    spec = DedupSpec()
    d = deduplicate(*arrays([c, b, a], spec), spec)
    assert d.kind.tolist() == [KEPT, NEAR, NEAR] and d.duplicate_of.tolist() == [-1, 0, 0]


def test_copies_of_a_near_duplicate_name_the_document_that_is_kept():
    """Exact groups are formed first: the first copy of a group may then be dropped as a near duplicate of an
    earlier document, and its copies point past it, at the one kept (`via` names the copy they match)."""
    rng = random.Random(4)
    a = make_text(rng, 200)
    b = replace_words(a, [60])
    spec = DedupSpec()
    d = deduplicate(*arrays([a, b, b, a, b], spec), spec)
    assert d.kind.tolist() == [KEPT, NEAR, EXACT, EXACT, EXACT]
    assert d.duplicate_of.tolist() == [-1, 0, 0, 0, 0] and d.via.tolist() == [-1, -1, 1, -1, 1]
    assert d.similarity[2] == d.similarity[1] < 1.0 and d.similarity[3] == 1.0
    assert d.largest_cluster == 5


def test_switches_and_empty_signatures():
    rng = random.Random(3)
    a = make_text(rng, 120)
    texts = [a, a, replace_words(a, [50]), "!!! ???", "... ---"]
    exact_only = DedupSpec(near=False)
    exact, sigs = arrays(texts, DedupSpec())
    assert deduplicate(exact, sigs[:, :0], exact_only).kind.tolist() == [KEPT, EXACT, KEPT, KEPT, EXACT]
    near_only = DedupSpec(exact=False)
    # Two documents without words have empty signatures: never near-duplicates of each other.
    assert deduplicate(exact, sigs, near_only).kind.tolist() == [KEPT, NEAR, NEAR, KEPT, KEPT]


def test_default_lsh_bands_catch_pairs_at_the_threshold():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        spec = DedupSpec(threshold=threshold)
        bands, rows = spec.lsh_params()
        assert bands * rows <= spec.num_perm
        assert 1 - (1 - threshold**rows) ** bands >= 0.995
    assert DedupSpec(bands=16, rows=8).lsh_params() == (16, 8)
