"""Starting from Hugging Face models (`hf:DIR`): transformers models built locally from a config with random
weights (`save_pretrained`, no download), loaded by llmops at any layout.

* llmops's forward pass matches transformers' on the same tokens (Llama with GQA and Llama 3.1's RoPE scaling,
  Qwen2's QKV bias with tied embeddings, GPT-2);
* SFT runs from the Llama folder at TP2xPP2 and continued pre-training from the GPT-2 folder at TP1xPP2; with a
  learning rate too small to move an fp32 weight, exporting the result gives back the starting tensors, which
  checks every rank's slice of every tensor;
* a spec that contradicts the folder, a folder that is no model, and an architecture llmops cannot compute are
  refused by `llmops validate` with exit 2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from llmops.spec.align import ChatTokens
from llmops_model.align import chat
from llmops_model.align.records import Message
from llmops_testing import llmops, start, tiny_spec, wait_state, write_spec
from llmops_testing.hf_tokenizer import TEMPLATE

transformers = pytest.importorskip("transformers", reason="the hf extra: pip install 'llmops[hf]'")
from safetensors.torch import load_file  # noqa: E402 (transformers brings safetensors)

VOCAB = 1024


def _hf_model(folder: Path, kind: str, tokenizer: Path | None = None) -> Path:
    """A transformers model of `kind` with random weights (biases and norms moved off 0 and 1), saved to folder."""
    torch.manual_seed({"llama": 0, "qwen2": 1, "gpt2": 2}[kind])
    small = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 256}
    if kind == "llama":
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
        config = transformers.LlamaConfig(**{**small, "max_position_embeddings": 16384}, num_hidden_layers=4,
                                          rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=rope,
                                          tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    elif kind == "qwen2":
        config = transformers.Qwen2Config(**small, num_hidden_layers=2, rms_norm_eps=1e-6, tie_word_embeddings=True)
    else:
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=4, n_head=4, n_positions=128,
                                         activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                         bos_token_id=1, eos_token_id=2)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder)
    if tokenizer is not None and tokenizer.is_dir():  # a Hugging Face tokenizer: its files beside the model's
        shutil.copytree(tokenizer, folder, dirs_exist_ok=True)
    elif tokenizer is not None:
        shutil.copyfile(tokenizer, folder / "tokenizer.model")
    return folder


def _logits_here_and_there(folder: Path, tokens: torch.Tensor, work: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(llmops's logits, transformers' logits) for `tokens`; llmops's in a fresh interpreter from `hf:folder`."""
    torch.save(tokens, work / "tokens.pt")
    code = textwrap.dedent(f"""
        import torch
        from llmops_model.compat import mcore
        mcore.quiet_known_warnings()
        from llmops.spec.load import parse_spec
        from llmops_model.hf import weights
        spec = parse_spec({{"name": "x", "resources": {{"cpu": True, "processes_per_node": 1}},
                           "train": {{"steps": 1, "global_batch_size": 2, "micro_batch_size": 2}},
                           "model": {{"init_from": "hf:{folder}", "seq_length": 128}}}})
        tokens = torch.load({str(work / "tokens.pt")!r})
        with weights.process_group_of_one(spec):
            model = weights.build(spec)
            weights.load_hf(model, __import__("pathlib").Path({str(folder)!r}), spec)
            model.eval()
            with torch.no_grad():
                logits = model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)
        torch.save(logits, {str(work / "logits.pt")!r})
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = model(tokens).logits
    return torch.load(work / "logits.pt"), theirs


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_llmops_computes_what_transformers_computes(kind, tmp_path):
    folder = _hf_model(tmp_path / kind, kind)
    tokens = torch.randint(0, VOCAB, (2, 100), generator=torch.Generator().manual_seed(3))
    ours, theirs = _logits_here_and_there(folder, tokens, tmp_path)
    diff = (ours - theirs).abs().max().item()
    print(f"{kind}: max |logit difference| {diff:.2e}")
    assert ours.shape == theirs.shape and diff < 1e-4


def _same_tensors(exported: Path, original: Path) -> None:
    ours, theirs = load_file(exported / "model.safetensors"), load_file(original / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.allclose(ours[name], tensor, atol=1e-6, rtol=0), name


def test_sft_at_tp2pp2_and_pretraining_at_tp1pp2_start_from_hf_folders(tmp_path, assets):
    llama = _hf_model(tmp_path / "llama", "llama", tokenizer=assets.hf_tokenizer)  # tokenizer.json, as Llama 3
    gpt2 = _hf_model(tmp_path / "gpt2", "gpt2")
    root = tmp_path / "runs"
    sft = tiny_spec("sft-from-llama", tp=2, pp=2, model={"seq_length": assets.seq},
                    samples={"enabled": True, "max_new_tokens": 8})
    del sft["train"]
    sft["align"] = {"method": "sft", "start_from": f"hf:{llama}", "data": {"path": str(assets.sft)}, "steps": 2,
                    "global_batch_size": 8, "micro_batch_size": 2, "lr": 1e-12, "bad_data": {"max_fraction": 0.2}}
    pre = tiny_spec("pretrain-from-gpt2", tp=1, pp=2, steps=2, train={"lr": 1e-12, "min_lr": 1e-12,
                                                                        "warmup_steps": 0, "weight_decay": 0.0},
                    model={"init_from": f"hf:{gpt2}"}, samples={"enabled": True})
    res = llmops("validate", str(write_spec(tmp_path / "pre.yaml", pre)))
    assert res.returncode == 0, res.stderr
    runs = {name: start(write_spec(tmp_path / f"{name}.yaml", spec), root) for name, spec in
            (("sft", sft), ("pre", pre))}
    for run in runs.values():
        wait_state(run, {"SUCCEEDED"}, timeout=400)
    for name, original in (("sft", llama), ("pre", gpt2)):
        run = runs[name]
        log = "\n".join(p.read_text() for p in (run / "logs").glob("*.log"))
        assert f"starting weights from hf:{original}" in log
        if name == "pre":  # synthetic tokens: no tokenizer to write the stage's samples with
            assert "[llmops] samples: skipped, the run has no tokenizer" in log
        spec = json.loads(json.dumps(__import__("yaml").safe_load((run / "spec.yaml").read_text())))
        assert spec["model"]["preset"] is None and spec["model"]["num_layers"] == 4
        res = llmops("export", run.name, "--out", str(tmp_path / f"{name}-export"), "--runs-dir", str(root))
        assert res.returncode == 0, res.stderr
        _same_tensors(tmp_path / f"{name}-export", original)
    exported = json.loads((tmp_path / "sft-export" / "config.json").read_text())
    assert exported["rope_parameters"]["rope_type"] == "llama3" and exported["num_key_value_heads"] == 2

    # The folder's own tokenizer (tokenizer.json and its chat template) tokenized the SFT data, wrote the
    # stage's chat samples and went out with the export as it came.
    run = runs["sft"]
    assert yaml.safe_load((run / "spec.yaml").read_text())["align"][0]["tokenizer"] == f"hf:{llama}"
    stats = json.loads((run / "align-data-sft" / "stats.json").read_text())
    assert (stats["vocab_size"], stats["eod_id"]) == (VOCAB, 2)
    assert set(stats["quarantined"]) == set(assets.bad_sft)
    samples = [json.loads(line) for line in (run / "stages" / "sft" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["chat"] for s in samples)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "sft-export")
    assert theirs.chat_template == TEMPLATE and not (tmp_path / "sft-export" / "tokenizer.model").exists()
    turns = [Message("user", "What does os.path.join do?"), Message("assistant", "It joins paths.")]
    ours = chat.load(f"hf:{llama}", ChatTokens()).render(turns)[0]
    assert theirs.apply_chat_template([vars(m) for m in turns], return_dict=False) == ours[:-1]


def test_a_spec_that_contradicts_the_folder_or_a_folder_llmops_cannot_use_is_exit_2(tmp_path):
    llama = _hf_model(tmp_path / "llama", "llama")
    spec = tiny_spec("x", model={"init_from": f"hf:{llama}", "num_layers": 8, "preset": None})
    res = llmops("validate", str(write_spec(tmp_path / "a.yaml", spec)))
    assert res.returncode == 2
    assert "model.num_layers" in res.stderr and "(4, " in res.stderr and "Fix:" in res.stderr

    spec = tiny_spec("x", model={"init_from": f"hf:{llama}"})  # the default preset's shape gives way silently
    assert llmops("validate", str(write_spec(tmp_path / "b.yaml", spec))).returncode == 0

    (tmp_path / "empty").mkdir()
    res = llmops("validate", str(write_spec(tmp_path / "c.yaml", tiny_spec("x", model={
        "init_from": f"hf:{tmp_path / 'empty'}"}))))
    assert res.returncode == 2 and "has no config.json" in res.stderr

    bert = tmp_path / "bert"
    shutil.copytree(llama, bert)
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    res = llmops("validate", str(write_spec(tmp_path / "d.yaml", tiny_spec("x", model={"init_from": f"hf:{bert}"}))))
    assert res.returncode == 2 and "'bert' is not an architecture llmops can start from" in res.stderr

    (bert / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    res = llmops("validate", str(write_spec(tmp_path / "e.yaml", tiny_spec("x", model={"init_from": f"hf:{bert}"}))))
    assert res.returncode == 2 and "attention_bias" in res.stderr
