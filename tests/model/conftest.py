"""Shared by the alignment and Hugging Face tests: a tokenizer and example files from the built-in stdlib corpus.

(Test modules reach these through the `assets` fixture: `conftest` is not importable by name here.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmops.prepare import align_corpus
from llmops.prepare.tokenizer import train
from llmops.spec.prepare import TokenizerSpec
from llmops_testing.hf_tokenizer import llama3_style

VOCAB, SEQ = 1024, 128
# Lines no trainer should accept: each is counted under its reason and quarantined.
BAD_SFT = {
    "malformed_json": '{"messages": [{"role": "user", "content": "unterminated',
    "not_an_object": '["a", "list"]',
    "missing_roles": json.dumps({"messages": [{"role": "user", "content": "Is anybody there?"}]}),
    "empty_response": json.dumps({"prompt": "Say something.", "response": "   "}),
    "bad_message": json.dumps({"messages": [{"role": "robot", "content": "beep"}]}),
    "missing_field": json.dumps({"text": "pre-training text is not a conversation"}),
    "too_long": json.dumps({"prompt": "word " * 400, "response": "The answer comes too late to be seen."}),
}
BAD_DPO = {
    "identical_responses": json.dumps({"prompt": "Pick one.", "chosen": "This one.", "rejected": "This one."}),
    "missing_field": json.dumps({"prompt": "Pick one.", "chosen": "This one."}),
}


@dataclass(frozen=True)
class Assets:
    tokenizer: Path
    hf_tokenizer: Path  # the same texts as a Llama 3 style tokenizer.json folder with its chat template
    sft: Path
    dpo: Path
    sft_good: int
    dpo_good: int
    bad_sft: dict[str, str]
    bad_dpo: dict[str, str]
    vocab: int = VOCAB
    seq: int = SEQ


def _with_bad_lines(records: list[dict], bad: dict[str, str]) -> list[str]:
    """The good records with the bad lines spread among them (every seventh line)."""
    lines, bad_lines = [json.dumps(r) for r in records], list(bad.values())
    for k, line in enumerate(bad_lines):
        lines.insert(7 * (k + 1), line)
    return lines


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Assets:
    root = tmp_path_factory.mktemp("align-assets")
    sft = align_corpus.sft_records(160, seed=0, max_chars=120)
    texts = [m["content"] for r in align_corpus.sft_records(1000, seed=9) for m in r.get("messages", [])]
    texts += [f"{e.summary}\n{e.name}" for e in align_corpus.entries(400)]
    train(TokenizerSpec(vocab_size=VOCAB, byte_fallback=False), iter(texts), out=root / "tokenizer.model", threads=1)
    llama3_style(root / "llama3-tokenizer", texts, vocab_size=VOCAB)
    # A long user turn with an answer that fits after truncation: kept, counted as truncated.
    sft.append({"messages": [{"role": "user", "content": "Short question?"},
                             {"role": "assistant", "content": "A long answer. " * 60}]})
    dpo = align_corpus.preference_records(32, seed=1, max_chars=120)
    (root / "sft.jsonl").write_text("\n".join(_with_bad_lines(sft, BAD_SFT)) + "\n")
    (root / "dpo.jsonl").write_text("\n".join(_with_bad_lines(dpo, BAD_DPO)) + "\n")
    return Assets(root / "tokenizer.model", root / "llama3-tokenizer", root / "sft.jsonl", root / "dpo.jsonl",
                  len(sft), len(dpo), BAD_SFT, BAD_DPO)
