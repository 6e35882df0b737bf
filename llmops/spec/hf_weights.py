"""A Hugging Face folder's weights against its config.json, checked by `llmops validate` before a run starts.

A folder from the Hub is untrusted input. Its config.json gives the model's
shape (:mod:`llmops.spec.hf`); its safetensors files must hold every tensor
that model loads, in that shape, as floating-point numbers, and no layer past
the last. Otherwise a run trains on part of the weights, zero-pads the rest or
dies at its first load. Only the files' headers are read, by safetensors' own
reader, which refuses a header that does not describe the whole file (a
download cut short). An index (``model.safetensors.index.json``) may name the
folder's own files only: never a path out of it.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from llmops.errors import UserError, cut
from llmops.spec.hf import REFETCH, json_reason, read_bounded, shown

INDEX = "model.safetensors.index.json"
MAX_INDEX_BYTES = 64 << 20
"""Larger is no index (a 400B-parameter model's maps its tensors in a few MB)."""
FLOATS = ("F64", "F32", "F16", "BF16")
"""The dtypes llmops reads weights from; integers and FP8 are quantized (their scales live elsewhere)."""
_PREFIX = {"gpt2": "transformer.", "llama": "model."}
"""What transformers' *ForCausalLM adds before the base model's names; files saved from the base model (the
Hub's GPT-2 among them) lack it, and transformers loads them all the same."""


def stored_name(name: str, names: Any, family: str) -> str | None:
    """The name under which the weights store `name` (a *ForCausalLM name): itself, or the base model's name
    without the prefix; None when they hold neither."""
    if name in names:
        return name
    bare = name.removeprefix(_PREFIX[family])
    return bare if bare != name and bare in names else None


def weight_files(folder: str | Path, headers: dict[Path, dict] | None = None) -> dict[str, Path]:
    """Where each tensor of the folder lies: its index's map, else every *.safetensors file's own names (their
    :func:`tensors` kept in `headers`, when given). UserError for an index that names a file outside the folder."""
    folder = Path(folder)
    index = folder / INDEX
    headers = {} if headers is None else headers
    if not index.exists():
        where: dict[str, Path] = {}
        for path in sorted(folder.glob("*.safetensors")):
            headers[path] = tensors(path)
            where |= dict.fromkeys(headers[path], path)
        return where
    try:
        data = json.loads(read_bounded(index, "safetensors index", MAX_INDEX_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{index} cannot be read as JSON ({json_reason(exc)})", REFETCH) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise UserError(f"{index} has no weight_map (a JSON object from tensor names to file names)", REFETCH)
    where = {}
    for name, file in weight_map.items():
        if not isinstance(file, str) or file in ("", ".", "..") or Path(file).name != file:
            raise UserError(f"{index} puts {cut(name, 80)} in {shown(file)}, which is not a file of the folder "
                            "(an index names the folder's own files, without a path)", REFETCH)
        where[name] = folder / file
    return where


def tensors(path: Path) -> dict[str, tuple[str, list[int]]]:
    """A safetensors file's tensors (name -> dtype, shape), from its header. UserError for a file that is not
    a regular one (reading a pipe never ends), cannot be read, or that safetensors refuses."""
    from safetensors import SafetensorError, safe_open

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UserError(f"{path} is not a regular file (a folder, a pipe or a device)", REFETCH)
        with safe_open(path, framework="numpy") as f:  # the header alone; no tensor is read
            return {name: (s.get_dtype(), s.get_shape()) for name in f.keys() for s in (f.get_slice(name),)}
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror})", REFETCH) from None
    except SafetensorError as exc:
        raise UserError(f"{path} is damaged or no safetensors file ({exc}): a download cut short?",
                        REFETCH) from None


def check_weights(folder: str | Path, fields: dict[str, Any]) -> None:
    """UserError unless the folder's weights hold every tensor the model of `fields` (from
    :func:`llmops.spec.hf.model_fields`) loads, in its shape and a floating-point dtype, and no layer past its
    last; and, where config.json ties the output layer to the embedding, no lm_head of other values."""
    folder = Path(folder)
    headers: dict[Path, dict] = {}
    where = weight_files(folder, headers)  # without an index, every file's header is read there, once
    headers |= {path: tensors(path) for path in set(where.values()) - headers.keys()}
    family = "gpt2" if fields["normalization"] == "LayerNorm" else "llama"
    config = f"{folder}/config.json"
    layers = {int(m.group(1)) for name in where if (m := re.search(r"(?:^|\.)(?:layers|h)\.(\d+)\.", name))}
    if layers and max(layers) >= fields["num_layers"]:
        raise UserError(f"{config} says {fields['num_layers']} layer(s), but its weights hold {max(layers) + 1}",
                        "use the config.json that was saved with these weights")
    expected = _expected(fields, family)
    missing, wrong = [], []
    for name, shape in expected.items():
        stored = stored_name(name, where, family)
        entry = headers[where[stored]].get(stored) if stored is not None else None
        if entry is None:
            missing.append(name + ("" if stored is None else f" (which {INDEX} puts in {where[stored].name})"))
        elif entry[1] != list(shape):
            wrong.append(f"{stored} is {entry[1]}, not {list(shape)}")
        elif entry[0] not in FLOATS:
            raise UserError(f"{folder}: the tensor {stored} is stored as {entry[0]}: quantized weights need "
                            "their scales, and llmops starts from floating-point ones (F32, F16, BF16)",
                            "start from the model's unquantized release")
    if missing or wrong:
        said = [f"{len(missing)} tensor(s) missing ({', '.join(missing[:3])})"] if missing else []
        said += [f"{len(wrong)} of another shape ({'; '.join(wrong[:3])})"] if wrong else []
        raise UserError(f"{folder}: its weights do not fit its config.json: {', '.join(said)}",
                        "use the weights and the config.json saved together (transformers' save_pretrained writes "
                        "both)")
    head = stored_name("lm_head.weight", where, family)
    if expected and fields["tie_embeddings"] and head is not None:
        embed = stored_name("transformer.wte.weight" if family == "gpt2" else "model.embed_tokens.weight", where,
                            family)
        if not _same_values((where[embed], embed), (where[head], head)):
            raise UserError(f"{config} ties the output layer to the token embedding (tie_word_embeddings), but the "
                            "weights hold an lm_head.weight of their own that differs: transformers uses it untied, "
                            "and llmops would drop it", f"set \"tie_word_embeddings\": false in {config}")


def _same_values(a: tuple[Path, str], b: tuple[Path, str]) -> bool:
    """Whether two stored tensors hold the same dtype, shape and values, read about 16 MB of rows at a time
    (torch reads every dtype safetensors stores; numpy has no bfloat16)."""
    import torch
    from safetensors import safe_open

    with safe_open(a[0], framework="pt") as fa, safe_open(b[0], framework="pt") as fb:
        x, y = fa.get_slice(a[1]), fb.get_slice(b[1])
        if (x.get_dtype(), x.get_shape()) != (y.get_dtype(), y.get_shape()):
            return False
        shape = x.get_shape()
        rows = max(1, (16 << 20) // (4 * max(1, math.prod(shape[1:]))))
        return all(torch.equal(x[i:i + rows], y[i:i + rows]) for i in range(0, shape[0], rows))


def _expected(f: dict[str, Any], family: str) -> dict[str, tuple[int, ...]]:
    """The transformers tensors llmops loads for the model (llmops_model.hf.convert.from_hf reads these) and
    their shapes."""
    hidden, vocab, ffn, heads = f["hidden_size"], f["vocab_size"], f["ffn_hidden_size"], f["num_attention_heads"]
    if hidden % heads or heads % (f["num_query_groups"] or heads):
        return {}  # llmops.spec.rules names the shape's own problem
    out = {} if f["tie_embeddings"] else {"lm_head.weight": (vocab, hidden)}
    if family == "gpt2":
        out |= {"transformer.wte.weight": (vocab, hidden), "transformer.wpe.weight": (f["seq_length"], hidden),
                "transformer.ln_f.weight": (hidden,), "transformer.ln_f.bias": (hidden,)}
        layer = {"ln_1.weight": (hidden,), "ln_1.bias": (hidden,), "ln_2.weight": (hidden,), "ln_2.bias": (hidden,),
                 "attn.c_attn.weight": (hidden, 3 * hidden), "attn.c_attn.bias": (3 * hidden,),
                 "attn.c_proj.weight": (hidden, hidden), "attn.c_proj.bias": (hidden,),
                 "mlp.c_fc.weight": (hidden, ffn), "mlp.c_fc.bias": (ffn,),
                 "mlp.c_proj.weight": (ffn, hidden), "mlp.c_proj.bias": (hidden,)}
        return out | {f"transformer.h.{i}.{k}": v for i in range(f["num_layers"]) for k, v in layer.items()}
    kv = (f["num_query_groups"] or heads) * (hidden // heads)
    out |= {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    layer = {"input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
             "self_attn.q_proj.weight": (hidden, hidden), "self_attn.k_proj.weight": (kv, hidden),
             "self_attn.v_proj.weight": (kv, hidden), "self_attn.o_proj.weight": (hidden, hidden),
             "mlp.gate_proj.weight": (ffn, hidden), "mlp.up_proj.weight": (ffn, hidden),
             "mlp.down_proj.weight": (hidden, ffn)}
    if f["qkv_bias"]:
        layer |= {"self_attn.q_proj.bias": (hidden,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)}
    return out | {f"model.layers.{i}.{k}": v for i in range(f["num_layers"]) for k, v in layer.items()}
