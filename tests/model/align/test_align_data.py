"""Alignment data without a process group: chat template, masks, packing, bad data, the DPO loss, the spec."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from llmops.errors import SpecError, UserError
from llmops.prepare import align_corpus
from llmops.prepare.sources import stdlib_root
from llmops.spec.align import AlignSpec, ChatTokens
from llmops.spec.load import parse_spec
from llmops_model.align import examples
from llmops_model.align.chat import ChatTokenizer
from llmops_model.align.dpo_loss import preference_loss
from llmops_model.align.records import conversation
from llmops_model.align.sources import DPOSource, SFTSource, blocked_attention
from llmops_testing import tiny_spec

SEQ = 128  # the model's sequence length in these tests (conftest's assets.seq)


@pytest.fixture(scope="module")
def tok(assets) -> ChatTokenizer:
    assert assets.seq == SEQ
    return ChatTokenizer.load(str(assets.tokenizer), ChatTokens())


def _sft_source(tok, records, *, packing: bool) -> SFTSource:
    rows = [examples.tokenize_sft(tok, r, seq_length=SEQ, too_long="drop")[0] for r in records]
    ex = {name: examples.Ragged.of([row[k] for row in rows], "int32") for k, name in enumerate(("ids", "trained"))}
    return SFTSource(ex, seq_length=SEQ, packing=packing, pad_id=tok.pad_id, seed=3)


def _assistant_tokens(tok, record) -> list[int]:
    """What a straightforward reading of the conversation says the model must learn to say."""
    out = []
    for m in conversation(record):
        if m.role == "assistant":
            out += tok.encode(m.content) + [tok.markers["end"]]
    return out


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_sft_loss_mask_covers_exactly_the_assistant_tokens(tok, packing):
    records = align_corpus.sft_records(40, seed=5, max_chars=100)
    source = _sft_source(tok, records, packing=packing)
    seen = []
    for k in range(source.count):
        s = source.item(k)
        for seg, i in enumerate(source.sequences[k]):
            here = s["segment_ids"] == seg
            learned = s["labels"][here & (s["loss_mask"] > 0)].tolist()
            assert learned == _assistant_tokens(tok, records[i]), (k, seg)
            seen.append(i)
        assert not s["loss_mask"][s["segment_ids"] == len(source.sequences[k])].any()  # padding learns nothing
    assert sorted(seen) == list(range(len(records)))  # every conversation exactly once
    if packing:
        assert max(len(g) for g in source.sequences) >= 2 and source.count < len(records)


def test_packing_never_attends_across_conversations(tok):
    source = _sft_source(tok, align_corpus.sft_records(40, seed=6, max_chars=100), packing=True)
    for k in range(source.count):
        s = source.item(k)
        seg, pos = s["segment_ids"], s["position_ids"]
        blocked = blocked_attention(seg[None])[0, 0]
        allowed = (seg[:, None] == seg[None, :]) & torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
        assert torch.equal(~blocked, allowed)
        starts = torch.nonzero(torch.diff(seg) != 0).view(-1) + 1
        assert (pos[starts] == 0).all() and pos[0] == 0  # positions restart with every conversation
        assert not blocked.all(dim=-1).any()  # every token sees at least itself (no all-masked softmax row)


def test_bad_lines_are_counted_and_quarantined_never_fatal(assets, tmp_path):
    a = AlignSpec(method="sft", data={"path": str(assets.sft), "valid_fraction": 0.1}, tokenizer=str(assets.tokenizer),
                  steps=1, global_batch_size=1)
    stats = examples.build(a, seq_length=SEQ, out=tmp_path, fp="x")
    assert stats["quarantined"] == {reason: 1 for reason in sorted(assets.bad_sft)}
    assert stats["examples"] == assets.sft_good and stats["truncated"] == 1
    assert stats["train"] + stats["valid"] == stats["examples"] and stats["valid"] == round(0.1 * assets.sft_good)
    rows = [json.loads(line) for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    lines = assets.sft.read_text().splitlines()
    assert {r["reason"] for r in rows} == set(assets.bad_sft)
    for r in rows:
        assert lines[r["line"] - 1] == r["record"] == assets.bad_sft[r["reason"]]  # the line number points at it
    examples.check(stats, a=a, out=tmp_path)  # 7 bad lines of 168: under the default 10%
    strict = a.model_copy(update={"bad_data": a.bad_data.model_copy(update={"max_fraction": 0.01})})
    with pytest.raises(UserError) as err:
        examples.check(stats, a=strict, out=tmp_path)
    assert "7 of 168 lines" in err.value.message and "too_long: 1" in err.value.message
    assert "quarantine.jsonl" in err.value.fix


def test_dropping_too_long_conversations_is_counted(assets, tmp_path):
    a = AlignSpec(method="sft", data={"path": str(assets.sft)}, tokenizer=str(assets.tokenizer), steps=1,
                  global_batch_size=1, bad_data={"too_long": "drop"})
    stats = examples.build(a, seq_length=SEQ, out=tmp_path, fp="x")
    assert stats["quarantined"]["too_long"] == 2 and stats["truncated"] == 0


def test_dpo_pairs_score_only_their_responses(assets, tmp_path, tok):
    a = AlignSpec(method="dpo", data={"path": str(assets.dpo), "valid_fraction": 0}, tokenizer=str(assets.tokenizer),
                  steps=1, global_batch_size=1)
    stats = examples.build(a, seq_length=SEQ, out=tmp_path, fp="x")
    assert stats["quarantined"] == {r: 1 for r in assets.bad_dpo} and stats["examples"] == assets.dpo_good
    source = DPOSource(examples.read(tmp_path / "train.npz", "dpo"), seq_length=SEQ, pad_id=tok.pad_id,
                       eod_id=tok.eod_id, seed=0)
    for i in range(source.count):
        pair = source.item(i)
        for row, name in enumerate(("chosen", "rejected")):
            scored = pair["labels"][row][pair["loss_mask"][row] > 0].tolist()
            assert scored == source.ex[name][i].tolist() and scored[-1] == tok.markers["end"]
        shared = len(source.ex["prompt"][i])
        assert torch.equal(pair["tokens"][0, :shared], pair["tokens"][1, :shared])  # one prompt, two answers


def test_dpo_truncation_cuts_the_prompt_from_the_left(tok):
    record = {"prompt": "filler " * 300 + "What does json.dumps do?", "chosen": "Serialize obj to a JSON string.",
              "rejected": "Return the square root."}
    (prompt, chosen, rejected), cut = examples.tokenize_dpo(tok, record, seq_length=64, too_long="truncate")
    assert cut and len(prompt) + max(len(chosen), len(rejected)) + 1 <= 65
    assert prompt[-1] == tok.markers["assistant"]
    assert tok.sp.decode(prompt[-12:-2]).endswith("json.dumps do?"), tok.sp.decode(prompt)
    assert chosen == tok.response([], record["chosen"])  # the responses fit, so they are whole


def test_preference_loss_equals_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    policy, reference = -10 * torch.rand(16, 2, generator=g, dtype=torch.float64), -10 * torch.rand(16, 2, generator=g,
                                                                                                   dtype=torch.float64)
    beta, eps = 0.3, 0.1
    for kind in ("sigmoid", "ipo"):
        losses, chosen, rejected = preference_loss(policy, reference, beta=beta, kind=kind,
                                                   label_smoothing=eps if kind == "sigmoid" else 0.0)
        for i in range(16):
            (pw, pl), (rw, rl) = policy[i].tolist(), reference[i].tolist()
            h = (pw - rw) - (pl - rl)
            sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
            want = (-(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h)) if kind == "sigmoid"
                    else (h - 1 / (2 * beta)) ** 2)
            assert losses[i].item() == pytest.approx(want, rel=1e-12)
            assert chosen[i].item() == pytest.approx(beta * (pw - rw))
            assert rejected[i].item() == pytest.approx(beta * (pl - rl))


def test_builtin_examples_are_real_and_deterministic():
    assert align_corpus.sft_records(30, seed=2) == align_corpus.sft_records(30, seed=2)
    pairs = align_corpus.preference_records(30, seed=2)
    assert pairs == align_corpus.preference_records(30, seed=2)
    for p in pairs[:5]:
        assert p["chosen"] != p["rejected"]
        name = p["prompt"].split("`")[1]
        module_file = stdlib_root().joinpath(*name.split(".")[:-1])
        source = (module_file.with_suffix(".py") if module_file.with_suffix(".py").exists()
                  else module_file / "__init__.py").read_text()
        assert " ".join(p["chosen"].split()[:4]) in " ".join(source.split())  # the answer is its docstring


def _align_spec(assets, **align) -> dict:
    spec = tiny_spec("a", model={"preset": "tiny", "vocab_size": 1024, "seq_length": SEQ})
    del spec["train"]
    spec["align"] = {"method": "sft", "data": {"path": str(assets.sft)}, "tokenizer": str(assets.tokenizer),
                     "start_from": "/nowhere/yet", "steps": 4, "global_batch_size": 8, **align}
    return spec


def test_align_spec_rules_name_the_field_and_the_fix(assets):
    spec = parse_spec(_align_spec(assets))
    assert spec.stages == ["sft"] and spec.align[0].tokenizer == str(assets.tokenizer)
    cases = {
        "align.global_batch_size": dict(global_batch_size=6, micro_batch_size=4),
        "align.template.user": dict(template={"user": "<|human|>"}),
        "align.start_from": dict(start_from=None),
        "align.data.path": dict(data={"path": str(assets.sft) + ".missing"}),
    }
    for path, change in cases.items():
        with pytest.raises(SpecError) as err:
            parse_spec(_align_spec(assets, **change))
        assert path in [p.path for p in err.value.problems], (path, err.value.render())
    small = _align_spec(assets)
    small["model"]["vocab_size"] = 512
    with pytest.raises(SpecError) as err:
        parse_spec(small)
    assert "model.vocab_size = 512: is smaller than the alignment tokenizer's vocabulary (1024)" in err.value.render()


def test_control_plane_imports_without_torch():
    code = ("import sys, llmops.spec.load, llmops.spec.align, llmops.prepare.align_corpus; "
            "print(any(m.startswith(('torch', 'megatron')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_a_missing_or_different_starting_checkpoint_is_refused_with_the_fix(assets, tmp_path):
    from llmops_model.align.stage import start_checkpoint

    spec = parse_spec(_align_spec(assets, start_from=str(tmp_path / "ckpts")))
    with pytest.raises(UserError, match="holds no complete checkpoint"):
        start_checkpoint(spec, run_dir=tmp_path)
    saved = {**spec.model.model_dump(mode="json"), "hidden_size": 128}
    (tmp_path / "ckpts" / "iter_0000005").mkdir(parents=True)
    (tmp_path / "ckpts" / "iter_0000005" / "llmops-manifest.json").write_text(json.dumps(
        {"files": {}, "model": saved, "layout": {"tp": 1, "pp": 1, "dp": 1}}))
    with pytest.raises(UserError) as err:
        start_checkpoint(spec, run_dir=tmp_path)
    assert "is a different model (hidden_size: 128 there, 64 here)" in err.value.message
    assert "give model: the shape the checkpoint was pre-trained with" in err.value.fix
    saved["hidden_size"] = 64
    (tmp_path / "ckpts" / "iter_0000005" / "llmops-manifest.json").write_text(json.dumps(
        {"files": {}, "model": saved, "layout": {"tp": 1, "pp": 1, "dp": 1}}))
    assert start_checkpoint(spec, run_dir=tmp_path).name == "iter_0000005"


def test_lines_that_crashed_tokenizing_are_quarantined(assets, tmp_path):
    """A lone surrogate reached SentencePiece and stopped the stage; deep nesting raised RecursionError."""
    good = [json.dumps({"prompt": f"question {i}", "response": "an answer"}) for i in range(20)]
    data = tmp_path / "hostile.jsonl"
    data.write_text("\n".join(good + ['{"prompt": "hi \\ud800", "response": "there"}',
                                      '{"prompt": "hi", "response": "x\\udfff"}',
                                      '{"messages": ' + "[" * 50_000 + "]" * 50_000 + "}"]) + "\n")
    for method, line in (("sft", None), ("dpo", '{"prompt": "q", "chosen": "\\ud800", "rejected": "b"}')):
        if line:
            data.write_text("\n".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"})
                                      for i in range(10)) + "\n" + line + "\n")
        a = AlignSpec(method=method, data={"path": str(data), "valid_fraction": 0.0},
                      tokenizer=str(assets.tokenizer), steps=1, global_batch_size=1)
        stats = examples.build(a, seq_length=SEQ, out=tmp_path / method, fp="x")
        expected = {"invalid_unicode": 2, "malformed_json": 1} if method == "sft" else {"invalid_unicode": 1}
        assert stats["quarantined"] == expected and stats["examples"] == (20 if method == "sft" else 10)


def test_lines_are_read_as_bytes_and_every_unusable_one_is_counted(assets, tmp_path):
    """Latin-1 text was read with replacement characters and trained on (`caf\ufffd`), a bare \\r (JSON whitespace)
    split a record in two and shifted every later line number, a UTF-8 byte-order mark lost the first record, a
    50 MB line was held and tokenized whole, and a 5 MB role was copied into the quarantine file's detail (a 0.5 MB
    one here: lines over 1 MiB are too_large)."""
    good = [json.dumps({"prompt": f"question {i}", "response": "an answer"}).encode() for i in range(20)]
    lines = [b"\xef\xbb\xbf" + good[0], *good[1:10],
             b'{"prompt": "Qu\'est-ce que le caf\xe9 ?", "response": "Un caf\xe9."}',  # Latin-1: line 11
             b'{"prompt": "split",\r "response":\r "by a carriage return"}',        # JSON whitespace: line 12
             b'{"prompt": "' + b"x" * (examples.max_line_bytes(SEQ) + 10) + b'", "response": "y"}',  # line 13
             json.dumps({"messages": [{"role": "r" * 500_000, "content": "x"}]}).encode(),  # line 14
             *good[10:]]
    data = tmp_path / "bytes.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    a = AlignSpec(method="sft", data={"path": str(data), "valid_fraction": 0.0}, tokenizer=str(assets.tokenizer),
                  steps=1, global_batch_size=1)
    stats = examples.build(a, seq_length=SEQ, out=tmp_path / "out", fp="x")
    assert stats["quarantined"] == {"invalid_utf8": 1, "too_large": 1, "bad_message": 1}, stats
    assert stats["examples"] == 21 and stats["lines"] == 24  # the 20 good ones, the \r one; none lost
    rows = {r["line"]: r for r in map(json.loads, (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines())}
    assert rows[11]["reason"] == "invalid_utf8" and rows[13]["reason"] == "too_large" and rows[14]["line"] == 14
    assert (tmp_path / "out" / "quarantine.jsonl").stat().st_size < 20_000


def test_dpo_records_follow_the_same_rules_as_sft_and_say_what_is_wrong(tok):
    """A system message after the user's was kept in a DPO prompt (SFT refused it), a response list whose earlier
    messages contradicted the prompt was cut to its last message without a word, and two responses that differ
    only in what the tokenizer maps alike were quarantined as too_long."""
    from llmops_model.align.records import BadRecord

    cases = {
        "bad_message": [{"prompt": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}],
                         "chosen": "a", "rejected": "b"},
                        {"prompt": "q", "chosen": [{"role": "user", "content": "ANOTHER QUESTION"},
                                                   {"role": "assistant", "content": "a"}], "rejected": "b"}],
        "identical_responses": [{"prompt": "q", "chosen": "The caf\u00e9.", "rejected": "The caf\u00e8."}],
    }
    assert tok.encode("caf\u00e9") == tok.encode("caf\u00e8")  # both unknown to this small vocabulary
    for reason, records in cases.items():
        for r in records:
            with pytest.raises(BadRecord) as bad:
                examples.tokenize_dpo(tok, r, seq_length=SEQ, too_long="truncate")
            assert bad.value.reason == reason, (r, bad.value)
    same_prompt = {"prompt": "q", "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                   "rejected": "b"}
    (_, chosen, _), _ = examples.tokenize_dpo(tok, same_prompt, seq_length=SEQ, too_long="truncate")
    assert chosen == tok.response([], "a")  # TRL's form with the prompt repeated before the reply


def test_a_tokenizer_that_is_a_pipe_or_a_folder_is_named_so(assets, tmp_path):
    """A FIFO or /dev/zero given as the tokenizer was said not to exist."""
    import os

    os.mkfifo(tmp_path / "fifo")
    for ref, says in ((str(tmp_path / "fifo"), "is not a regular file"), ("/dev/zero", "is not a regular file"),
                      (f"hf:{tmp_path / 'fifo'}", "is not a folder"), (str(tmp_path / "none"), "does not exist")):
        with pytest.raises(SpecError) as err:
            parse_spec(_align_spec(assets, tokenizer=ref))
        assert f"align.tokenizer = '{ref}': {says}" in err.value.render(), err.value.render()


def test_template_markers_must_be_distinct(assets):
    with pytest.raises(SpecError) as err:
        parse_spec(_align_spec(assets, template={"user": "<|end|>"}))
    assert "user and end are both '<|end|>'" in err.value.render()
