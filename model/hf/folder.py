"""A Hugging Face model folder from elsewhere, checked before transformers or lm-eval loads it.

A folder is untrusted input. What it must not do: run code (an ``auto_map``
in config.json or tokenizer_config.json names Python files of its own, which
transformers runs once allowed to; llmops never allows it), make transformers
build a model far larger than its weights and fill the rest with random
numbers (a config.json that claims 20,000 layers over the weights of 4), or
end in a traceback. What it must have: a config.json that is a JSON object,
weights whose headers read, and a tokenizer when text is to go in. The checks
read config files and the safetensors headers only, never the weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llmops.errors import UserError
from llmops.runs.models import Checkpoint, HFFolder
from llmops.spec.hf import check_links

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
# The index of a transformer layer in a tensor's name: Llama-style `model.layers.3.`, GPT-2 `transformer.h.3.`
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
# The token embedding: Llama-style `model.embed_tokens.weight`, GPT-2 `transformer.wte.weight`
_EMBEDDING = re.compile(r"(?:^|\.)(?:embed_tokens|wte|word_embeddings)\.weight$")
_FIX = "pass a folder that `llmops export` or transformers' save_pretrained wrote"


def check(folder: Path, *, tokenizer: bool = True) -> None:
    """UserError naming the problem unless `folder` is safe to hand to transformers (see the module's text)."""
    check_links(folder)  # transformers reads every file it finds there, chat_template.jinja included
    config = _json_object(folder / "config.json")
    tok_config = _json_object(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").exists() else {}
    for name, data in (("config.json", config), ("tokenizer_config.json", tok_config)):
        if data.get("auto_map"):
            raise UserError(f"{folder}/{name} asks to run Python code that came with the folder (auto_map); "
                            "llmops never runs a model folder's own code",
                            "use a model whose architecture transformers itself provides (a model_type such as "
                            "llama, qwen2 or gpt2), or one that `llmops export` wrote")
    names = _tensor_names(folder)
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    stored = len({int(m.group(1)) for name in names if (m := _LAYER.search(name))}) or None
    if isinstance(layers, int) and stored and layers != stored:
        raise UserError(f"{folder}/config.json says {layers} layers, but its weights hold {stored}",
                        "use the config.json that was saved with these weights")
    shape = _embedding_shape(folder, names)
    for key, size, dim in (("vocab_size", config.get("vocab_size"), 0),
                           ("hidden_size", config.get("hidden_size", config.get("n_embd")), 1)):
        if shape and isinstance(size, int) and size != shape[dim]:
            raise UserError(f"{folder}/config.json says {key} {size}, but its token embedding is "
                            f"{shape[0]} x {shape[1]}", "use the config.json that was saved with these weights")
    if tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{folder} holds no tokenizer ({', '.join(TOKENIZER_FILES)}), so no text can go in: "
                        "a run trained on synthetic tokens exports the model alone",
                        "add the tokenizer the model was trained with, or train on prepared text (prepare:)")
    if tokenizer and isinstance(config.get("vocab_size"), int):
        check_vocabulary(folder, _tokenizer_size(folder / "tokenizer.json"), config["vocab_size"])


def check_vocabulary(folder: Path, tokens: int | None, vocab: int) -> None:
    """UserError when the tokenizer makes ids past the model's vocabulary: they have no embedding (an IndexError
    in the model). Fewer tokens than the vocabulary is normal: vocabularies are padded (llmops's to 128)."""
    if tokens is not None and tokens > vocab:
        raise UserError(f"{folder}: its tokenizer has {tokens:,} tokens, more than the model's vocabulary of "
                        f"{vocab:,} (config.json vocab_size): a token past it has no embedding",
                        "use the tokenizer saved with these weights (a tokenizer of at most "
                        f"{vocab:,} tokens)")


def _tokenizer_size(path: Path) -> int | None:
    """The ids a tokenizer.json makes (its highest id + 1), None without a readable one (transformers' loading
    then says why)."""
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        ids = Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True).values()
    except Exception:  # noqa: BLE001 (a damaged file raises anything)
        return None
    return max(ids) + 1 if ids else None


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} cannot be read as JSON ({exc})", _FIX) from None
    except RecursionError:
        raise UserError(f"{path} cannot be read as JSON (nested too deeply)", _FIX) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object (it holds a {type(data).__name__})", _FIX)
    return data


def _embedding_shape(folder: Path, names: list[str]) -> tuple[int, ...] | None:
    """The token embedding's shape (vocabulary x hidden) from its safetensors header, or None where the weights
    name none (or are pickle files)."""
    from safetensors import SafetensorError

    name = next((n for n in names if _EMBEDDING.search(n)), None)
    if name is None:
        return None
    index = folder / "model.safetensors.index.json"
    files = [folder / Path(str(_json_object(index)["weight_map"][name])).name] if index.is_file() else \
        sorted(folder.glob("*.safetensors"))  # a file of the folder's own, whatever the index says
    for path in files:
        try:
            with _open(path) as f:
                if name in f.keys():
                    shape = tuple(f.get_slice(name).get_shape())
                    return shape if len(shape) == 2 else None
        except (OSError, SafetensorError) as exc:
            raise UserError(f"{path} cannot be read as safetensors ({exc})", _FIX) from None
    return None


def _open(path: Path):
    """safetensors' reader of the file, which must be a regular one: opening a pipe waits for a writer."""
    from safetensors import safe_open

    if not path.is_file():  # False for a pipe, a device or a folder (a link is followed)
        raise UserError(f"{path} is not a regular file (a folder, a pipe or a device)", _FIX)
    return safe_open(path, "pt")


def _tensor_names(folder: Path) -> list[str]:
    from safetensors import SafetensorError

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index} has no weight_map", _FIX)
        return list(weight_map)
    names = []
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with _open(path) as f:  # the header alone
                names += list(f.keys())
        except (OSError, SafetensorError) as exc:
            raise UserError(f"{path} cannot be read as safetensors ({exc})", _FIX) from None
    return names


def check_source(source: Checkpoint | HFFolder) -> None:
    """Before text goes into `source` (generate, eval): a folder passes :func:`check`, a checkpoint has a
    tokenizer."""
    if isinstance(source, HFFolder):
        check(source.path)
    elif source.tokenizer is None:
        raise UserError(f"{source.label} has no tokenizer (its run trained on synthetic tokens, or its tokenizer "
                        "file is gone), so no text can go in",
                        "train on prepared text (prepare:); `llmops export` still writes the model alone")
