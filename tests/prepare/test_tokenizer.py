"""The tokenizer: reserved ids, control tokens text cannot reach, lossless round trips, clear failures."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import sentencepiece as spm

from llmops.errors import UserError
from llmops.prepare.tokenizer import ModelError, install, load, read_model_facts, sampled, train, training_lines
from llmops.spec.prepare import TokenizerSpec
from llmops_testing.prepare import make_text

TEXTS = [make_text(random.Random(k), 150) + "\n\n    indented = {'code': 1}\n" for k in range(60)]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    facts = train(TokenizerSpec(vocab_size=600), training_lines(TEXTS, 10**9), out=out, threads=1)
    assert facts.vocab_size == 600
    return out


def test_reserved_and_special_ids_are_fixed(model):
    facts = read_model_facts(model)
    assert (facts.unk_id, facts.bos_id, facts.eos_id, facts.pad_id) == (0, 1, 2, 3)
    assert facts.special_tokens == {"<|system|>": 4, "<|user|>": 5, "<|assistant|>": 6, "<|end|>": 7}


def test_text_never_encodes_to_a_control_token(model):
    sp = load(model)
    ids = sp.encode("<|user|> hello </s>")
    assert not set(ids) & {1, 2, 3, 4, 5, 6, 7}


def test_text_round_trips_exactly_with_whitespace_and_unseen_characters(model):
    sp = load(model)
    text = TEXTS[0] + "\n\ttabs,   runs of spaces\nand ünïcödé ✓ 漢字"
    assert sp.decode(sp.encode(text)) == text


def test_a_vocabulary_the_corpus_cannot_fill_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"vocab_size = 50000 is more pieces than this corpus can give") as exc:
        train(TokenizerSpec(vocab_size=50_000), iter(TEXTS[:3]), out=tmp_path / "m", threads=1)
    assert "set vocab_size to at most" in exc.value.fix
    with pytest.raises(UserError, match=r"vocab_size = 100 cannot hold"):
        train(TokenizerSpec(vocab_size=100), iter(TEXTS[:3]), out=tmp_path / "m", threads=1)
    assert not (tmp_path / "m").exists()


def test_an_existing_model_is_checked_and_copied(model, tmp_path):
    assert install(str(model), tmp_path / "copy.model").vocab_size == 600
    assert (tmp_path / "copy.model").read_bytes() == model.read_bytes()
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="is not a readable SentencePiece model"):
        install(str(tmp_path / "junk.model"), tmp_path / "x.model")
    no_eos = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_writer=no_eos, vocab_size=300,
                                   eos_id=-1, minloglevel=2)
    (tmp_path / "no_eos.model").write_bytes(no_eos.getvalue())
    with pytest.raises(ModelError, match="no end-of-sentence piece"):
        read_model_facts(tmp_path / "no_eos.model")


def test_sampling_depends_on_the_id_only():
    ids = [f"doc-{i}" for i in range(10_000)]
    picked = [i for i in ids if sampled(i, 0.1)]
    assert picked == [i for i in ids if sampled(i, 0.1)] and 850 < len(picked) < 1150
    assert all(sampled(i, 1.0) for i in ids[:10])


def test_training_lines_skip_blank_lines_and_stop_at_the_budget():
    lines = list(training_lines(["a\n\n  \nb", "c\nd", "e"], budget=5))
    assert lines == ["a", "b", "c", "d"]


def test_a_bpe_model_is_the_same_file_for_any_number_of_threads(tmp_path):
    """Workers (or a cluster task's CPUs) set the tokenizer phase's threads: the model they write is the same."""
    models = []
    for threads in (1, 3):
        out = tmp_path / f"{threads}.model"
        train(TokenizerSpec(vocab_size=600), training_lines(TEXTS, 10**9), out=out, threads=threads)
        models.append(out.read_bytes())
    assert models[0] == models[1]
