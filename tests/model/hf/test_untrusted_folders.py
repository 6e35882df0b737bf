"""Hugging Face model folders from elsewhere (`model.init_from` / `align.start_from: hf:DIR`) are untrusted input.

One tiny Llama folder (and a sharded copy, and a GPT-2 saved from its base model, as the Hub's GPT-2 is) is
saved by transformers itself; each case breaks a copy the way a careless or hostile download does. What must
hold: `llmops validate` (and so `run` and `submit`) ends with exit 2 and a message naming the problem and the
fix, before a run directory is written or a model is built from the folder's numbers; never a traceback, a
hang on a pipe, a model of config.json's size filled with random numbers, a file read from outside the folder,
or a model that silently differs from what transformers computes from the same folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from llmops_testing import llmops, tiny_spec, write_spec

transformers = pytest.importorskip("transformers", reason="the hf extra: pip install 'llmops[hf]'")
from safetensors.torch import load_file, save_file  # noqa: E402 (transformers brings safetensors)

VOCAB = 256


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Folders transformers' save_pretrained wrote: a Llama (untied), the same Llama in shards with an index,
    and a GPT-2 saved from GPT2Model (names without `transformer.`, as in the Hub's gpt2)."""
    root = tmp_path_factory.mktemp("hf-folders")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=128,
                                      tie_word_embeddings=False)
    llama = transformers.AutoModelForCausalLM.from_config(config)
    llama.save_pretrained(root / "llama")
    llama.save_pretrained(root / "sharded", max_shard_size="40KB")
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                          n_positions=64, bos_token_id=1, eos_token_id=2))
    gpt2.save_pretrained(root / "gpt2-base")
    return {"llama": root / "llama", "sharded": root / "sharded", "gpt2-base": root / "gpt2-base"}


def _copy(saved: dict[str, Path], tmp_path: Path, kind: str = "llama") -> Path:
    folder = tmp_path / kind
    shutil.copytree(saved[kind], folder)
    return folder


def _config(**changes):
    def change(folder: Path) -> None:
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, **changes}))
    return change


def _weights(change_tensors):
    def change(folder: Path) -> None:
        tensors = load_file(folder / "model.safetensors")
        change_tensors(tensors)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return change


def _index(change_map):
    def change(folder: Path) -> None:
        path = folder / "model.safetensors.index.json"
        index = json.loads(path.read_text())
        change_map(index["weight_map"], folder)
        path.write_text(json.dumps(index))
    return change


def _validate(folder: Path, tmp_path: Path, monkeypatch, **model) -> tuple[int, str]:
    """`llmops validate` of a spec that starts from `folder`: the real CLI, in this process (exit code, stderr)."""
    from llmops.cli import main

    spec = write_spec(tmp_path / "spec.yaml", tiny_spec("x", model={"init_from": f"hf:{folder}", **model}))
    monkeypatch.setattr(sys, "argv", ["llmops", "validate", str(spec)])
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            return exc.code, err.getvalue()
    return 0, err.getvalue()


CONFIG_CASES = {
    "deep nesting": (lambda f: (f / "config.json").write_text("[" * 100_000 + "]" * 100_000),
                     "config.json cannot be read as JSON (nested too deeply)"),
    "heads 0": (_config(num_attention_heads=0), "num_attention_heads = 0 is not a whole number of at least 1"),
    "layers 0": (_config(num_hidden_layers=0), "num_hidden_layers = 0 is not a whole number of at least 1"),
    "vocabulary as text": (_config(vocab_size="256"), "vocab_size = '256' is not a whole number"),
    "vocabulary as a float": (_config(vocab_size=256.0), "vocab_size = 256.0 is not a whole number"),
    "tie as text": (_config(tie_word_embeddings="false"), "tie_word_embeddings = 'false' is not true or false"),
    "epsilon as text": (_config(rms_norm_eps="x"), "rms_norm_eps = 'x' is not a number above 0"),
    "rope as a list": (_config(rope_parameters=[1, 2]), "rope_parameters = [1, 2] is not a JSON object"),
    "rope base NaN": (_config(rope_parameters={"rope_type": "default", "rope_theta": float("nan")}),
                      "rope_theta = nan is not a number above 0"),
    "rope factor below 1": (_config(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 0.5}),
                            "gives model.rope_scaling_factor = 0.5: input should be greater than 1"),
    "a vocabulary of 10**12": (_config(vocab_size=10**12), "gives model.vocab_size = 1000000000000"),
    "its own code": (_config(auto_map={"AutoModelForCausalLM": "modeling_x.X"}),
                     "config.json names Python code that came with the folder (auto_map)"),
    "quantized": (_config(quantization_config={"quant_method": "fp8"}), "quantization_config ('fp8'): the weights "
                  "are quantized"),
}

