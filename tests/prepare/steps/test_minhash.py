"""Signatures: exactly datasketch's MinHash, estimates that track true Jaccard, exact hashes that ignore case."""

from __future__ import annotations

import io
import random

import numpy as np
from datasketch import MinHash

from llmops.prepare.document import Document, ngram_hashes
from llmops.prepare.steps.minhash import (
    EMPTY,
    Signatures,
    exact_hash,
    permutations,
    read_exact,
    read_signatures,
    shingles,
    signature,
)
from llmops.spec.prepare import DedupSpec
from llmops_testing.prepare import edit, make_text


def doc(text: str) -> Document:
    return Document("d", text, "s", 0)


def test_signatures_equal_datasketch_update_batch_bit_for_bit():
    text = make_text(random.Random(1), 300)
    sh = shingles(doc(text), 5)
    ours = signature(sh, permutations(128, 7))
    reference = MinHash(num_perm=128, seed=7, hashfunc=int)
    reference.update_batch(sh.tolist())
    assert reference.scheme == "affine32" and np.array_equal(ours, reference.hashvalues)


def test_long_documents_are_hashed_in_blocks_with_the_same_result():
    # 20,000 shingles: five blocks of the (shingles x num_perm) product.
    sh = np.random.default_rng(0).integers(0, 2**32, size=20_000, dtype=np.uint32)
    perms = permutations(64, 1)
    reference = MinHash(num_perm=64, seed=1, hashfunc=int)
    reference.update_batch(sh.tolist())
    assert np.array_equal(signature(sh, perms), reference.hashvalues)


def jaccard5(a: str, b: str) -> float:
    sa, sb = set(shingles(doc(a), 5).tolist()), set(shingles(doc(b), 5).tolist())
    return len(sa & sb) / len(sa | sb)


def test_the_share_of_equal_values_estimates_jaccard_similarity():
    rng = random.Random(3)
    perms = permutations(256, 1)
    for rate in (0.02, 0.05, 0.1, 0.3):
        a = make_text(rng, 400)
        b = edit(a, rng, rate)
        est = (signature(shingles(doc(a), 5), perms) == signature(shingles(doc(b), 5), perms)).mean()
        assert abs(est - jaccard5(a, b)) < 0.1, (rate, est, jaccard5(a, b))


def test_exact_hash_ignores_case_punctuation_and_spacing_only():
    base = exact_hash(doc("The quick brown fox, jumps over the lazy dog."))
    assert exact_hash(doc("the QUICK  brown fox jumps\nover the lazy dog")) == base
    assert exact_hash(doc("The quick brown cat jumps over the lazy dog.")) != base


def test_short_and_empty_documents():
    assert len(shingles(doc("two words"), 5)) == 1  # fewer words than n: one shingle of all of them
    assert (signature(shingles(doc("... !!!"), 5), permutations(16, 1)) == EMPTY).all()
    assert len(ngram_hashes(np.arange(3, dtype=np.uint64), 5)) == 0
    ab, ba = np.array([1, 2], dtype=np.uint64), np.array([2, 1], dtype=np.uint64)
    assert ngram_hashes(ab, 2)[0] != ngram_hashes(ba, 2)[0]  # order matters


def test_the_step_streams_hashes_and_signatures_to_files(tmp_path):
    texts = [make_text(random.Random(k), 60) for k in range(5)]
    with open(tmp_path / "e", "wb") as fe, open(tmp_path / "s", "wb") as fs:
        step = Signatures(DedupSpec(num_perm=32), fe, fs)
        assert len(list(step.run(doc(t) for t in texts))) == 5
    exact, sigs = read_exact(tmp_path / "e"), read_signatures(tmp_path / "s", 32)
    assert exact.shape == (5, 2) and sigs.shape == (5, 32)
    assert exact[2, 0] == exact_hash(doc(texts[2])) and exact[2, 1] == len(texts[2].encode())
    assert np.array_equal(sigs[4], signature(shingles(doc(texts[4]), 5), permutations(32, 1)))
    with_near_off = Signatures(DedupSpec(near=False), io.BytesIO(), sig := io.BytesIO())
    list(with_near_off.run([doc(texts[0])]))
    assert sig.getvalue() == b""
