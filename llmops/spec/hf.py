"""Hugging Face model folders as a starting point: what their config.json says in llmops's model fields.

`model.init_from: hf:DIR` (continued pre-training) and `align.start_from:
hf:DIR` (SFT/DPO) start from a local transformers folder. Its config.json
gives the model's shape; this module reads it without torch, so `llmops
validate` can fill the spec's model fields from it and name any field the
spec sets differently, and compare it with the weights' safetensors headers
(:func:`check_weights`) before a model of config.json's size is built. The
architectures llmops computes exactly:

* Llama (``LlamaForCausalLM``: Llama 2 and 3, with Llama 3.1's RoPE scaling),
  Mistral (without a sliding window shorter than the sequence) and Qwen2
  (Llama-style with a bias on the query/key/value projection): RMSNorm,
  RoPE, SwiGLU, grouped-query attention.
* GPT-2 (``GPT2LMHeadModel``): LayerNorm, learned positions, GELU, biases.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from llmops.errors import UserError, cut
from llmops.spec.base import absolute_path

PREFIX = "hf:"
LLAMA_FAMILY = ("llama", "mistral", "qwen2")
MAX_CONFIG_BYTES = 4 << 20
"""Larger is no config.json (Llama 3's is 1 kB)."""
REFETCH = "download the model folder again, or save it with transformers' save_pretrained"


def folder_of(value: str | None) -> str | None:
    """The folder of an `hf:DIR` reference, else None."""
    return value[len(PREFIX):] if isinstance(value, str) and value.startswith(PREFIX) else None


def tokenizer_reference(value: str) -> str:
    """A tokenizer field made absolute: `hf:DIR` for a Hugging Face tokenizer folder (named with or without
    the prefix; see llmops.prepare.pretrained), else the SentencePiece model's path."""
    if value.startswith(PREFIX):
        return PREFIX + absolute_path(value[len(PREFIX):])
    return PREFIX + absolute_path(value) if os.path.isdir(value) else absolute_path(value)


def tokenizer_beside(folder: str) -> str | None:
    """The tokenizer saved with a Hugging Face model: `hf:` and the folder where it holds tokenizer.json (with
    the model's own chat template), else its SentencePiece tokenizer.model; None when it has neither."""
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return PREFIX + folder
    model = os.path.join(folder, "tokenizer.model")
    return model if os.path.isfile(model) else None


def tokenizer_exists(ref: str) -> bool:
    """Whether a tokenizer reference names something here: a folder (`hf:DIR`) or a file."""
    folder = folder_of(ref)
    return os.path.isdir(folder) if folder is not None else os.path.isfile(ref)


def read_config(folder: str | Path) -> dict[str, Any]:
    """The folder's config.json; UserError when it is not a model folder."""
    path = Path(folder) / "config.json"
    check_links(folder)
    if not path.exists():
        raise UserError(f"{folder} has no config.json, so it is not a Hugging Face model folder",
                        "point hf: at a folder that transformers' save_pretrained (or `llmops export`) wrote")
    try:
        config = json.loads(read_bounded(path, "config.json", MAX_CONFIG_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{path} cannot be read as JSON ({json_reason(exc)})", "check the file") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object", "check the file")
    if not any(Path(folder).glob("*.safetensors")):
        raise UserError(f"{folder} holds no *.safetensors weights",
                        "save the model with safetensors (save_pretrained does by default)")
    return config


def check_links(folder: str | Path) -> None:
    """UserError when a file of the folder is a link that leads out of it. A folder from elsewhere (a tarball, a
    copy) could link its chat template to a file of yours, whose text would then be trained on and published
    with the model. Allowed: links within the folder, and in a Hugging Face cache snapshot
    (``<repo>/snapshots/<revision>/``) links into the repository's own ``blobs/``, which is how the cache
    stores every file."""
    folder = Path(folder)
    roots = [folder.resolve()]
    if folder.resolve().parent.name == "snapshots":
        roots.append(folder.resolve().parent.parent / "blobs")
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return  # the reader that needs the folder says why it cannot
    for entry in entries:
        if entry.is_symlink():
            target = entry.resolve()
            if not any(target.is_relative_to(root) for root in roots):
                raise UserError(f"{entry} is a link to {target}, outside the folder: a folder from elsewhere must "
                                "not read your other files into a run",
                                "replace the link with a copy of the file it should be, or remove it")


def read_bounded(path: Path, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (a link is followed: Hugging Face's cache links
    each file of a snapshot to its blob); UserError otherwise (reading a pipe or a device never ends)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path} is not a regular file (a folder, a pipe or a device)", REFETCH)
        if info.st_size > limit:
            raise UserError(f"{path} holds {info.st_size:,} bytes, more than a {what} does ({limit:,} at most)",
                            REFETCH)
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror})", REFETCH) from None


def json_reason(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]


def model_fields(config: dict[str, Any]) -> dict[str, Any]:
    """llmops's model fields for a transformers config; UserError naming what llmops cannot compute exactly, or
    a value of the wrong kind (transformers writes whole numbers, numbers and true/false)."""
    if config.get("auto_map"):
        raise UserError("config.json names Python code that came with the folder (auto_map): its architecture is "
                        "the folder's own, not one llmops computes, and llmops never runs a folder's code",
                        f"use a model whose architecture transformers itself provides ({', '.join(LLAMA_FAMILY)} "
                        "or gpt2)")
    if config.get("quantization_config"):
        method = config["quantization_config"]
        method = method.get("quant_method") if isinstance(method, dict) else method
        raise UserError(f"config.json: quantization_config ({shown(method)}): the weights are quantized, and "
                        "llmops starts from full-precision weights (its integer or FP8 tensors need their scales)",
                        "start from the model's unquantized release (bf16, fp16 or fp32 weights)")
    kind = config.get("model_type")
    if kind == "gpt2":
        return _gpt2(config)
    if kind in LLAMA_FAMILY:
        return _llama(config, kind)
    raise UserError(f"model_type {shown(kind)} is not an architecture llmops can start from",
                    f"use a {', '.join(LLAMA_FAMILY)} or gpt2 model")