WEIGHT_CASES = {
    "fewer layers than stored": (_config(num_hidden_layers=1), "config.json says 1 layer(s), but its weights hold 2"),
    "more layers than stored": (_config(num_hidden_layers=4), "its weights do not fit its config.json: 18 tensor(s) "
                                "missing (model.layers.2.input_layernorm.weight"),
    "a larger vocabulary": (_config(vocab_size=512), "2 of another shape (lm_head.weight is [256, 32], not [512, 32]"),
    "another MLP width": (_config(intermediate_size=128), "model.layers.0.mlp.gate_proj.weight is [64, 32], not "
                          "[128, 32]"),
    "a tensor missing": (_weights(lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
                         "1 tensor(s) missing (model.layers.1.mlp.up_proj.weight)"),
    "no output layer": (_weights(lambda t: t.pop("lm_head.weight")), "1 tensor(s) missing (lm_head.weight)"),
    "a tensor of another shape": (_weights(lambda t: t.update({"model.norm.weight": torch.ones(16)})),
                                  "model.norm.weight is [16], not [32]"),
    "integer weights": (_weights(lambda t: t.update({"model.norm.weight": torch.ones(32, dtype=torch.int8)})),
                        "the tensor model.norm.weight is stored as I8"),
    "FP8 weights": (_weights(lambda t: t.update({k: v.to(torch.float8_e4m3fn) for k, v in t.items()})),
                    "is stored as F8_E4M3"),
    "tied over a different lm_head": (_config(tie_word_embeddings=True), "ties the output layer to the token "
                                      "embedding (tie_word_embeddings), but the weights hold an lm_head.weight"),
    "cut short": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-100]),
                  "model.safetensors is damaged or no safetensors file (Error while deserializing header: "
                  "incomplete metadata, file not fully covered)"),
    "a header cut short": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:99]),
                           "model.safetensors is damaged or no safetensors file (Error while deserializing header"),
    "a folder for a file": (lambda f: ((f / "model.safetensors").unlink(), (f / "model.safetensors").mkdir()),
                            "model.safetensors is not a regular file (a folder, a pipe or a device)"),
    "a pipe for a file": (lambda f: ((f / "model.safetensors").unlink(), os.mkfifo(f / "model.safetensors")),
                          "model.safetensors is not a regular file (a folder, a pipe or a device)"),
}


def _shard_out(absolute: bool):
    def change(weight_map: dict, folder: Path) -> None:
        first = sorted(set(weight_map.values()))[0]
        shutil.move(folder / first, folder.parent / first)
        to = str(folder.parent / first) if absolute else f"../{first}"
        weight_map.update({k: to for k, v in weight_map.items() if v == first})
    return change


INDEX_CASES = {
    "a shard outside the folder": (_index(_shard_out(absolute=False)), "in '../model-00001-of-"),
    "a shard by absolute path": (_index(_shard_out(absolute=True)), "which is not a file of the folder"),
    "a shard missing": (_index(lambda m, f: (f / sorted(set(m.values()))[0]).unlink()),
                        ".safetensors cannot be read (No such file or directory)"),
    "no weight map": (lambda f: (f / "model.safetensors.index.json").write_text('{"weight_map": [1]}'),
                      "model.safetensors.index.json has no weight_map"),
    "a tensor in the wrong shard": (_index(lambda m, f: m.update({"model.norm.weight": next(
        v for v in sorted(set(m.values())) if v != m["model.norm.weight"])})), "1 tensor(s) missing "
        "(model.norm.weight (which model.safetensors.index.json puts in model-0000"),
}


GPT2_CASES = {  # transformers computes another attention from these; llmops computed its own, silently
    "unscaled attention": (_config(scale_attn_weights=False), "scale_attn_weights / scale_attn_by_inverse_layer_idx"),
}
CASES = {**CONFIG_CASES, **WEIGHT_CASES, **INDEX_CASES, **GPT2_CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_a_folder_that_does_not_hold_the_model_it_describes_is_exit_2_at_validate(case, saved, tmp_path,
                                                                                   monkeypatch):
    change, said = CASES[case]
    kind = "sharded" if case in INDEX_CASES else "gpt2-base" if case in GPT2_CASES else "llama"
    folder = _copy(saved, tmp_path, kind)
    change(folder)
    code, err = _validate(folder, tmp_path, monkeypatch)
    assert code == 2 and said in err and "Fix:" in err and "Traceback" not in err, err


def test_folders_as_transformers_and_the_hub_save_them_are_accepted(saved, tmp_path, monkeypatch):
    """The positive controls: a single file, shards with an index, a Hugging Face cache snapshot (every file a
    link to a blob outside it), a tied model whose lm_head is stored as a copy, and GPT-2's base-model names."""
    for kind in ("llama", "sharded"):
        assert _validate(saved[kind], tmp_path, monkeypatch) == (0, "")
    snapshot = tmp_path / "models--x--y" / "snapshots" / "abc"
    (tmp_path / "models--x--y" / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in saved["llama"].iterdir():
        blob = tmp_path / "models--x--y" / "blobs" / file.name
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("../../blobs") / file.name)
    assert _validate(snapshot, tmp_path, monkeypatch) == (0, "")

    tied = _copy(saved, tmp_path)
    _weights(lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].clone()}))(tied)
    _config(tie_word_embeddings=True)(tied)
    assert _validate(tied, tmp_path, monkeypatch) == (0, "")


