"""The prepare: section's own checks, and what counts as a change of settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmops.spec.prepare import PrepareSpec

BASE = {"input": {"paths": ["in.jsonl"]}, "output": {"dir": "out"}}


def spec(**changes) -> PrepareSpec:
    return PrepareSpec.model_validate({**BASE, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"input": {}}, "exactly one of input.paths"),
    ({"input": {"paths": ["x"], "builtin": "python-docstrings"}}, "exactly one of input.paths"),
    ({"dedup": {"bands": 16}}, "both dedup.bands and dedup.rows"),
    ({"dedup": {"bands": 20, "rows": 8}}, "exceeds dedup.num_perm"),
    ({"tokenizer": {"vocab": 100}}, "Extra inputs are not permitted"),
    ({"output": {"dir": "o", "name": "../escape"}}, "should match pattern"),
])
def test_bad_sections_are_rejected_with_the_rule_that_failed(changes, message):
    with pytest.raises(ValidationError, match=message):
        spec(**changes)


def test_run_settings_do_not_change_the_fingerprint_but_output_settings_do():
    base = spec().fingerprint()
    assert spec(workers=7, num_shards=3, max_error_rate=0.5).fingerprint() == base
    assert spec(output={"dir": "out", "keep_work": True}).fingerprint() == base
    assert spec(dedup={"threshold": 0.9}).fingerprint() != base
    assert spec(filters={"min_words": 3}).fingerprint() != base


def test_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = spec(tokenizer={"model": "tok.model"})
    s = s.model_copy(update=s.absolutized())
    assert s.input.paths == [str(tmp_path / "in.jsonl")]
    assert s.output.dir == str(tmp_path / "out") and s.tokenizer.model == str(tmp_path / "tok.model")
    assert s.prefix == str(tmp_path / "out" / "corpus_text_document")
