"""Hugging Face model folders as a starting point: what their config.json says in llmops's model fields.

`model.init_from: hf:DIR` (continued pre-training) and `align.start_from:
hf:DIR` (SFT/DPO) start from a local transformers folder. Its config.json
gives the model's shape; this module reads it without torch, so `llmops
validate` can fill the spec's model fields from it and name any field the
spec sets differently. The architectures llmops computes exactly:

* Llama (``LlamaForCausalLM``: Llama 2 and 3, with Llama 3.1's RoPE scaling),
  Mistral (without a sliding window shorter than the sequence) and Qwen2
  (Llama-style with a bias on the query/key/value projection): RMSNorm,
  RoPE, SwiGLU, grouped-query attention.
* GPT-2 (``GPT2LMHeadModel``): LayerNorm, learned positions, GELU, biases.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmops.errors import UserError
from llmops.spec.base import absolute_path

PREFIX = "hf:"
LLAMA_FAMILY = ("llama", "mistral", "qwen2")


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
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{folder} has no config.json, so it is not a Hugging Face model folder",
                        "point hf: at a folder that transformers' save_pretrained (or `llmops export`) wrote") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read as JSON ({exc})", "check the file") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object", "check the file")
    if not any(Path(folder).glob("*.safetensors")):
        raise UserError(f"{folder} holds no *.safetensors weights",
                        "save the model with safetensors (save_pretrained does by default)")
    return config


def model_fields(config: dict[str, Any]) -> dict[str, Any]:
    """llmops's model fields for a transformers config; UserError naming what llmops cannot compute exactly."""
    kind = config.get("model_type")
    if kind == "gpt2":
        return _gpt2(config)
    if kind in LLAMA_FAMILY:
        return _llama(config, kind)
    raise UserError(f"model_type {kind!r} is not an architecture llmops can start from",
                    f"use a {', '.join(LLAMA_FAMILY)} or gpt2 model")


def _need(config: dict[str, Any], key: str) -> Any:
    if config.get(key) is None:
        raise UserError(f"config.json has no {key}", "re-save the model with a current transformers")
    return config[key]


def _refuse(what: str, why: str) -> UserError:
    return UserError(f"config.json: {what}: {why}", "start from a model without it, or convert it yourself")


def _llama(config: dict[str, Any], kind: str) -> dict[str, Any]:
    heads, hidden = _need(config, "num_attention_heads"), _need(config, "hidden_size")
    if config.get("head_dim") not in (None, hidden // heads):
        raise _refuse(f"head_dim = {config['head_dim']}", f"llmops uses hidden_size / heads = {hidden // heads}")
    if config.get("hidden_act", "silu") != "silu":
        raise _refuse(f"hidden_act = {config['hidden_act']}", "llmops's gated MLP is SwiGLU (silu)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise _refuse("attention_bias / mlp_bias", "llmops has a bias on the query/key/value projection only "
                      "(Qwen2's), not on the output projection or the MLP")
    window = config.get("sliding_window") if config.get("use_sliding_window", kind == "mistral") else None
    if window is not None:
        raise _refuse(f"sliding_window = {window}", "llmops attends over the whole sequence")
    rope = _rope(config)
    return {"normalization": "RMSNorm", "position_embedding": "rope", "activation": "swiglu",
            "num_layers": _need(config, "num_hidden_layers"), "hidden_size": hidden, "num_attention_heads": heads,
            "num_query_groups": config.get("num_key_value_heads") or heads,
            "ffn_hidden_size": _need(config, "intermediate_size"), "vocab_size": _need(config, "vocab_size"),
            "norm_epsilon": float(config.get("rms_norm_eps", 1e-6)),
            "tie_embeddings": bool(config.get("tie_word_embeddings", False)),
            "qkv_bias": kind == "qwen2", **rope}


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if float(theta) != int(theta):
        raise _refuse(f"rope_theta = {theta}", "Megatron-Core takes a whole-number RoPE base")
    out = {"rope_base": int(theta), "rope_scaling_factor": None}
    if kind == "llama3":
        expected = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        odd = {k: params.get(k) for k, v in expected.items() if params.get(k) is not None and params[k] != v}
        if odd:
            raise _refuse(f"rope scaling {odd}", "Megatron-Core's Llama 3 scaling is fixed at "
                          "low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192")
        out["rope_scaling_factor"] = float(params.get("factor", 8.0))
    elif kind not in ("default", None):
        raise _refuse(f"rope_type = {kind}", "llmops computes plain RoPE and Llama 3's scaling only")
    return out


def _gpt2(config: dict[str, Any]) -> dict[str, Any]:
    act = config.get("activation_function", "gelu_new")
    if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise _refuse(f"activation_function = {act}", "llmops's GPT-style MLP is GELU")
    if config.get("scale_attn_by_inverse_layer_idx") or config.get("reorder_and_upcast_attn"):
        raise _refuse("scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn", "llmops scales attention by "
                      "1/sqrt(head_dim) only")
    hidden = _need(config, "n_embd")
    return {"normalization": "LayerNorm", "position_embedding": "learned_absolute", "activation": "gelu",
            "num_layers": _need(config, "n_layer"), "hidden_size": hidden,
            "num_attention_heads": _need(config, "n_head"), "num_query_groups": None,
            "ffn_hidden_size": config.get("n_inner") or 4 * hidden, "vocab_size": _need(config, "vocab_size"),
            "seq_length": _need(config, "n_positions"), "norm_epsilon": float(config.get("layer_norm_epsilon", 1e-5)),
            "tie_embeddings": bool(config.get("tie_word_embeddings", True)), "qkv_bias": False,
            "rope_base": 10000, "rope_scaling_factor": None}
