"""Fixtures for the data-preparation tests; the helpers live in prepare_testing.py beside this file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from prepare_testing import make_corpus, write_jsonl  # noqa: E402


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    """300 documents, 20 exact and 20 near duplicates, in one JSONL file."""
    return write_jsonl(tmp_path / "in" / "corpus.jsonl", make_corpus(300, exact_dups=20, near_dups=20))
