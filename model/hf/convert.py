"""Megatron-Core weights <-> transformers weights, and the config.json that describes them.

Two llmops model families have an exact transformers architecture:

* GPT-style (LayerNorm, learned positions, GELU, biases): ``GPT2LMHeadModel``.
  GPT-2 keeps its linears as ``Conv1D`` ([in, out], the transpose of
  ``nn.Linear``) and its fused QKV as [all queries | all keys | all values];
  Megatron interleaves them per head: [q_h, k_h, v_h] for each head h.
* Llama-style (RMSNorm, RoPE, SwiGLU, no biases, grouped-query attention):
  ``LlamaForCausalLM``. Megatron groups the fused QKV per key/value group
  (the group's queries, then its key, then its value) and the SwiGLU input
  linear as [gate | up].

Anything else (say LayerNorm with RoPE) is refused with the field that has
no transformers counterpart, rather than exported to a model that computes
something else. Megatron's defaults fix the rest: norm epsilon 1e-5, RoPE
base 10000 over the whole head dimension, softmax scale 1/sqrt(head_dim).
GELU is exact on CPUs and the tanh approximation on GPUs (Megatron's fused
bias-GELU and llmops's cuBLASLt epilogue): the export names the one the
checkpoint was trained with.
"""

from __future__ import annotations

from typing import Any

import torch

from llmops.errors import UserError
from llmops.spec.run import ModelSpec, RunSpec

NORM_EPS = 1e-5
ROPE_BASE = 10000.0

_GPT = {"normalization": "LayerNorm", "position_embedding": "learned_absolute", "activation": "gelu"}
_LLAMA = {"normalization": "RMSNorm", "position_embedding": "rope", "activation": "swiglu"}


def family(model: ModelSpec) -> str:
    """'gpt2' or 'llama'; UserError naming the field that has no transformers equivalent."""
    ours = {k: getattr(model, k) for k in _GPT}
    for name, shape in (("gpt2", _GPT), ("llama", _LLAMA)):
        if ours == shape:
            if name == "gpt2" and model.num_query_groups not in (None, model.num_attention_heads):
                raise UserError(
                    f"model.num_query_groups = {model.num_query_groups} (grouped-query attention) with GPT-style "
                    "layers has no transformers architecture to export to",
                    "train Llama-style (normalization: RMSNorm, position_embedding: rope, activation: swiglu) "
                    "for grouped-query attention, or leave num_query_groups unset")
            return name
    near = _GPT if ours["normalization"] == "LayerNorm" else _LLAMA
    odd = [f"model.{k} = {ours[k]}" for k in near if ours[k] != near[k]]
    raise UserError(
        f"{', '.join(odd)} with model.normalization = {ours['normalization']} has no transformers architecture "
        "to export to",
        "GPT-style (LayerNorm, learned_absolute, gelu) exports as GPT-2, Llama-style (RMSNorm, rope, swiglu) "
        "as Llama: train one of the two")


def config(spec: RunSpec, *, eos_ids: list[int], bos_id: int | None, pad_id: int | None,
           dtype: torch.dtype) -> dict[str, Any]:
    """config.json for the spec's model (the vocabulary is the padded one: the embedding's rows)."""
    m = spec.model
    dtype_name = str(dtype).removeprefix("torch.")
    common = {"vocab_size": m.padded_vocab_size, "tie_word_embeddings": m.tie_embeddings, "eos_token_id": eos_ids[0],
              "bos_token_id": bos_id, "pad_token_id": pad_id, "dtype": dtype_name, "use_cache": True}
    if family(m) == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **common,
                "n_embd": m.hidden_size, "n_layer": m.num_layers, "n_head": m.num_attention_heads,
                "n_inner": m.ffn_hidden_size, "n_positions": m.seq_length, "n_ctx": m.seq_length,
                "activation_function": "gelu" if spec.resources.cpu else "gelu_new",
                "layer_norm_epsilon": NORM_EPS, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common,
            "hidden_size": m.hidden_size, "intermediate_size": m.ffn_hidden_size, "num_hidden_layers": m.num_layers,
            "num_attention_heads": m.num_attention_heads,
            "num_key_value_heads": m.num_query_groups or m.num_attention_heads,
            "head_dim": m.hidden_size // m.num_attention_heads, "hidden_act": "silu",
            "max_position_embeddings": m.seq_length, "rms_norm_eps": NORM_EPS,
            "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_BASE},
            "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0}