def shown(value: Any) -> str:
    return cut(repr(value), 80)


def _bad(key: str, value: Any, kind: str) -> UserError:
    return UserError(f"config.json: {key} = {shown(value)} is not {kind}",
                     "use the config.json that transformers' save_pretrained wrote with these weights")


def _need(config: dict[str, Any], key: str, default: Any = None) -> int:
    """A whole number of at least 1 (a size or a count); `default` where the key is absent or null."""
    value = config.get(key)
    if value is None and default is None:
        raise UserError(f"config.json has no {key}", "re-save the model with a current transformers")
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(key, value, "a whole number of at least 1")
    return value


def _number(key: str, value: Any) -> float:
    """A finite number above 0 (an epsilon, a RoPE base or factor)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise _bad(key, value, "a number above 0")
    return float(value)


def _flag(config: dict[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if value is not None and not isinstance(value, bool):
        raise _bad(key, value, "true or false")
    return default if value is None else value


def _refuse(what: str, why: str) -> UserError:
    return UserError(f"config.json: {what}: {why}", "start from a model without it, or convert it yourself")


def _llama(config: dict[str, Any], kind: str) -> dict[str, Any]:
    heads, hidden = _need(config, "num_attention_heads"), _need(config, "hidden_size")
    if config.get("head_dim") is not None and _need(config, "head_dim") != hidden // heads:
        raise _refuse(f"head_dim = {config['head_dim']}", f"llmops uses hidden_size / heads = {hidden // heads}")
    if config.get("hidden_act", "silu") != "silu":
        raise _refuse(f"hidden_act = {shown(config['hidden_act'])}", "llmops's gated MLP is SwiGLU (silu)")
    if _flag(config, "attention_bias", False) or _flag(config, "mlp_bias", False):
        raise _refuse("attention_bias / mlp_bias", "llmops has a bias on the query/key/value projection only "
                      "(Qwen2's), not on the output projection or the MLP")
    window = config.get("sliding_window") if config.get("use_sliding_window", kind == "mistral") else None
    if window is not None:
        raise _refuse(f"sliding_window = {shown(window)}", "llmops attends over the whole sequence")
    rope = _rope(config)
    return {"normalization": "RMSNorm", "position_embedding": "rope", "activation": "swiglu",
            "num_layers": _need(config, "num_hidden_layers"), "hidden_size": hidden, "num_attention_heads": heads,
            "num_query_groups": _need(config, "num_key_value_heads", heads),
            "ffn_hidden_size": _need(config, "intermediate_size"), "vocab_size": _need(config, "vocab_size"),
            "norm_epsilon": _number("rms_norm_eps", config.get("rms_norm_eps", 1e-6)),
            "tie_embeddings": _flag(config, "tie_word_embeddings", False),
            "qkv_bias": kind == "qwen2", **rope}


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    key = "rope_parameters" if config.get("rope_parameters") is not None else "rope_scaling"
    params = config.get(key) or {}
    if not isinstance(params, dict):
        raise _bad(key, params, "a JSON object")
    theta = _number("rope_theta", params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if theta != int(theta):
        raise _refuse(f"rope_theta = {theta}", "Megatron-Core takes a whole-number RoPE base")
    out = {"rope_base": int(theta), "rope_scaling_factor": None}
    if kind == "llama3":
        expected = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        odd = {k: params.get(k) for k, v in expected.items() if params.get(k) is not None and params[k] != v}
        if odd:
            raise _refuse(f"rope scaling {shown(odd)}", "Megatron-Core's Llama 3 scaling is fixed at "
                          "low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192")
        out["rope_scaling_factor"] = _number("rope factor", params.get("factor", 8.0))
    elif kind not in ("default", None):
        raise _refuse(f"rope_type = {shown(kind)}", "llmops computes plain RoPE and Llama 3's scaling only")
    return out


def _gpt2(config: dict[str, Any]) -> dict[str, Any]:
    act = config.get("activation_function", "gelu_new")
    if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise _refuse(f"activation_function = {shown(act)}", "llmops's GPT-style MLP is GELU")
    if (not _flag(config, "scale_attn_weights", True) or _flag(config, "scale_attn_by_inverse_layer_idx", False)
            or _flag(config, "reorder_and_upcast_attn", False)):
        raise _refuse("scale_attn_weights / scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn",
                      "llmops scales attention by 1/sqrt(head_dim) only")
    hidden = _need(config, "n_embd")
    return {"normalization": "LayerNorm", "position_embedding": "learned_absolute", "activation": "gelu",
            "num_layers": _need(config, "n_layer"), "hidden_size": hidden,
            "num_attention_heads": _need(config, "n_head"), "num_query_groups": None,
            "ffn_hidden_size": _need(config, "n_inner", 4 * hidden), "vocab_size": _need(config, "vocab_size"),
            "seq_length": _need(config, "n_positions"),
            "norm_epsilon": _number("layer_norm_epsilon", config.get("layer_norm_epsilon", 1e-5)),
            "tie_embeddings": _flag(config, "tie_word_embeddings", True), "qkv_bias": False,
            "rope_base": 10000, "rope_scaling_factor": None}
