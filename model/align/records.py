"""Reading alignment JSONL: every line is an example or a counted reason to quarantine it.

Accepted shapes (the ones TRL and NeMo-Aligner users bring):

* SFT: ``{"messages": [{"role": ..., "content": ...}, ...]}`` or
  ``{"prompt": str, "response": str}`` (``completion`` is read as ``response``).
* DPO: ``{"prompt": ..., "chosen": ..., "rejected": ...}``; the prompt is a
  string or a list of messages, each response a string or a list whose last
  message is the assistant's.

Nothing here raises on bad data: :class:`BadRecord` carries a reason (the
statistic it is counted under) and a detail for the quarantine file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from llmops.errors import cut

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


class BadRecord(Exception):
    """An example that cannot be used: `reason` is the counter, `detail` says what exactly."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Preference:
    prompt: list[Message]
    chosen: str
    rejected: str


def parse_lines(lines: Iterable[str]) -> Iterator[tuple[int, str, dict | BadRecord]]:
    """(line number, raw line, parsed object or the reason it is unusable); blank lines are skipped."""
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            yield number, raw, _parse(raw)


def read_lines(path, *, max_bytes: int) -> Iterator[tuple[int, str, dict | BadRecord]]:
    """:func:`parse_lines` of a file, read a line at a time: lines end at ``\n`` alone (a ``\r`` is JSON
    whitespace), a UTF-8 byte-order mark is dropped, a line that is not UTF-8 is ``invalid_utf8`` (never read with
    replacement characters), and one of more than `max_bytes` is ``too_large``, skipped without being held."""
    with open(path, "rb") as f:
        number = 0
        while raw := f.readline(max_bytes + 1):
            number += 1
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                size = len(raw)
                while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                    size += len(rest)
                size += len(rest)
                yield number, _preview(raw), BadRecord("too_large", f"{size} bytes; the most a line may hold is "
                                                                    f"{max_bytes} (64 per token of seq_length)")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, _preview(raw), BadRecord("invalid_utf8", f"byte {exc.start} of the line is not UTF-8 "
                                                                       "(save the file as UTF-8)")
                continue
            if text.strip():
                yield number, text, _parse(text)


def _preview(raw: bytes) -> str:
    return raw[:4000].decode("utf-8", errors="replace")


def _parse(raw: str) -> dict | BadRecord:
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        return BadRecord("malformed_json", str(exc))
    except RecursionError:
        return BadRecord("malformed_json", "nested too deeply")
    return obj if isinstance(obj, dict) else BadRecord("not_an_object", type(obj).__name__)


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise BadRecord("bad_message", f"{where} is {type(value).__name__}, not text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape: no tokenizer can encode it
        raise BadRecord("invalid_unicode", f"{where} holds a lone surrogate (an unpaired \\ud800-\\udfff escape)"
                        ) from None
    return value


def _messages(value, where: str) -> list[Message]:
    if isinstance(value, str):
        return [Message("user", _text(value, where))]
    if not isinstance(value, list) or not value:
        raise BadRecord("bad_message", f"{where} is neither text nor a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BadRecord("bad_message", f"{where}[{i}] is not a {{role, content}} object")
        if m["role"] not in ROLES:
            raise BadRecord("bad_message", f"{where}[{i}].role = {cut(repr(m['role']), 80)} is not one of "
                                           f"{', '.join(ROLES)}")
        out.append(Message(m["role"], _text(m["content"], f"{where}[{i}].content")))
    return out


def conversation(obj: dict) -> list[Message]:
    """An SFT example as messages: a user turn, and every assistant turn non-empty."""
    if "messages" in obj:
        messages = _messages(obj["messages"], "messages")
    elif "prompt" in obj and ("response" in obj or "completion" in obj):
        reply = obj.get("response", obj.get("completion"))
        messages = _messages(obj["prompt"], "prompt") + [Message("assistant", _text(reply, "response"))]
    else:
        raise BadRecord("missing_field", f"has keys {cut(repr(sorted(obj)), 200)}; expected messages, or prompt and "
                                         "response")
    roles = {m.role for m in messages}
    if "user" not in roles or "assistant" not in roles:
        raise BadRecord("missing_roles", f"roles {sorted(roles)}: a conversation needs a user and an assistant")
    if any(m.role == "system" for m in messages[1:]):
        raise BadRecord("bad_message", "a system message may only come first")
    if any(m.role == "assistant" and not m.content.strip() for m in messages):
        raise BadRecord("empty_response", "an assistant message is empty")
    return messages


def _response(value, where: str, prompt: list[Message]) -> str:
    """A DPO response: text, or messages that are the assistant's reply alone or the prompt's messages and then
    the reply (TRL's two conversational forms); other messages before the reply would be dropped unread."""
    if isinstance(value, list):
        msgs = _messages(value, where)
        if msgs[-1].role != "assistant":
            raise BadRecord("missing_roles", f"{where} does not end with an assistant message")
        if msgs[:-1] and msgs[:-1] != prompt:
            raise BadRecord("bad_message", f"{where} has messages before its reply that are not the prompt's; give "
                                           "the assistant's reply alone, or the prompt's messages and then it")
        value = msgs[-1].content
    text = _text(value, where)
    if not text.strip():
        raise BadRecord("empty_response", f"{where} is empty")
    return text


def preference(obj: dict) -> Preference:
    """A DPO example: a prompt with a user turn, two different non-empty responses."""
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in obj]
    if missing:
        raise BadRecord("missing_field", f"lacks {', '.join(missing)}")
    prompt = _messages(obj["prompt"], "prompt")
    if not any(m.role == "user" for m in prompt):
        raise BadRecord("missing_roles", "the prompt has no user message")
    if prompt[-1].role == "assistant":
        raise BadRecord("bad_message", "the prompt ends with an assistant message; the response would follow it")
    if any(m.role == "system" for m in prompt[1:]):
        raise BadRecord("bad_message", "a system message may only come first")
    chosen, rejected = _response(obj["chosen"], "chosen", prompt), _response(obj["rejected"], "rejected", prompt)
    if chosen == rejected:
        raise BadRecord("identical_responses", "chosen and rejected are the same text")
    return Preference(prompt, chosen, rejected)
