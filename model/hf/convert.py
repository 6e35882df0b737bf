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

Llama-style with a bias on the query/key/value projection only
(``model.qkv_bias``) is ``Qwen2ForCausalLM``. Anything else (say LayerNorm
with RoPE) is refused with the field that has no transformers counterpart,
rather than exported to a model that computes something else. RoPE covers
the whole head dimension; the softmax scale is 1/sqrt(head_dim).

The conversion runs both ways: :func:`to_hf` for export, :func:`from_hf` for
starting from a transformers checkpoint (`hf:DIR`).
GELU is exact on CPUs and the tanh approximation on GPUs (Megatron's fused
bias-GELU and llmops's cuBLASLt epilogue): the export names the one the
checkpoint was trained with.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from llmops.errors import UserError
from llmops.spec.run import ModelSpec, RunSpec

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


def architecture(model: ModelSpec) -> tuple[str, str]:
    """The transformers class and model type the model exports as; UserError as :func:`family`."""
    if family(model) == "gpt2":
        return "GPT2LMHeadModel", "gpt2"
    return ("Qwen2ForCausalLM", "qwen2") if model.qkv_bias else ("LlamaForCausalLM", "llama")


def config(spec: RunSpec, *, eos_ids: list[int], bos_id: int | None, pad_id: int | None,
           dtype: torch.dtype) -> dict[str, Any]:
    """config.json for the spec's model (the vocabulary is the padded one: the embedding's rows)."""
    m = spec.model
    dtype_name = str(dtype).removeprefix("torch.")
    common = {"vocab_size": m.padded_vocab_size, "tie_word_embeddings": m.tie_embeddings, "eos_token_id": eos_ids[0],
              "bos_token_id": bos_id, "pad_token_id": pad_id, "dtype": dtype_name, "use_cache": True}
    arch, kind = architecture(m)
    if kind == "gpt2":
        return {"architectures": [arch], "model_type": kind, **common,
                "n_embd": m.hidden_size, "n_layer": m.num_layers, "n_head": m.num_attention_heads,
                "n_inner": m.ffn_hidden_size, "n_positions": m.seq_length, "n_ctx": m.seq_length,
                "activation_function": "gelu" if spec.resources.cpu else "gelu_new",
                "layer_norm_epsilon": m.norm_epsilon, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}
    rope = {"rope_type": "default", "rope_theta": float(m.rope_base)}
    if m.rope_scaling_factor is not None:  # Megatron-Core's Llama 3 scaling, whose other constants are fixed
        rope |= {"rope_type": "llama3", "factor": m.rope_scaling_factor, "low_freq_factor": 1.0,
                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return {"architectures": [arch], "model_type": kind, **common,
            "hidden_size": m.hidden_size, "intermediate_size": m.ffn_hidden_size, "num_hidden_layers": m.num_layers,
            "num_attention_heads": m.num_attention_heads,
            "num_key_value_heads": m.num_query_groups or m.num_attention_heads,
            "head_dim": m.hidden_size // m.num_attention_heads, "hidden_act": "silu",
            "max_position_embeddings": m.seq_length, "rms_norm_eps": m.norm_epsilon, "rope_parameters": rope,
            "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "use_sliding_window": False}


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
        if model.qkv_bias:
            bq, bk, bv = _split_qkv(layer["self_attention.linear_qkv.bias"], model)
            out |= {h + "self_attn.q_proj.bias": bq, h + "self_attn.k_proj.bias": bk, h + "self_attn.v_proj.bias": bv}
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


def _merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, model: ModelSpec) -> torch.Tensor:
    """The inverse of :func:`_split_qkv`: per key/value group, its queries, its key, its value."""
    heads = model.num_attention_heads
    groups = model.num_query_groups or heads
    head_dim = model.hidden_size // heads
    rest = q.shape[1:]
    grouped = torch.cat([q.reshape(groups, heads // groups * head_dim, *rest), k.reshape(groups, head_dim, *rest),
                         v.reshape(groups, head_dim, *rest)], dim=1)
    return grouped.reshape(-1, *rest)


def from_hf(name: str, read, model: ModelSpec) -> torch.Tensor:
    """The full Megatron-Core tensor `name` (one-process name, global layer index) from a transformers
    checkpoint, `read(hf_name)` giving its tensors. Vocabulary rows are padded with zeros to the padded size."""
    gpt2 = family(model) == "gpt2"
    if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        embed = "transformer.wte.weight" if gpt2 else "model.embed_tokens.weight"
        t = read(embed if name.startswith("embedding") or model.tie_embeddings else "lm_head.weight")
        return torch.cat([t, t.new_zeros(model.padded_vocab_size - t.shape[0], t.shape[1])])
    if name == "embedding.position_embeddings.weight":
        return read("transformer.wpe.weight")[: model.seq_length]
    if name.startswith("decoder.final_layernorm."):
        return read(("transformer.ln_f." if gpt2 else "model.norm.") + name.rsplit(".", 1)[1])
    layer = re.fullmatch(r"decoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if layer is None:
        raise KeyError(f"no transformers tensor for {name}")
    i, module, kind = layer.groups()
    return (_gpt2_layer if gpt2 else _llama_layer)(module, kind, read, i, model)


def _gpt2_layer(module: str, kind: str, read, i: str, model: ModelSpec) -> torch.Tensor:
    h = f"transformer.h.{i}."
    if module == "self_attention.linear_qkv":
        t = read(h + "attn.c_attn." + kind)
        t = t.t() if kind == "weight" else t
        return _merge_qkv(*t.chunk(3), model)
    names = {"input_layernorm": "ln_1", "pre_mlp_layernorm": "ln_2", "self_attention.linear_proj": "attn.c_proj",
             "mlp.linear_fc1": "mlp.c_fc", "mlp.linear_fc2": "mlp.c_proj"}
    t = read(h + names[module] + "." + kind)
    return t.t() if kind == "weight" and "linear" in module else t  # Conv1D keeps [in, out]


def _llama_layer(module: str, kind: str, read, i: str, model: ModelSpec) -> torch.Tensor:
    h = f"model.layers.{i}."
    if module == "self_attention.linear_qkv":
        return _merge_qkv(*(read(f"{h}self_attn.{p}_proj.{kind}") for p in "qkv"), model)
    if module == "mlp.linear_fc1":
        return torch.cat([read(h + "mlp.gate_proj.weight"), read(h + "mlp.up_proj.weight")])
    names = {"input_layernorm": "input_layernorm", "pre_mlp_layernorm": "post_attention_layernorm",
             "self_attention.linear_proj": "self_attn.o_proj", "mlp.linear_fc2": "mlp.down_proj"}
    return read(h + names[module] + "." + kind)
