"""Tokenized alignment examples: built once by rank 0, read by every rank, reused on restart.

``<run>/align-data/`` holds ``train.npz`` and ``valid.npz`` (variable-length
token arrays stored flat with offsets), ``quarantine.jsonl`` (every unusable
line, with its number and reason) and ``stats.json`` (counts per reason;
written last, so its presence with a matching fingerprint means the rest is
complete). A restart with the same data and settings skips the work.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmops.errors import UserError
from llmops.files import atomic_write
from llmops.prepare import pretrained
from llmops.spec.align import AlignSpec
from llmops_model.align import chat
from llmops_model.align.chat import ChatTokenizer, TemplateChat
from llmops_model.align.records import BadRecord, conversation, parse_lines, preference, read_lines

FORMAT = 1
FIELDS = {"sft": ("ids", "trained"), "dpo": ("prompt", "chosen", "rejected")}


@dataclass
class Ragged:
    """Variable-length integer arrays stored as one flat array and offsets."""

    flat: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, arrays: list, dtype) -> Ragged:
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.concatenate([np.asarray(a, dtype=dtype) for a in arrays]) if arrays else np.zeros(0, dtype)
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]: self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


Examples = dict[str, Ragged]


def tokenize_sft(tok: ChatTokenizer | TemplateChat, obj: dict, *, seq_length: int, too_long: str) -> tuple[list, bool]:
    """[ids, trained] of one conversation, at most seq_length + 1 tokens, and whether it was cut."""
    limit = seq_length + 1  # inputs are ids[:-1], labels ids[1:]
    ids, trained = tok.render(conversation(obj), limit=limit)
    cut = len(ids) > limit
    if cut and too_long == "drop":
        raise BadRecord("too_long", f"more than model.seq_length + 1 = {limit} tokens")
    ids, trained = ids[:limit], trained[:limit]
    if not any(trained[1:]):
        raise BadRecord("too_long", f"no assistant token within the first {limit} tokens")
    return [ids, trained], cut


def tokenize_dpo(tok: ChatTokenizer | TemplateChat, obj: dict, *, seq_length: int, too_long: str) -> tuple[list, bool]:
    """[prompt, chosen, rejected] ids fitting seq_length + 1 with the end-of-document token.

    Truncation follows TRL: the prompt loses its start first (down to half the
    room), then the responses lose their ends.
    """
    pref = preference(obj)
    prompt = tok.prompt(pref.prompt)
    if not prompt:  # DPO's log-probabilities are of the responses given the prompt: there must be a token before
        raise BadRecord("empty_prompt", "the prompt renders to no token (the chat template leaves it out)")
    chosen, rejected = tok.response(pref.prompt, pref.chosen), tok.response(pref.prompt, pref.rejected)
    room = seq_length  # seq_length + 1 tokens, one of them the end-of-document
    longest = max(len(chosen), len(rejected))
    cut = len(prompt) + longest > room
    if cut and too_long == "drop":
        raise BadRecord("too_long", f"{len(prompt) + longest + 1} tokens; model.seq_length + 1 = {room + 1}")
    if cut:
        keep = max(room - longest, min(len(prompt), room // 2))
        prompt = prompt[len(prompt) - keep:]
        chosen, rejected = chosen[: room - keep], rejected[: room - keep]
    if not chosen or not rejected:
        raise BadRecord("too_long", "a response has no token left after truncation")
    if chosen == rejected:
        raise BadRecord("identical_responses", "chosen and rejected are the same tokens" +
                        (" after truncation" if cut else " (texts that differ only where the tokenizer does not)"))
    return [prompt, chosen, rejected], cut


def max_line_bytes(seq_length: int) -> int:
    """The longest data line read: 64 bytes per token of context (text runs at about 4), at least 1 MiB. A longer
    line would be cut to a small part of itself, and it is held whole while it is tokenized."""
    return max(1 << 20, 64 * (seq_length + 1))


def _records(a: AlignSpec, *, seq_length: int):
    if a.data.path is not None:
        return read_lines(a.data.path, max_bytes=max_line_bytes(seq_length))
    from llmops.prepare import align_corpus

    make = align_corpus.sft_records if a.method == "sft" else align_corpus.preference_records
    # Answers of at most two characters per token of context, so that most examples fit whole.
    records = make(a.data.builtin_examples, seed=0, max_chars=min(160, 2 * seq_length))
    return parse_lines(json.dumps(r) for r in records)


def fingerprint(a: AlignSpec, *, seq_length: int) -> str:
    """What the tokenized examples depend on: the settings, the tokenizer and the data file."""
    def stat(path):
        s = os.stat(path)
        return [str(path), s.st_size, s.st_mtime_ns]

    def tokenizer(ref):  # a SentencePiece model, or a Hugging Face tokenizer's files (hf:DIR)
        folder = pretrained.folder(ref)
        return stat(ref) if folder is None else [stat(p) for p in sorted(folder.glob("*")) if p.name in
                                                 pretrained.FILES]

    parts = {"format": FORMAT, "method": a.method, "data": a.data.model_dump(mode="json"),
             "template": a.template.model_dump(), "bad_data": a.bad_data.too_long, "seq_length": seq_length,
             "seed": a.seed, "tokenizer": tokenizer(a.tokenizer),
             "source": stat(a.data.path) if a.data.path else sys.version}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def build(a: AlignSpec, *, seq_length: int, out: Path, fp: str) -> dict:
    """Tokenize, quarantine, split and save; returns the stats (also written to stats.json)."""
    tok = chat.load(a.tokenizer, a.template)
    tokenize = tokenize_sft if a.method == "sft" else tokenize_dpo
    kept, reasons, truncated, lines = [], Counter(), 0, 0
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "quarantine.jsonl.tmp", "w") as quarantine:
        for number, raw, obj in _records(a, seq_length=seq_length):
            lines += 1
            try:
                if isinstance(obj, BadRecord):
                    raise obj
                fields, cut = tokenize(tok, obj, seq_length=seq_length, too_long=a.bad_data.too_long)
            except BadRecord as bad:
                reasons[bad.reason] += 1
                quarantine.write(json.dumps({"line": number, "reason": bad.reason, "detail": bad.detail[:1000],
                                             "record": raw.rstrip("\n")[:4000]}) + "\n")
                continue
            truncated += cut
            kept.append([np.asarray(f, dtype=np.int32) for f in fields])  # a quarter of a list of Python ints
    os.replace(out / "quarantine.jsonl.tmp", out / "quarantine.jsonl")
    order = np.random.default_rng(a.seed).permutation(len(kept))
    n_valid = 0 if a.data.valid_fraction == 0 or len(kept) < 2 else max(1, round(len(kept) * a.data.valid_fraction))
    for name, picked in (("valid", order[:n_valid]), ("train", order[n_valid:])):
        _save(out / f"{name}.npz", [kept[i] for i in picked], FIELDS[a.method])
    stats = {"fingerprint": fp, "lines": lines, "examples": len(kept), "train": len(kept) - n_valid,
             "valid": n_valid, "truncated": truncated, "quarantined": dict(sorted(reasons.items())),
             "vocab_size": tok.vocab_size, "eod_id": tok.eod_id, "pad_id": tok.pad_id}
    atomic_write(out / "stats.json", json.dumps(stats, indent=1))
    return stats


def _save(path: Path, rows: list[list], fields: tuple[str, ...]) -> None:
    arrays = {}
    for k, name in enumerate(fields):
        r = Ragged.of([row[k] for row in rows], np.int32)
        arrays[f"{name}.flat"], arrays[f"{name}.offsets"] = r.flat, r.offsets
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def read(path: Path, method: str) -> Examples:
    with np.load(path) as z:
        return {name: Ragged(z[f"{name}.flat"], z[f"{name}.offsets"]) for name in FIELDS[method]}


def cached_stats(out: Path, fp: str) -> dict | None:
    try:
        stats = json.loads((out / "stats.json").read_text())
    except (OSError, ValueError):
        return None
    return stats if stats.get("fingerprint") == fp else None


def check(stats: dict, *, a: AlignSpec, out: Path) -> None:
    """Stop with the counts when the data is unusable; every rank calls this with the same stats."""
    bad = sum(stats["quarantined"].values())
    where = a.data.path or f"the built-in {a.data.builtin} set"
    breakdown = ", ".join(f"{k}: {v}" for k, v in stats["quarantined"].items()) or "none"
    if stats["lines"] and bad / stats["lines"] > a.bad_data.max_fraction:
        raise UserError(f"align.data: {bad} of {stats['lines']} lines of {where} were quarantined ({breakdown}), "
                        f"more than align.bad_data.max_fraction = {a.bad_data.max_fraction}",
                        f"read {out / 'quarantine.jsonl'} and fix the data, or raise align.bad_data.max_fraction")
    if stats["train"] == 0:
        raise UserError(f"align.data: {where} gives no usable {a.method} training example "
                        f"({stats['lines']} lines; quarantined: {breakdown})",
                        "check the format described in `llmops schema` (align.data.path)")
