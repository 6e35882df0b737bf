"""The shape every processing step has (after datatrove's ``PipelineStep``).

A step is a generator ``run(docs, rank, world_size)`` over documents that
counts what it sees in ``self.stats``. A :class:`Filter` only decides: it
returns ``None`` to keep a document or a short reason to drop it, and every
reason becomes a statistic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from llmops.prepare.document import Document
from llmops.prepare.stats import StepStats


class PipelineStep:
    """A step over a stream of documents; subclasses set `name` and implement `run`."""

    name = "step"

    def __init__(self) -> None:
        self.stats = StepStats(self.name)

    def run(self, docs: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        raise NotImplementedError


class Map(PipelineStep):
    """A step that may change a document, or drop it by returning a reason instead."""

    def apply(self, doc: Document) -> str | None:
        """Change `doc` in place; return None to pass it on, or why it is dropped."""
        raise NotImplementedError

    def run(self, docs: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        stats, clock = self.stats, time.perf_counter
        for doc in docs:
            stats.docs_in += 1
            stats.bytes_in += doc.nbytes
            start = clock()
            reason = self.apply(doc)
            stats.seconds += clock() - start
            if reason is None:
                stats.docs_out += 1
                stats.bytes_out += doc.nbytes
                yield doc
            else:
                stats.drop(reason)


class Filter(Map):
    """A step that keeps or drops documents without changing them."""

    def filter(self, doc: Document) -> str | None:
        """None keeps the document; a string is the reason it is dropped."""
        raise NotImplementedError

    def apply(self, doc: Document) -> str | None:
        return self.filter(doc)
