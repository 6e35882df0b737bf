"""Conversations as token ids, and which of them the model is trained to say.

Two kinds of tokenizer, one interface (:func:`load` picks by the reference):

* :class:`ChatTokenizer`, llmops's own SentencePiece models, with the markers of ``align.template``;
* :class:`TemplateChat`, a Hugging Face tokenizer (``hf:DIR``: tokenizer.json and the model's own Jinja chat
  template, as Llama 3, Mistral and Qwen ship them), rendered by transformers.

llmops's template renders a conversation as::

    <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> ... </s>

Role markers and ``<|end|>`` are SentencePiece control tokens, which no text
encodes to: a user who types "<|assistant|>" gets those characters, never
the marker. The model is trained on what the assistant says and on the
``<|end|>`` that closes it (so generation learns to stop); a prompt for
generation ends with ``<|assistant|>``.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from llmops.errors import UserError
from llmops.spec.align import ChatTokens
from llmops_model.align.records import BadRecord, Message


@dataclass
class ChatTokenizer:
    """A SentencePiece model and the ids of the template's markers."""

    sp: object
    markers: dict[str, int]
    eod_id: int
    pad_id: int

    @classmethod
    def load(cls, path: str, template: ChatTokens) -> ChatTokenizer:
        """Raises UserError naming the missing marker when the tokenizer lacks one."""
        from llmops.prepare.tokenizer import load

        sp = load(path)
        markers = {}
        for role, piece in template.tokens().items():
            i = sp.piece_to_id(piece)
            if i == sp.unk_id() or not sp.is_control(i):
                raise UserError(f"align.template.{role} = {piece!r} is not a control token of the tokenizer {path}",
                                "train the tokenizer with it in prepare.tokenizer.special_tokens, or set "
                                "align.template to the tokenizer's own chat markers")
            markers[role] = i
        pad = sp.pad_id() if sp.pad_id() >= 0 else sp.eos_id()
        return cls(sp, markers, sp.eos_id(), pad)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def render(self, messages: list[Message], *, limit: int | None = None) -> tuple[list[int], list[bool]]:
        """Token ids of the conversation (ending in the end-of-document id) and, per token, whether the
        model is trained to produce it: the assistant's text and the end marker after it. With `limit`, the
        turns after the first `limit` tokens are left out (the caller cuts there); more than `limit` come back."""
        ids: list[int] = []
        trained: list[bool] = []
        for m in messages:
            if limit is not None and len(ids) > limit:
                break
            body = self.encode(m.content) + [self.markers["end"]]
            ids += [self.markers[m.role]] + body
            trained += [False] + [m.role == "assistant"] * len(body)
        return ids + [self.eod_id], trained + [False]

    def prompt(self, messages: list[Message]) -> list[int]:
        """The conversation so far and the marker that asks the assistant to answer."""
        ids, _ = self.render(messages)
        return ids[:-1] + [self.markers["assistant"]]

    def response(self, prompt: list[Message], text: str) -> list[int]:
        """What the assistant says after `prompt`, closed by the end marker (the tokens a DPO response scores;
        the end-of-document id follows them)."""
        del prompt  # every reply renders the same here
        return self.encode(text) + [self.markers["end"]]


def load(ref: str, template: ChatTokens) -> ChatTokenizer | TemplateChat:
    """The chat tokenizer of a tokenizer reference: `hf:DIR` a Hugging Face one, else a SentencePiece model."""
    from llmops.prepare import pretrained

    folder = pretrained.folder(ref)
    return ChatTokenizer.load(ref, template) if folder is None else TemplateChat.load(folder)


# A chat template is Jinja from the model folder: sandboxed by transformers, but free to loop. One conversation
# renders in milliseconds; a template that takes this long is stopped, and the stage with it.
RENDER_SECONDS = 20


class _TooSlow(BaseException):
    """Raised into a render by the timer (a BaseException, so the render's own error handling lets it pass)."""


