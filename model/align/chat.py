"""The chat template: messages as token ids, with the tokenizer's control tokens as markers.

A conversation renders as::

    <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> ... </s>

Role markers and ``<|end|>`` are SentencePiece control tokens, which no text
encodes to: a user who types "<|assistant|>" gets those characters, never
the marker. The model is trained on what the assistant says and on the
``<|end|>`` that closes it (so generation learns to stop); a prompt for
generation ends with ``<|assistant|>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmops.errors import UserError
from llmops.spec.align import ChatTokens

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


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

    def render(self, messages: list[Message]) -> tuple[list[int], list[bool]]:
        """Token ids of the conversation (ending in the end-of-document id) and, per token, whether the
        model is trained to produce it: the assistant's text and the end marker after it."""
        ids: list[int] = []
        trained: list[bool] = []
        for m in messages:
            body = self.encode(m.content) + [self.markers["end"]]
            ids += [self.markers[m.role]] + body
            trained += [False] + [m.role == "assistant"] * len(body)
        return ids + [self.eod_id], trained + [False]

    def prompt(self, messages: list[Message]) -> list[int]:
        """The conversation so far and the marker that asks the assistant to answer."""
        ids, _ = self.render(messages)
        return ids[:-1] + [self.markers["assistant"]]

    def response(self, text: str) -> list[int]:
        """What the assistant says, closed by the end marker (the tokens a DPO response scores)."""
        return self.encode(text) + [self.markers["end"]]
