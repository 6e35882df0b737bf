"""Pretrained Hugging Face tokenizers: a folder holding ``tokenizer.json``, as Llama 3, Mistral and Qwen ship.

A spec names one as ``hf:DIR`` (``prepare.tokenizer``, ``align.tokenizer``) or gets it with the model it
starts from (``align.start_from: hf:DIR``). The folder's ``tokenizer.json`` is read with the ``tokenizers``
library (the ``hf`` extra) and its ``tokenizer_config.json`` says which tokens end a document (``eos_token``),
pad and begin, and holds the chat template (or ``chat_template.jinja`` beside it, as newer transformers
write it).

Documents are encoded as prepare encodes them with SentencePiece: without the tokenizer's own additions
(no ``<|begin_of_text|>``), with text that looks like a special token kept as text (``encode_special_tokens``:
a document that contains ``<|eot_id|>`` does not end a turn), and the end-of-document id appended.

A tokenizer reference in a resolved spec is ``hf:`` and the folder's absolute path for a pretrained
tokenizer (a folder named without the prefix gets it), else the path of a SentencePiece model.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from llmops.errors import UserError
from llmops.spec.hf import PREFIX, check_links

FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
"""What a pretrained tokenizer is made of (tokenizer.json alone is enough); copied together."""
MAX_BYTES = 1 << 30
"""Larger files are not tokenizers (Llama 3's tokenizer.json is 9 MB)."""
INSTALL = "pip install 'llmops[hf]'"


def folder(ref: str | Path | None) -> Path | None:
    """The folder of a pretrained tokenizer reference (`hf:DIR`), else None (a SentencePiece model)."""
    text = None if ref is None else str(ref)
    return Path(text[len(PREFIX):]) if text is not None and text.startswith(PREFIX) else None


def has_tokenizer(path: str | Path) -> bool:
    """Whether the folder holds a tokenizer.json."""
    return (Path(path) / "tokenizer.json").is_file()


def _regular(path: Path, what: str) -> Path:
    check_links(path.parent)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{path.parent} has no {path.name}, so it is not a Hugging Face tokenizer folder",
                        "point at a folder that transformers' save_pretrained wrote (it holds tokenizer.json)"
                        ) from None
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror})", "check the path") from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_BYTES:
        raise UserError(f"{path} is not a {what}", "point at the folder transformers' save_pretrained wrote")
    return path


def config(path: str | Path) -> dict[str, Any]:
    """The folder's tokenizer_config.json merged over special_tokens_map.json ({} when neither is there)."""
    merged: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = Path(path) / name
        if not file.exists():
            continue
        try:
            data = json.loads(_regular(file, "JSON file").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{file} cannot be read as JSON ({exc})", "check the file") from None
        if not isinstance(data, dict):
            raise UserError(f"{file} is not a JSON object", "check the file")
        merged.update(data)
    return merged


def load(path: str | Path):
    """The folder's tokenizer.json as a `tokenizers.Tokenizer`; UserError when it cannot be."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError(f"{path} is a Hugging Face tokenizer, and the tokenizers library is not installed",
                        f"{INSTALL} (it brings tokenizers)") from None
    file = _regular(Path(path) / "tokenizer.json", "tokenizer.json written by the tokenizers library")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # the library raises its own Exception for any malformed file
        raise UserError(f"{file} is not a tokenizer the tokenizers library can read ({str(exc).strip()[:200]})",
                        "point at the folder transformers' save_pretrained wrote") from None


def token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json gives it: its text, or an AddedToken's dict with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def special_texts(tok) -> list[str]:
    """The text of every special token (what a message must not spell, see llmops_model.align.chat)."""
    return sorted({t.content for t in tok.get_added_tokens_decoder().values() if t.special and t.content})


def chat_template(path: str | Path) -> str | None:
    """The folder's chat template (a Jinja string), or None: tokenizer_config.json's `chat_template` (a string,
    or a list of named templates of which `default` is used), else chat_template.jinja."""
    template = config(path).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str) and template.strip():
        return template
    jinja = Path(path) / "chat_template.jinja"
    if jinja.is_file():
        return _regular(jinja, "Jinja template").read_text(encoding="utf-8")
    return None


def facts(path: str | Path):
    """Vocabulary size and reserved ids, as `llmops.prepare.tokenizer.ModelFacts` (UserError naming the
    missing piece when the folder cannot tokenize documents)."""
    from llmops.prepare.tokenizer import ModelFacts

    tok, cfg = load(path), config(path)

    def id_of(key: str) -> int:
        text = token_text(cfg.get(key))
        found = tok.token_to_id(text) if text is not None else None
        return -1 if found is None else found

    eos = id_of("eos_token")
    if eos < 0:
        raise UserError(f"{path}: tokenizer_config.json names no eos_token the tokenizer has, so documents "
                        "cannot be ended", "use the folder transformers' save_pretrained wrote for the model "
                        "(its tokenizer_config.json names eos_token)")
    pad, bos, unk = id_of("pad_token"), id_of("bos_token"), id_of("unk_token")
    specials = {t.content: i for i, t in tok.get_added_tokens_decoder().items()
                if t.special and i not in (bos, eos, pad)}
    return ModelFacts(vocab_size=tok.get_vocab_size(with_added_tokens=True), eos_id=eos,
                      pad_id=pad if pad >= 0 else eos, bos_id=bos, unk_id=unk, special_tokens=specials)


def install(path: str | Path, out: Path):
    """Copy the tokenizer's files into the folder `out` (after checking they load); returns its facts."""
    from llmops.prepare.workdir import atomic_path

    found = facts(path)
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (Path(path) / name).is_file():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(Path(path) / name, tmp)
    return found


class DocumentEncoder:
    """Documents to ids in batches, as prepare's tokenize phase asks (`encode(texts, out_type=int,
    num_threads=n)`, SentencePiece's signature): no added tokens, special-token text kept as text."""

    def __init__(self, path: str | Path, *, threads: int):
        # The library's thread pool is sized once per process, on first use: as many threads as the task has
        # cores (left alone, every worker process would start one per core of the machine).
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        self.tok = load(path)
        self.tok.encode_special_tokens = True
        self.tok.no_padding()
        self.tok.no_truncation()

    def encode(self, texts: list[str], *, out_type=int, num_threads: int = 1) -> list[list[int]]:
        del out_type, num_threads  # ids only; threads were set at construction
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]