@contextlib.contextmanager
def _deadline(seconds: float):
    """Interrupt the block after `seconds` with :class:`_TooSlow` (a SIGALRM timer: the main thread only, where
    the stage's data is built; elsewhere the block runs unbounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _TooSlow

    before = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


class TemplateChat:
    """A Hugging Face tokenizer and the model's own chat template.

    The template is rendered by transformers (its sandboxed Jinja environment, the same call that serves the
    model: ``apply_chat_template``) and the text cut where each assistant turn starts and ends: the turn
    starts where the conversation before it, rendered with the generation prompt, ends; it ends where the
    conversation up to it ends. So the trained tokens are exactly what a server's generation produces,
    closing marker (``<|eot_id|>``) included. Each piece is encoded on its own, as TRL does, so a token
    never straddles the prompt and the reply. A template that does not render a conversation as a growing
    prefix of itself (one that rewrites earlier turns) cannot be cut this way: the example is quarantined.

    Hugging Face tokenizers read special-token text inside a message as the special token; a message that
    spells one (``<|eot_id|>`` in a user's text) would forge a turn, so it is quarantined, never encoded.
    """

    def __init__(self, tok, source: Path):
        """`tok`: the folder's fast tokenizer with its chat template (:func:`llmops_model.hf.tokenizer.pretrained`,
        whose special tokens come from tokenizer_config.json as prepare's facts do)."""
        from llmops.prepare import pretrained

        self.tok, self.source = tok, source
        self.vocab_size = tok.backend_tokenizer.get_vocab_size(with_added_tokens=True)
        self.eod_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        specials = pretrained.special_texts(tok.backend_tokenizer)
        self._forged = re.compile("|".join(map(re.escape, specials))) if specials else None

    @classmethod
    def load(cls, folder: Path) -> TemplateChat:
        """UserError when the folder is no tokenizer, or has no chat template."""
        from llmops_model.hf.tokenizer import pretrained

        tok = pretrained(folder)
        if tok.chat_template is None:
            raise UserError(f"the tokenizer in {folder} has no chat template to render conversations with",
                            "use the tokenizer of the model's chat (instruct) version, or add its "
                            "chat_template to tokenizer_config.json")
        if tok.eos_token_id is None:
            raise UserError(f"{folder}: tokenizer_config.json names no eos_token the tokenizer has, so "
                            "conversations cannot be ended", "use the folder transformers' save_pretrained wrote "
                            "for the model (its tokenizer_config.json names eos_token)")
        return cls(tok, folder)

    def encode(self, text: str) -> list[int]:
        return self.tok.backend_tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def _text(self, messages: list[Message], *, generation: bool) -> str:
        try:
            with _deadline(RENDER_SECONDS):
                return self.tok.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                                    tokenize=False, add_generation_prompt=generation)
        except _TooSlow:
            raise UserError(f"the chat template of {self.source} took more than {RENDER_SECONDS} s to render one "
                            f"conversation of {len(messages)} messages (templates render one in milliseconds: this "
                            "one loops)", "use the tokenizer folder of the model's own chat version, whose "
                            "tokenizer_config.json holds its chat_template") from None
        except Exception as exc:  # the template's own raise_exception, or any Jinja error: this example only
            raise BadRecord("chat_template", f"the chat template of {self.source} refuses it: "
                                             f"{str(exc).strip()[:300]}") from None

    def _check(self, messages: list[Message]) -> None:
        if self._forged is None:
            return
        for m in messages:
            if found := self._forged.search(m.content):
                raise BadRecord("special_token_text", f"a {m.role} message spells the tokenizer's special token "
                                                      f"{found.group(0)!r}")

    def _extends(self, longer: str, shorter: str) -> None:
        if not longer.startswith(shorter):
            raise BadRecord("chat_template", f"the chat template of {self.source} does not render this "
                                             "conversation turn by turn (a later turn rewrites an earlier one)")

    def render(self, messages: list[Message], *, limit: int | None = None) -> tuple[list[int], list[bool]]:
        """Token ids of the conversation and, per token, whether the model is trained to produce it (every
        assistant turn as the template renders it, closing marker included); the end-of-document id is added
        when the template does not end with it. With `limit`, the turns after the first `limit` tokens are not
        rendered one by one (each is a render of the conversation up to it: a long conversation took quadratic
        time for tokens the caller cuts); more than `limit` tokens come back."""
        self._check(messages)
        whole = self._text(messages, generation=False)
        ids: list[int] = []
        trained: list[bool] = []

        def add(text: str, train: bool) -> None:
            piece = self.encode(text)
            ids.extend(piece)
            trained.extend([train] * len(piece))

        at = 0
        for k, m in enumerate(messages):
            if limit is not None and len(ids) > limit:
                break
            if m.role != "assistant":
                continue
            start, end = self._text(messages[:k], generation=True), self._text(messages[:k + 1], generation=False)
            self._extends(end, start)
            self._extends(whole, end)
            self._extends(start, whole[:at])
            add(whole[at:len(start)], False)
            add(whole[len(start):len(end)], True)
            at = len(end)
        if limit is None or len(ids) <= limit:
            add(whole[at:], False)
        if not ids or ids[-1] != self.eod_id:
            ids.append(self.eod_id)
            trained.append(False)
        return ids, trained

    def prompt(self, messages: list[Message]) -> list[int]:
        """The conversation so far and the template's generation prompt (the assistant's header)."""
        self._check(messages)
        return self.encode(self._text(messages, generation=True))

    def response(self, prompt: list[Message], text: str) -> list[int]:
        """What the assistant says after `prompt` as the template closes it, without a final end-of-document
        id (the DPO sequence adds one)."""
        reply = [Message("assistant", text)]
        self._check(reply)
        start, end = self._text(prompt, generation=True), self._text(prompt + reply, generation=False)
        self._extends(end, start)
        ids = self.encode(end[len(start):])
        return ids[:-1] if ids and ids[-1] == self.eod_id else ids
