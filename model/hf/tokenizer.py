"""Tokenizers as transformers fast tokenizers, chat template included: llmops's SentencePiece models
(:func:`build`) and Hugging Face tokenizer folders (:func:`pretrained`).

The tokenizers-library model is built from the SentencePiece file's own
settings (transformers' SentencePiece converter: identity normalisation, the
dummy prefix, byte fallback, BPE merges ranked by piece score), so it encodes
text to the ids llmops trained on. The control pieces (``<s>``, ``</s>``,
``<pad>``, the chat markers) are special tokens; the chat template renders a
conversation exactly as :class:`llmops_model.align.chat.ChatTokenizer` does:
each message is its role marker, its text (encoded on its own, with its own
dummy prefix) and the end marker; a whole conversation ends with ``</s>``, a
prompt for generation with the assistant marker.

One difference is transformers' and every Hugging Face tokenizer's: a special
token's text typed inside a message (say a literal ``</s>``) becomes the
special token, where llmops encodes it as characters.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmops.errors import UserError
from llmops.spec.align import ChatTokens

_CONTROL = 3  # SentencePiece's piece type for control symbols


def chat_template(template: ChatTokens, eos: str) -> str:
    """A Jinja chat template that renders like llmops's chat tokenizer."""
    markers = json.dumps({role: piece for role, piece in template.tokens().items() if role != "end"})
    return (
        "{%- set markers = " + markers + " -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] not in markers -%}"
        "{{ raise_exception('llmops models know the roles system, user and assistant, not ' + message['role']) }}"
        "{%- endif -%}"
        "{{ markers[message['role']] }}{{ message['content'] }}" + _literal(template.end) +
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}" + _literal(template.assistant) +
        "{%- else -%}" + _literal(eos) + "{%- endif -%}")


def _literal(text: str) -> str:
    return "{{ " + json.dumps(text) + " }}"


def build(model_file: Path, *, vocab_size: int, template: ChatTokens | None, max_length: int):
    """A `PreTrainedTokenizerFast` for the SentencePiece model; UserError when it does not fit the model."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except (OSError, ValueError, DecodeError) as exc:  # DecodeError is no ValueError in every protobuf release
        raise UserError(f"the tokenizer {model_file} cannot be read as a SentencePiece model ({exc})",
                        "point the run's tokenizer at the tokenizer.model that prepare wrote") from None
    pieces = [p.piece for p in proto.pieces]
    if not pieces:
        raise UserError(f"the tokenizer {model_file} holds no pieces: it is no SentencePiece model (empty or cut "
                        "short)", "point the run's tokenizer at the tokenizer.model that prepare wrote")
    if len(pieces) > vocab_size:
        raise UserError(f"the tokenizer {model_file} has {len(pieces)} pieces, more than the model's vocabulary "
                        f"({vocab_size}): it is not the tokenizer this model was trained with",
                        "use the tokenizer of the run that trained the model")
    if proto.trainer_spec.model_type == 1:  # unigram: pieces with their log probabilities
        vocab = [(p.piece, p.score) for p in proto.pieces]
    else:
        vocab = {piece: i for i, piece in enumerate(pieces)}
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, None, legacy=True)
    controls = [p.piece for p in proto.pieces if p.type == _CONTROL]
    backend.add_special_tokens([AddedToken(c, special=True, normalized=False) for c in controls])

    def piece(i: int) -> str | None:
        return pieces[i] if 0 <= i < len(pieces) else None

    spec = proto.trainer_spec
    eos = piece(spec.eos_id)
    kwargs = {"unk_token": piece(spec.unk_id), "bos_token": piece(spec.bos_id), "eos_token": eos,
              "pad_token": piece(spec.pad_id) or eos}
    if template is not None:
        missing = [m for m in template.tokens().values() if m not in controls]
        if missing:
            raise UserError(f"the chat markers {', '.join(missing)} are not control tokens of {model_file}",
                            "use the tokenizer and align.template the stage was trained with")
        kwargs["chat_template"] = chat_template(template, eos)
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=max_length,
                                   clean_up_tokenization_spaces=False, **{k: v for k, v in kwargs.items() if v})


def pretrained(folder: Path, *, vocab_size: int | None = None, max_length: int | None = None):
    """A `PreTrainedTokenizerFast` for a Hugging Face tokenizer folder (tokenizer.json, its special tokens and
    chat template from tokenizer_config.json); UserError when it is no tokenizer or does not fit the model."""
    from transformers import PreTrainedTokenizerFast

    from llmops.prepare import pretrained as files

    backend = files.load(folder)
    size = backend.get_vocab_size(with_added_tokens=True)
    if vocab_size is not None and size > vocab_size:
        raise UserError(f"the tokenizer in {folder} has {size} tokens, more than the model's vocabulary "
                        f"({vocab_size}): it is not the tokenizer this model was trained with",
                        "use the tokenizer of the run that trained the model")
    cfg = files.config(folder)
    names = {k: t for k in ("bos_token", "eos_token", "pad_token", "unk_token")
             if (t := files.token_text(cfg.get(k))) is not None}
    extra = {"model_max_length": max_length} if max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=files.chat_template(folder),
                                   clean_up_tokenization_spaces=False, **names, **extra)


def end_ids(folder: Path) -> list[int]:
    """The ids generation stops at, from the folder's generation_config.json (Llama 3 Instruct stops at
    <|eot_id|> as well as <|end_of_text|>); [] when it has none."""
    try:
        value = json.loads((folder / "generation_config.json").read_text()).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return []
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
