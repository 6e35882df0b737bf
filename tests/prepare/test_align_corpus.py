"""The standard library's docstrings as alignment examples: parsed once per interpreter, then read from a cache."""

from __future__ import annotations

import json

import pytest

from llmops.prepare import align_corpus


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    align_corpus._documented.cache_clear()
    yield tmp_path / "llmops"
    align_corpus._documented.cache_clear()


def test_the_parsed_names_are_cached_and_the_cache_gives_the_same_examples(cache_home, monkeypatch):
    first = align_corpus.sft_records(64, seed=3)
    (cache,) = cache_home.glob("stdlib-docstrings-*.json")
    align_corpus._documented.cache_clear()
    monkeypatch.setattr(align_corpus, "_parse", lambda units: pytest.fail("parsed again despite the cache"))
    assert align_corpus.sft_records(64, seed=3) == first
    assert len(json.loads(cache.read_text())) == len(align_corpus._documented())


def test_a_damaged_or_unwritable_cache_is_not_used(cache_home):
    expected = align_corpus.preference_records(16, seed=1)
    (cache,) = cache_home.glob("stdlib-docstrings-*.json")
    cache.write_text('[{"name": "x"}]')  # not an entry: parsed again, and the cache rewritten
    align_corpus._documented.cache_clear()
    assert align_corpus.preference_records(16, seed=1) == expected
    assert json.loads(cache.read_text())[0].keys() == {"name", "module", "kind", "summary"}
    cache.unlink()
    cache_home.rmdir()
    cache_home.write_text("a file where the cache folder would go")  # unwritable, even for root
    align_corpus._documented.cache_clear()
    assert align_corpus.preference_records(16, seed=1) == expected


def test_a_warm_cache_process_fills_the_cache_that_the_align_stage_then_reads(cache_home, monkeypatch):
    """What a run's prepare stage starts in the background (llmops prepare --resolved)."""
    assert align_corpus.warm_cache().wait(timeout=120) == 0
    (cache,) = cache_home.glob("stdlib-docstrings-*.json")
    monkeypatch.setattr(align_corpus, "_parse", lambda units: pytest.fail("parsed despite the warmed cache"))
    assert len(align_corpus.sft_records(32, seed=0)) == 32
    assert len(json.loads(cache.read_text())) == len(align_corpus._documented())
