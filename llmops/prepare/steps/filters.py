"""Gopher-style quality rules (Rae et al., 2021, appendix A), each a small function.

A rule takes a document and returns None (keep) or the reason it fails. The
:class:`QualityFilter` step runs the enabled rules in order, cheapest first,
and counts a dropped document under the first rule it fails.

The repetition rules work on normalised words (see
:attr:`Document.norm_words`) and their hashes, which deduplication needs
anyway, so they cost a few vector operations per document.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import numpy as np

from llmops.prepare.document import Document, ngram_hashes
from llmops.prepare.steps.base import Filter
from llmops.spec.prepare import FilterSpec

Rule = Callable[[Document], "str | None"]

_SYMBOL = re.compile(r"[^\w\s]|_")
# A whitespace-delimited word with no letter in it: only digits, underscores and symbols.
_NO_LETTER_WORD = re.compile(r"(?<!\S)(?:[^\w\s]|[\d_])+(?!\S)")


def word_count(lo: int | None, hi: int | None) -> Rule:
    def rule(doc: Document) -> str | None:
        n = len(doc.words)
        if lo is not None and n < lo:
            return "too_few_words"
        if hi is not None and n > hi:
            return "too_many_words"
        return None
    return rule


def mean_word_length(lo: float | None, hi: float | None) -> Rule:
    def rule(doc: Document) -> str | None:
        words = doc.words
        mean = sum(map(len, words)) / max(1, len(words))
        if (lo is not None and mean < lo) or (hi is not None and mean > hi):
            return "mean_word_length"
        return None
    return rule


def symbol_ratio(limit: float) -> Rule:
    """Symbols (not letters, digits or spaces) per letter or digit."""
    def rule(doc: Document) -> str | None:
        visible = sum(map(len, doc.words))
        symbols = len(_SYMBOL.findall(doc.text))
        return "symbol_ratio" if symbols > limit * max(1, visible - symbols) else None
    return rule


def alpha_words(minimum: float) -> Rule:
    def rule(doc: Document) -> str | None:
        n = len(doc.words)
        without = len(_NO_LETTER_WORD.findall(doc.text))
        return "alpha_words" if n and (n - without) < minimum * n else None
    return rule


def duplicate_lines(max_lines: float | None, max_chars: float | None) -> Rule:
    """Lines that repeat an earlier line of the same document, by count and by characters."""
    def rule(doc: Document) -> str | None:
        lines = [s for s in (line.strip() for line in doc.text.split("\n")) if s]
        if len(lines) < 2:
            return None
        counts = Counter(lines)
        if len(counts) == len(lines):
            return None
        dup_lines = len(lines) - len(counts)
        dup_chars = sum(len(s) * (c - 1) for s, c in counts.items() if c > 1)
        if max_lines is not None and dup_lines > max_lines * len(lines):
            return "duplicate_lines"
        if max_chars is not None and dup_chars > max_chars * sum(map(len, lines)):
            return "duplicate_line_chars"
        return None
    return rule


def top_ngram(limits: dict[int, float]) -> Rule:
    """The most frequent word n-gram may cover at most `limits[n]` of the characters."""
    def rule(doc: Document) -> str | None:
        hashes = doc.norm_hashes
        if len(hashes) < 2:
            return None
        lengths = _lengths(doc)
        total = lengths.sum()
        for n, limit in sorted(limits.items()):
            grams = ngram_hashes(hashes, n)
            if len(grams) < 2:
                break
            values, first, counts = np.unique(grams, return_index=True, return_counts=True)
            top = counts.argmax()
            if counts[top] > 1:
                chars = lengths[first[top]:first[top] + n].sum()
                if chars * counts[top] > limit * total:
                    return f"top_{n}gram"
        return None
    return rule


def duplicate_ngrams(limits: dict[int, float]) -> Rule:
    """Words inside a repeat of an earlier n-gram may cover at most `limits[n]` of the characters.

    A repeated (n+1)-gram is made of repeated n-grams, so the covered share only
    shrinks as n grows: once it is below every remaining limit we can stop.
    """
    ordered = sorted(limits.items())

    def rule(doc: Document) -> str | None:
        hashes = doc.norm_hashes
        lengths = _lengths(doc)
        total = lengths.sum()
        for i, (n, limit) in enumerate(ordered):
            grams = ngram_hashes(hashes, n)
            if len(grams) < 2:
                break
            share = _covered_chars(grams, lengths, n) / total
            if share > limit:
                return f"duplicate_{n}gram"
            if all(share <= later for _, later in ordered[i + 1:]):
                break
        return None
    return rule


def _lengths(doc: Document) -> np.ndarray:
    words = doc.norm_words
    return np.fromiter(map(len, words), dtype=np.int64, count=len(words))


def _covered_chars(grams: np.ndarray, lengths: np.ndarray, n: int) -> int:
    """Characters of the words covered by any second or later occurrence of an n-gram."""
    order = np.argsort(grams, kind="stable")  # stable: within a group, the first occurrence comes first
    ordered = grams[order]
    repeats = order[1:][ordered[1:] == ordered[:-1]]
    if len(repeats) == 0:
        return 0
    cover = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.add.at(cover, repeats, 1)
    np.add.at(cover, repeats + n, -1)
    return int(lengths[np.cumsum(cover[:-1]) > 0].sum())


def rules_from(spec: FilterSpec) -> list[Rule]:
    """The enabled rules, cheapest first."""
    if not spec.enabled:
        return []
    rules: list[Rule] = []
    if spec.min_words is not None or spec.max_words is not None:
        rules.append(word_count(spec.min_words, spec.max_words))
    if spec.min_mean_word_length is not None or spec.max_mean_word_length is not None:
        rules.append(mean_word_length(spec.min_mean_word_length, spec.max_mean_word_length))
    if spec.max_symbol_ratio is not None:
        rules.append(symbol_ratio(spec.max_symbol_ratio))
    if spec.min_alpha_word_fraction is not None:
        rules.append(alpha_words(spec.min_alpha_word_fraction))
    if spec.max_duplicate_line_fraction is not None or spec.max_duplicate_line_char_fraction is not None:
        rules.append(duplicate_lines(spec.max_duplicate_line_fraction, spec.max_duplicate_line_char_fraction))
    if spec.max_top_ngram_char_fraction:
        rules.append(top_ngram(spec.max_top_ngram_char_fraction))
    if spec.max_duplicate_ngram_char_fraction:
        rules.append(duplicate_ngrams(spec.max_duplicate_ngram_char_fraction))
    return rules


class QualityFilter(Filter):
    """Runs the enabled rules; a document is dropped under the first rule it fails."""

    name = "filter"

    def __init__(self, spec: FilterSpec):
        super().__init__()
        self.rules = rules_from(spec)

    def filter(self, doc: Document) -> str | None:
        for rule in self.rules:
            reason = rule(doc)
            if reason is not None:
                return reason
        return None