def test_gpt2_saved_without_the_transformer_prefix_loads_as_transformers_loads_it(saved, tmp_path, monkeypatch):
    """The Hub's gpt2 stores `wte.weight`, `h.0.attn.c_attn.weight`, ...: transformers loads it into
    GPT2LMHeadModel, and llmops's reader (every training rank's) must find the same tensors."""
    from llmops.spec.load import parse_spec
    from llmops_model.hf import weights

    folder = saved["gpt2-base"]
    assert _validate(folder, tmp_path, monkeypatch) == (0, "")
    spec = parse_spec(tiny_spec("x", model={"init_from": f"hf:{folder}"}))
    read = weights._reader(folder, spec)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).state_dict()
    for name in ("transformer.wte.weight", "transformer.h.1.attn.c_attn.weight", "transformer.ln_f.bias"):
        assert torch.equal(read(name), theirs[name]), name


def test_the_training_reader_keeps_to_the_folder_and_names_a_missing_tensor(saved, tmp_path):
    """What every rank reads at step 0, for a folder changed after `llmops validate`: an index that points out
    of the folder, or a tensor gone, is exit 2 with the fix, not a file read from elsewhere or a KeyError."""
    from llmops.errors import UserError
    from llmops.spec.load import parse_spec
    from llmops_model.hf import weights

    spec = parse_spec(tiny_spec("x", model={"init_from": f"hf:{saved['sharded']}"}))
    outside = _copy(saved, tmp_path, "sharded")
    _index(_shard_out(absolute=False))(outside)
    with pytest.raises(UserError, match="which is not a file of the folder"):
        weights._reader(outside, spec)
    read = weights._reader(saved["sharded"], spec)
    with pytest.raises(UserError, match=r"has no tensor model\.layers\.9\.mlp\.up_proj\.weight") as exc:
        read("model.layers.9.mlp.up_proj.weight")
    assert exc.value.exit_code == 2 and exc.value.fix


def test_run_refuses_a_broken_folder_before_writing_a_run_directory(saved, tmp_path):
    """`llmops run` from a folder whose weights lack a tensor: exit 2 before anything is written (it trained
    until the load at step 0 and ended in a KeyError, exit 1), and a config.json that is a pipe is no hang."""
    folder = _copy(saved, tmp_path)
    _weights(lambda t: t.pop("model.layers.0.self_attn.k_proj.weight"))(folder)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec("x", steps=1, model={"init_from": f"hf:{folder}",
                                                                             "seq_length": 64}))
    res = llmops("run", str(spec), "--runs-dir", str(tmp_path / "runs"), timeout=120)
    assert res.returncode == 2 and "1 tensor(s) missing (model.layers.0.self_attn.k_proj.weight)" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "runs").exists()

    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    res = llmops("validate", str(spec), timeout=60)
    assert res.returncode == 2 and "config.json is not a regular file" in res.stderr, res.stderr


def test_generate_refuses_a_deep_config_and_a_pipe_for_weights(saved, tmp_path):
    """`llmops generate` and `llmops eval` check a folder with llmops_model.hf.folder: the same two inputs were a
    RecursionError traceback and a hang."""
    deep = _copy(saved, tmp_path)
    (deep / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    piped = tmp_path / "piped"
    shutil.copytree(saved["llama"], piped)
    (piped / "model.safetensors").unlink()
    os.mkfifo(piped / "model.safetensors")
    for folder, said in ((piped, "model.safetensors is not a regular file"),
                         (deep, "config.json cannot be read as JSON (nested too deeply)")):
        res = llmops("generate", str(folder), "--prompt", "x", timeout=60)
        assert res.returncode == 2 and said in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_a_file_linked_out_of_the_folder_is_refused_wherever_the_folder_is_read(saved, tmp_path, monkeypatch):
    """A folder from elsewhere whose chat_template.jinja linked to a file of the user's: its text was rendered
    into every training example of an SFT run, and would go out with the model. Links out of the folder are now
    exit 2 where llmops reads a folder (validate, the tokenizer and template of prepare and align, generate);
    links of a Hugging Face cache snapshot into its own blobs/ stay fine (the test above)."""
    from llmops.errors import UserError
    from llmops.prepare import pretrained

    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = not-for-training\n")
    folder = _copy(saved, tmp_path)
    (folder / "chat_template.jinja").symlink_to(secret)
    said = f"{folder}/chat_template.jinja is a link to {secret}, outside the folder"
    code, err = _validate(folder, tmp_path, monkeypatch)
    assert code == 2 and said in " ".join(err.split()) and "Fix:" in err, err
    with pytest.raises(UserError, match="outside the folder"):
        pretrained.chat_template(folder)
    res = llmops("generate", str(folder), "--prompt", "x", timeout=60)
    assert res.returncode == 2 and said in " ".join(res.stderr.split()), res.stderr
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.jinja").symlink_to("config.json")  # inside the folder: read as it is
    assert _validate(folder, tmp_path, monkeypatch) == (0, "")
