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
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            yield number, raw, BadRecord("malformed_json", str(exc))
            continue
        except RecursionError:
            yield number, raw, BadRecord("malformed_json", "nested too deeply")
            continue
        yield number, raw, obj if isinstance(obj, dict) else BadRecord("not_an_object", type(obj).__name__)


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
            raise BadRecord("bad_message", f"{where}[{i}].role = {m['role']!r} is not one of {', '.join(ROLES)}")
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
        raise BadRecord("missing_field", f"has keys {sorted(obj)}; expected messages, or prompt and response")
    roles = {m.role for m in messages}
    if "user" not in roles or "assistant" not in roles:
        raise BadRecord("missing_roles", f"roles {sorted(roles)}: a conversation needs a user and an assistant")
    if any(m.role == "system" for m in messages[1:]):
        raise BadRecord("bad_message", "a system message may only come first")
    if any(m.role == "assistant" and not m.content.strip() for m in messages):
        raise BadRecord("empty_response", "an assistant message is empty")
    return messages


def _response(value, where: str) -> str:
    if isinstance(value, list):
        msgs = _messages(value, where)
        if msgs[-1].role != "assistant":
            raise BadRecord("missing_roles", f"{where} does not end with an assistant message")
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
    chosen, rejected = _response(obj["chosen"], "chosen"), _response(obj["rejected"], "rejected")
    if chosen == rejected:
        raise BadRecord("identical_responses", "chosen and rejected are the same text")
    return Preference(prompt, chosen, rejected)
