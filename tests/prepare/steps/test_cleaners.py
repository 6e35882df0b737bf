"""Cleaning: what is normalised, what is kept, and when a document is dropped."""

from __future__ import annotations

import unicodedata

from llmops.prepare.document import Document
from llmops.prepare.steps.cleaners import Cleaner, nfc, normalize_whitespace, remove_control_chars
from llmops.spec.prepare import CleanSpec


def test_nfc_composes_characters():
    decomposed = unicodedata.normalize("NFD", "café naïve")
    assert decomposed != "café naïve" and nfc(decomposed) == "café naïve"


def test_control_characters_go_but_tabs_and_line_ends_stay():
    assert remove_control_chars("a\x00b\x07c\td\ne\x1bf\x85g\x9fh") == "abc\td\nef\ngh"  # NEL (x85) is a line end
    assert remove_control_chars("one\r\ntwo\rthree") == "one\ntwo\nthree"


def test_whitespace_is_tidied_but_indentation_and_inner_spacing_kept():
    text = "  Title\u00a0here  \r\n\n\n\n    indented   code = 1\t\n\u3000end\u2028next  "
    assert normalize_whitespace(text) == "Title here\n\n    indented   code = 1\n end\nnext"


def test_the_cleaner_applies_only_enabled_steps_and_drops_documents_left_empty():
    docs = [Document("a", "caf\u0065\u0301\x00  \n\n\n\nx", "s", 0), Document("b", "\x00\x01\r\n", "s", 1)]
    cleaner = Cleaner(CleanSpec())
    kept = list(cleaner.run(docs))
    assert [d.text for d in kept] == ["café\n\nx"]
    assert dict(cleaner.stats.dropped) == {"empty_after_clean": 1}
    assert cleaner.stats.bytes_out == len("café\n\nx".encode())
    raw = Document("c", "caf\u0065\u0301  \n", "s", 0)
    only_controls = Cleaner(CleanSpec(unicode_nfc=False, normalize_whitespace=False))
    assert [d.text for d in only_controls.run([raw])] == ["caf\u0065\u0301  \n"]


def test_a_long_run_of_spaces_is_cleaned_at_once():
    """Trailing-space removal retried a run of spaces from each of its positions: a record of 100 kB of spaces
    took 41 s, one of 5 MB (what max_document_bytes allows) hours. The alarm only guards against that hang."""
    import signal

    def hung(*_):
        raise TimeoutError("normalize_whitespace took over 30 s on 4 MB of spaces")

    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        text = "a" + " " * 4_000_000 + "b \t\n" + "\t" * 1_000_000 + "c"
        assert normalize_whitespace(text) == "a" + " " * 4_000_000 + "b\n" + "\t" * 1_000_000 + "c"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
