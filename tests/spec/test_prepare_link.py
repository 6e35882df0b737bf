"""The prepare: section in a run spec, and how pretraining is tied to what it writes."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
import sentencepiece as spm
import yaml

from llmops.errors import SpecError
from llmops.spec.load import dump_spec, parse_spec
from llmops_testing.prepare import make_text


def spec_dict(tmp_path: Path, **changes) -> dict:
    data = {
        "name": "prep",
        "resources": {"cpu": True, "processes_per_node": 1},
        "model": {"preset": "tiny"},
        "prepare": {"input": {"builtin": "python-docstrings"}, "tokenizer": {"vocab_size": 1024},
                    "output": {"dir": "prepared"}},
        "train": {"steps": 4, "global_batch_size": 8, "micro_batch_size": 2},
    }
    data.update(changes)
    return data


def test_pretrain_is_filled_in_from_the_prepare_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = parse_spec(spec_dict(tmp_path))
    prefix = str(tmp_path / "prepared" / "corpus_text_document")
    assert s.stages == ["prepare", "pretrain"]
    assert s.prepare.output.dir == str(tmp_path / "prepared")
    assert s.data.synthetic is None and s.data.indexed.paths == [prefix] and s.data.indexed.eod_id == 2
    assert s.model.vocab_size == 1024 and s.model.num_layers == 4
    again = parse_spec(yaml.safe_load(dump_spec(s)))  # the resolved spec every stage reads
    assert again.model_dump() == s.model_dump()


def test_a_prepare_only_spec_trains_nothing(tmp_path):
    d = spec_dict(tmp_path)
    del d["train"]
    s = parse_spec(d)
    assert s.stages == ["prepare"] and s.data.synthetic is not None


@pytest.mark.parametrize("changes, where, says", [
    ({"data": {"synthetic": {}}}, "data", "does not train on what prepare: writes"),
    ({"data": {"indexed": {"paths": ["elsewhere"], "eod_id": 2}}}, "data", "paths: ['"),
    ({"model": {"preset": "tiny", "vocab_size": 512}}, "model.vocab_size = 512", "smaller than the tokenizer's"),
])
def test_settings_that_disagree_with_the_prepared_data_are_named(tmp_path, changes, where, says):
    with pytest.raises(SpecError) as exc:
        parse_spec(spec_dict(tmp_path, **changes))
    text = exc.value.render()
    assert where in text and says in text


def test_explicit_settings_that_agree_are_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = parse_spec(spec_dict(tmp_path, data={"indexed": {"paths": ["prepared/corpus_text_document"], "eod_id": 2}},
                             model={"preset": "tiny", "vocab_size": 2048}))
    assert s.model.vocab_size == 2048


def test_no_tokenizer_means_nothing_to_train_on(tmp_path):
    d = spec_dict(tmp_path)
    d["prepare"]["tokenizer"] = None
    with pytest.raises(SpecError, match="1 problem") as exc:
        parse_spec(d)
    assert "prepare.tokenizer: is null" in exc.value.render()


def test_an_existing_tokenizer_model_sets_vocab_and_eod(tmp_path):
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(make_text(random.Random(0), 3000).split("\n\n")),
                                   model_writer=buf, vocab_size=300, eos_id=5, bos_id=-1, unk_id=0, pad_id=-1,
                                   minloglevel=2)
    (tmp_path / "m.model").write_bytes(buf.getvalue())
    d = spec_dict(tmp_path)
    d["prepare"]["tokenizer"] = {"model": str(tmp_path / "m.model")}
    s = parse_spec(d)
    assert s.model.vocab_size == 300 and s.data.indexed.eod_id == 5
    d["prepare"]["tokenizer"] = {"model": str(tmp_path / "missing.model")}
    with pytest.raises(SpecError) as exc:
        parse_spec(d)
    text = exc.value.render()
    assert "prepare.tokenizer.model = " in text and "cannot be read (No such file or directory)" in text


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_tokenizer_that_is_not_a_regular_file_is_refused_not_read_forever(tmp_path, kind):
    path = tmp_path / "tok.model"
    if kind == "fifo":
        os.mkfifo(path)  # reading it waits for a writer that never comes
    else:
        path = Path("/dev/zero")  # reading it never ends
    d = spec_dict(tmp_path)
    d["prepare"]["tokenizer"] = {"model": str(path)}
    with pytest.raises(SpecError) as exc:
        parse_spec(d)
    assert "is not a regular file" in exc.value.render()