def to_hf(state: dict[str, torch.Tensor], model: ModelSpec) -> dict[str, torch.Tensor]:
    """Full Megatron-Core weights (one-process names) as the transformers model's state dict."""
    return (_gpt2 if family(model) == "gpt2" else _llama)(state, model)


def _layers(state: dict[str, torch.Tensor], model: ModelSpec):
    for i in range(model.num_layers):
        yield i, {k.removeprefix(f"decoder.layers.{i}."): v for k, v in state.items()
                  if k.startswith(f"decoder.layers.{i}.")}


def _split_qkv(t: torch.Tensor, model: ModelSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's fused QKV (weight [rows, hidden] or bias [rows]) as (q, k, v) in head order."""
    heads = model.num_attention_heads
    groups = model.num_query_groups or heads
    head_dim = model.hidden_size // heads
    per_group = heads // groups
    grouped = t.reshape(groups, (per_group + 2) * head_dim, *t.shape[1:])
    q, k, v = grouped.split([per_group * head_dim, head_dim, head_dim], dim=1)
    return (q.reshape(heads * head_dim, *t.shape[1:]), k.reshape(groups * head_dim, *t.shape[1:]),
            v.reshape(groups * head_dim, *t.shape[1:]))


def _gpt2(state: dict[str, torch.Tensor], model: ModelSpec) -> dict[str, torch.Tensor]:
    out = {"transformer.wte.weight": state["embedding.word_embeddings.weight"],
           "transformer.wpe.weight": state["embedding.position_embeddings.weight"],
           "transformer.ln_f.weight": state["decoder.final_layernorm.weight"],
           "transformer.ln_f.bias": state["decoder.final_layernorm.bias"]}
    for i, layer in _layers(state, model):
        h = f"transformer.h.{i}."
        qkv_w = torch.cat(_split_qkv(layer["self_attention.linear_qkv.weight"], model))
        qkv_b = torch.cat(_split_qkv(layer["self_attention.linear_qkv.bias"], model))
        out |= {h + "ln_1.weight": layer["input_layernorm.weight"], h + "ln_1.bias": layer["input_layernorm.bias"],
                h + "attn.c_attn.weight": qkv_w.t(), h + "attn.c_attn.bias": qkv_b,
                h + "attn.c_proj.weight": layer["self_attention.linear_proj.weight"].t(),
                h + "attn.c_proj.bias": layer["self_attention.linear_proj.bias"],
                h + "ln_2.weight": layer["pre_mlp_layernorm.weight"], h + "ln_2.bias": layer["pre_mlp_layernorm.bias"],
                h + "mlp.c_fc.weight": layer["mlp.linear_fc1.weight"].t(),
                h + "mlp.c_fc.bias": layer["mlp.linear_fc1.bias"],
                h + "mlp.c_proj.weight": layer["mlp.linear_fc2.weight"].t(),
                h + "mlp.c_proj.bias": layer["mlp.linear_fc2.bias"]}
    if not model.tie_embeddings:
        out["lm_head.weight"] = state["output_layer.weight"]
    return {k: _owning(v) for k, v in out.items()}


def _owning(t: torch.Tensor) -> torch.Tensor:
    """`t` in storage of its own: safetensors refuses tensors that are views into a larger one (a SwiGLU half)."""
    t = t.contiguous()
    whole = t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
    return t if whole else t.clone()


def _llama(state: dict[str, torch.Tensor], model: ModelSpec) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": state["embedding.word_embeddings.weight"],
           "model.norm.weight": state["decoder.final_layernorm.weight"]}
    for i, layer in _layers(state, model):
        h = f"model.layers.{i}."
        q, k, v = _split_qkv(layer["self_attention.linear_qkv.weight"], model)
        gate, up = layer["mlp.linear_fc1.weight"].chunk(2)
        out |= {h + "input_layernorm.weight": layer["input_layernorm.weight"],
                h + "self_attn.q_proj.weight": q, h + "self_attn.k_proj.weight": k, h + "self_attn.v_proj.weight": v,
                h + "self_attn.o_proj.weight": layer["self_attention.linear_proj.weight"],
                h + "post_attention_layernorm.weight": layer["pre_mlp_layernorm.weight"],
                h + "mlp.gate_proj.weight": gate, h + "mlp.up_proj.weight": up,
                h + "mlp.down_proj.weight": layer["mlp.linear_fc2.weight"]}
    if not model.tie_embeddings:
        out["lm_head.weight"] = state["output_layer.weight"]
    return {k: _owning(v) for k, v in out.items()}
