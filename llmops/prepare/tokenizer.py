"""The SentencePiece tokenizer: trained on a sample of the deduplicated corpus, or an existing model.

Trained models reserve fixed ids (<unk>=0, <s>=1, </s>=2, <pad>=3, then the
chat/alignment control tokens), so the pretrain stage knows the end-of-document
id before the model exists. Normalisation is the identity and whitespace is
kept: the text the model sees is the text we cleaned, byte for byte.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from llmops.errors import UserError
from llmops.prepare.workdir import atomic_path
from llmops.spec.prepare import BOS_ID, EOS_ID, PAD_ID, UNK_ID, TokenizerSpec

MAX_LINE_BYTES = 16384


class ModelError(UserError):
    """A tokenizer model that cannot be used; `reason` says why without naming the path."""

    def __init__(self, path: str | Path, reason: str, fix: str):
        super().__init__(f"prepare.tokenizer.model = {str(path)!r}: {reason}", fix)
        self.reason = reason


@dataclass(frozen=True)
class ModelFacts:
    vocab_size: int
    eos_id: int
    pad_id: int
    bos_id: int
    unk_id: int
    special_tokens: dict[str, int]


def read_model_facts(path: str | Path) -> ModelFacts:
    """Read a SentencePiece model's vocabulary size and reserved ids (UserError if it is no model)."""
    sp = load(path)
    specials = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())
                if sp.is_control(i) and i not in (sp.bos_id(), sp.eos_id(), sp.pad_id())}
    if sp.eos_id() < 0:
        raise ModelError(path, "the model has no end-of-sentence piece (eos_id = -1) to end documents with",
                         "train it with an eos_id, or let llmops train one (leave prepare.tokenizer.model unset)")
    pad = sp.pad_id() if sp.pad_id() >= 0 else sp.eos_id()
    return ModelFacts(sp.get_piece_size(), sp.eos_id(), pad, sp.bos_id(), sp.unk_id(), specials)


MAX_MODEL_BYTES = 1 << 30
"""Larger files are not tokenizer models (SentencePiece models are kilobytes to megabytes)."""


def load(path: str | Path):
    """The SentencePiece model in a regular file (not a FIFO or a device: reading /dev/zero never ends)."""
    import sentencepiece as spm

    try:
        info = os.stat(path)
    except OSError as exc:
        raise ModelError(path, f"cannot be read ({exc.strerror})", "check the path") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelError(path, "is not a regular file", "point at a .model file written by SentencePiece")
    if info.st_size > MAX_MODEL_BYTES:
        raise ModelError(path, f"is {info.st_size:,} bytes, too large for a tokenizer model",
                         "point at a .model file written by SentencePiece")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise ModelError(path, f"is not a readable SentencePiece model ({str(exc).strip()})",
                         "point at a .model file written by SentencePiece, or leave it unset to train one") from None


def sampled(doc_id: str, rate: float) -> bool:
    """A pseudo-random choice that depends on the id only: the same sample for any sharding."""
    return rate >= 1.0 or xxhash.xxh64_intdigest(doc_id.encode("utf-8", "surrogatepass")) < rate * 2.0**64


def training_lines(texts: Iterable[str], budget: int) -> Iterator[str]:
    """Non-blank lines of the texts, up to `budget` bytes (SentencePiece trains on lines)."""
    used = 0
    for text in texts:
        for line in text.split("\n"):
            if line.strip() and (len(line) <= MAX_LINE_BYTES // 4 or len(line.encode()) <= MAX_LINE_BYTES):
                used += len(line) + 1
                yield line
        if used >= budget:
            return


def train(spec: TokenizerSpec, lines: Iterator[str], *, out: Path, threads: int) -> ModelFacts:
    """Train a model on `lines` and write it to `out` atomically."""
    import sentencepiece as spm

    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines, model_writer=buf, model_type=spec.type, vocab_size=spec.vocab_size,
            byte_fallback=spec.byte_fallback, character_coverage=spec.character_coverage,
            split_digits=spec.split_digits, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
            control_symbols=spec.special_tokens, normalization_rule_name="identity",
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, max_sentence_length=MAX_LINE_BYTES,
            num_threads=threads, minloglevel=2, shuffle_input_sentence=False, input_sentence_size=0)
    except RuntimeError as exc:
        raise _training_error(spec, str(exc)) from None
    with atomic_path(out) as tmp:
        tmp.write_bytes(_without_thread_count(buf.getvalue()) if spec.type == "bpe" else buf.getvalue())
    return read_model_facts(out)


def _without_thread_count(model: bytes) -> bytes:
    """A model without the thread count its trainer_spec records. A BPE model's pieces and scores do not depend
    on the threads that trained it (measured: 1, 2, 4 and 8 give the same), so without that record the file is
    the same for any number of workers or CPUs per task. A unigram model's scores do depend on them (its
    E-step sums per thread), so it keeps the record that explains the difference."""
    from sentencepiece import sentencepiece_model_pb2  # protobuf: there with tensorboard, a dependency

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    proto.trainer_spec.ClearField("num_threads")
    return proto.SerializeToString()


def _training_error(spec: TokenizerSpec, message: str) -> UserError:
    """SentencePiece's CHECK failures, said in terms of the spec."""
    if m := re.search(r"too high \((\d+)\)\. Please set it to a value <= (\d+)", message):
        return UserError(f"prepare.tokenizer.vocab_size = {m[1]} is more pieces than this corpus can give "
                         f"(at most {m[2]})", f"set vocab_size to at most {m[2]}, or give more input text")
    if m := re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message):
        return UserError(f"prepare.tokenizer.vocab_size = {m[1]} cannot hold the {m[2]} characters, byte and "
                         "reserved pieces the corpus needs", f"set vocab_size above {m[2]}, "
                         "or lower character_coverage")
    return UserError(f"SentencePiece could not train the tokenizer: {message}",
                     "check the prepare.tokenizer settings")


def install(path: str, out: Path) -> ModelFacts:
    """Copy an existing SentencePiece model to `out` (after checking it loads)."""
    facts = read_model_facts(path)
    with atomic_path(out) as tmp:
        shutil.copyfile(path, tmp)
    return facts
