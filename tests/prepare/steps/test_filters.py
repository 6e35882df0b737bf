"""Quality rules: each one drops the document it is meant to, under its own reason."""

from __future__ import annotations

import random

import pytest

from llmops.prepare.document import Document
from llmops.prepare.steps.filters import QualityFilter
from llmops.spec.prepare import FilterSpec
from llmops_testing.prepare import make_text


def doc(text: str) -> Document:
    return Document("d", text, "s", 0)


GOOD = make_text(random.Random(7), 150)
WORDS = GOOD.split()

CASES = {
    "too_few_words": " ".join(WORDS[:30]),
    "too_many_words": " ".join((WORDS * 800)[:100_001]),
    "mean_word_length": " ".join(["a", "an", "it", "to", "by"] * 20),
    "symbol_ratio": " ".join(w + " {}[]<>|\\~^" for w in WORDS[:80]),
    "alpha_words": " ".join(WORDS[:40] + ["1234", "5678", "90.1", "---"] * 30),
    "duplicate_lines": "\n".join(WORDS[i % 10] * 3 + " words in a line" for i in range(80)),
    "top_2gram": " ".join(WORDS[:60]) + " the parser" * 40,
    "duplicate_5gram": GOOD + " " + " ".join(WORDS[:40]),
}


@pytest.mark.parametrize("reason", sorted(CASES))
def test_each_rule_drops_its_case_under_its_reason(reason):
    f = QualityFilter(FilterSpec())
    assert list(f.run([doc(CASES[reason])])) == []
    assert dict(f.stats.dropped) == {reason: 1}


def test_ordinary_prose_passes_every_rule():
    f = QualityFilter(FilterSpec())
    assert [d.text for d in f.run([doc(GOOD)])] == [GOOD]
    assert f.stats.docs_out == 1 and not f.stats.dropped


def test_a_rule_set_to_null_is_off_and_enabled_false_turns_all_off():
    assert list(QualityFilter(FilterSpec(min_words=None)).run([doc(CASES["too_few_words"])]))
    everything_off = QualityFilter(FilterSpec(enabled=False))
    assert len(list(everything_off.run(doc(t) for t in CASES.values()))) == len(CASES)


def test_repeated_line_characters_are_a_separate_reason():
    long_line = "this long line repeats many many times over and over again " * 3
    text = "\n".join([long_line, long_line] + [f"short {w}" for w in WORDS[:40]])
    f = QualityFilter(FilterSpec(min_words=10, max_top_ngram_char_fraction=None,
                                 max_duplicate_ngram_char_fraction=None))
    assert list(f.run([doc(text)])) == [] and dict(f.stats.dropped) == {"duplicate_line_chars": 1}
