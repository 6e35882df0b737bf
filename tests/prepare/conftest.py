"""Fixtures for the data-preparation tests; the helpers live in llmops_testing.prepare."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops_testing.prepare import make_corpus, write_jsonl


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    """300 documents, 20 exact and 20 near duplicates, in one JSONL file."""
    return write_jsonl(tmp_path / "in" / "corpus.jsonl", make_corpus(300, exact_dups=20, near_dups=20))
