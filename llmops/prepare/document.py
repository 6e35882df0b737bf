"""The unit every step passes on: one document, with features computed once and shared.

Quality filters and deduplication both look at a document's words; computing
them once per document (lazily, on first use) keeps the per-document cost of
the whole pipeline close to that of its most expensive step.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

_WORD = re.compile(r"\w+")
_MIX = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD,
        0x94D049BB133111EB, 0xBF58476D1CE4E5B9, 0x2545F4914F6CDD1D, 0x9FB21C651E98DF25, 0xD1B54A32D192ED03)


class _WordHashes(dict):
    """word -> 64-bit xxh3 hash, memoised: most words of a corpus recur, and a dict
    lookup is several times cheaper than hashing the string again."""

    LIMIT = 2_000_000  # entries; about 250 MB, then start over

    def __missing__(self, word: str) -> int:
        if len(self) >= self.LIMIT:
            self.clear()
        value = self[word] = xxhash.xxh3_64_intdigest(word.encode("utf-8", "surrogatepass"))
        return value


_hashes = _WordHashes()


class Document:
    """A document: its id, text, where it came from, and cached word features."""

    __slots__ = ("id", "text", "source", "position", "_nbytes", "_words", "_norm_words", "_norm_hashes")

    def __init__(self, id: str, text: str, source: str, position: int, nbytes: int | None = None):
        self.id, self.text, self.source, self.position = id, text, source, position
        self._nbytes = nbytes
        self._words: list[str] | None = None
        self._norm_words: list[str] | None = None
        self._norm_hashes: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"Document(id={self.id!r}, {len(self.text)} chars, source={self.source!r})"

    def set_text(self, text: str) -> None:
        """Replace the text (a cleaner did); cached features no longer apply."""
        self.text = text
        self._nbytes = self._words = self._norm_words = self._norm_hashes = None

    @property
    def nbytes(self) -> int:
        """Size of the text in UTF-8."""
        if self._nbytes is None:
            self._nbytes = len(self.text.encode("utf-8"))
        return self._nbytes

    @property
    def words(self) -> list[str]:
        """Whitespace-separated words, as the Gopher rules count them."""
        if self._words is None:
            self._words = self.text.split()
        return self._words

    @property
    def norm_words(self) -> list[str]:
        """Lower-cased runs of letters, digits and underscores: punctuation and case never
        make two documents differ for deduplication or repetition counts."""
        if self._norm_words is None:
            self._norm_words = _WORD.findall(self.text.lower())
        return self._norm_words

    @property
    def norm_hashes(self) -> np.ndarray:
        """A uint64 hash per normalised word."""
        if self._norm_hashes is None:
            words = self.norm_words
            self._norm_hashes = np.fromiter(map(_hashes.__getitem__, words), dtype=np.uint64, count=len(words))
        return self._norm_hashes


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """A uint64 hash per run of `n` consecutive words (empty when there are fewer).

    A different odd multiplier per position makes "a b" and "b a" differ; the
    final xor-shift spreads the high bits into the low ones.
    """
    k = len(word_hashes) - n + 1
    if k <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = word_hashes[:k] * np.uint64(_MIX[0])
        for j in range(1, n):
            h += word_hashes[j:j + k] * np.uint64(_MIX[j % len(_MIX)] | 1)
        h ^= h >> np.uint64(29)
    return h
