"""Text normalisation: Unicode NFC, control characters, whitespace.

Indentation and spacing inside a line are kept: much of what a code-aware
model should learn (docstrings, Markdown, tables) lives in them. What goes is
what carries no meaning: CR line ends, exotic space characters, trailing
spaces, runs of blank lines.
"""

from __future__ import annotations

import re
import unicodedata

from llmops.prepare.document import Document
from llmops.prepare.steps.base import Map
from llmops.spec.prepare import CleanSpec

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ODD_SPACE = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_LINE_SEP = re.compile(r"\r\n?|[\u2028\u2029\x85]")
# Spaces before a newline. Matched from the start of a run only (the look-behind) and never given back (++): a
# run of n spaces that ends in text is one O(n) try, not n of them (a 5 MB run of spaces took hours).
_TRAILING = re.compile(r"(?<![ \t])[ \t]++(?=\n)")
_BLANK_RUN = re.compile(r"\n{3,}")


def nfc(text: str) -> str:
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return text
    return unicodedata.normalize("NFC", text)


def remove_control_chars(text: str) -> str:
    """Drop C0/C1 controls except tab and newline (CR is handled as a line end)."""
    text = _LINE_SEP.sub("\n", text) if "\r" in text or not text.isascii() else text
    return _CONTROL.sub("", text) if _CONTROL.search(text) else text


def normalize_whitespace(text: str) -> str:
    if not text.isascii():
        text = _ODD_SPACE.sub(" ", _LINE_SEP.sub("\n", text))
    elif "\r" in text:
        text = _LINE_SEP.sub("\n", text)
    text = _TRAILING.sub("", text)
    if "\n\n\n" in text:
        text = _BLANK_RUN.sub("\n\n", text)
    return text.strip()


class Cleaner(Map):
    """Applies the enabled normalisations; a document left with no text is dropped (`empty_after_clean`)."""

    name = "clean"

    def __init__(self, spec: CleanSpec):
        super().__init__()
        self.functions = [f for f, on in ((nfc, spec.unicode_nfc), (remove_control_chars, spec.remove_control_chars),
                                          (normalize_whitespace, spec.normalize_whitespace)) if on]

    def apply(self, doc: Document) -> str | None:
        text = doc.text
        for f in self.functions:
            text = f(text)
        if text != doc.text:
            doc.set_text(text)
        return None if text.strip() else "empty_after_clean"
