"""Counts per step: documents and bytes in and out, drop reasons, time, extra totals.

Every shard's phase records its steps' stats in its completion marker; the
finalize phase adds them up into ``stats.json`` and the summary printed at the
end. Adding is the only operation, so N shards sum to what one shard counts.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepStats:
    """What one step did: a document dropped is counted under exactly one reason."""

    name: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)
    totals: Counter = field(default_factory=Counter)
    """Step-specific sums (tokens, duplicate clusters, ...)."""

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "docs_in": self.docs_in, "docs_out": self.docs_out,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "seconds": round(self.seconds, 3),
                "dropped": dict(sorted(self.dropped.items())), "totals": dict(sorted(self.totals.items()))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepStats:
        return cls(name=d["name"], docs_in=d["docs_in"], docs_out=d["docs_out"], bytes_in=d["bytes_in"],
                   bytes_out=d["bytes_out"], seconds=d["seconds"], dropped=Counter(d["dropped"]),
                   totals=Counter(d["totals"]))

    def add(self, other: StepStats) -> None:
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.seconds += other.seconds
        self.dropped.update(other.dropped)
        self.totals.update(other.totals)


class Timer:
    """Adds the wall time of a `with` block to a step's seconds."""

    def __init__(self, stats: StepStats):
        self.stats = stats

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stats.seconds += time.perf_counter() - self.start


def merge_steps(groups: list[list[dict[str, Any]]]) -> list[StepStats]:
    """Sum the step lists of many shards, keeping the steps' order."""
    merged: dict[str, StepStats] = {}
    for steps in groups:
        for d in steps:
            s = StepStats.from_dict(d)
            if s.name in merged:
                merged[s.name].add(s)
            else:
                merged[s.name] = s
    return list(merged.values())


def summary_table(report: dict[str, Any]):
    """The stats report for a person: a table of counts per step, then each step's reasons and totals."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", title_justify="left", title="prepare: what each step did")
    for col in ("step", "docs in", "docs out", "MB in", "MB out", "seconds"):
        table.add_column(col, justify="left" if col == "step" else "right")
    notes = []
    for s in report["steps"]:
        table.add_row(s["name"], f"{s['docs_in']:,}", f"{s['docs_out']:,}", f"{s['bytes_in'] / 1e6:,.1f}",
                      f"{s['bytes_out'] / 1e6:,.1f}", f"{s['seconds']:.1f}")
        drops = ", ".join(f"{k} {v:,}" for k, v in sorted(s["dropped"].items(), key=lambda kv: -kv[1]))
        extra = ", ".join(f"{k} {v:,}" for k, v in s["totals"].items())
        notes += [Text(f"{s['name']} {label}: {text}") for label, text in (("dropped", drops), ("totals", extra))
                  if text]
    return Group(table, *notes)
