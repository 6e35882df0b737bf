"""Progress of each phase: a rich bar on a terminal, plain periodic lines elsewhere (logs, CI, Slurm).

Work happens in worker processes; they add to a shared counter through a
:class:`Tracker` (batched, a few writes a second), and the parent's
:class:`Display` polls the counter from a thread and draws it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

Advance = Callable[[float], None]


class Tracker:
    """Batches many small increments into a few writes to a shared counter."""

    def __init__(self, counter, every: float = 0.25):
        self.counter, self.every = counter, every
        self.pending = 0.0
        self.last = time.monotonic()

    def __call__(self, amount: float) -> None:
        self.pending += amount
        now = time.monotonic()
        if now - self.last >= self.every:
            self.flush()
            self.last = now

    def flush(self) -> None:
        if self.pending:
            with self.counter.get_lock():
                self.counter.value += self.pending
            self.pending = 0.0


class Display:
    """Shows one phase at a time from a counter that any process may add to."""

    def __init__(self, console: Console | None = None, *, interval: float | None = None):
        self.console = console or Console(stderr=True, highlight=False)
        self.fancy = self.console.is_terminal
        self.interval = interval or float(os.environ.get("LLMOPS_PROGRESS_INTERVAL", "10"))
        # fork: the workers inherit the counter; it is only shared with processes started here.
        self.counter = multiprocessing.get_context("fork").Value("d", 0.0)

    def tracker(self) -> Tracker:
        return Tracker(self.counter)

    @contextmanager
    def phase(self, name: str, *, total: float | None, unit: str = "bytes") -> Iterator[None]:
        """Show `name` while the block runs; `total` in `unit` (bytes or docs), None if unknown."""
        self.counter.value = 0.0
        stop, ok = threading.Event(), threading.Event()
        draw = self._bar if self.fancy else self._lines
        thread = threading.Thread(target=draw, args=(name, total, unit, stop, ok), daemon=True)
        start = time.monotonic()
        thread.start()
        try:
            yield
            ok.set()  # the phase finished: the bar shows it whole, whatever the counter got to
        finally:
            stop.set()
            thread.join()
        if not self.fancy:
            self.console.print(f"prepare {name}: done in {time.monotonic() - start:.1f}s", markup=False)

    def _bar(self, name: str, total: float | None, unit: str, stop: threading.Event, ok: threading.Event) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = [SpinnerColumn(), TextColumn("[bold]{task.description:<10}"), BarColumn(),
                   TextColumn("{task.fields[amount]}"), TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(name, total=total, amount="")
            while True:
                done = stop.wait(0.1)
                value = self.counter.value
                bar.update(task, completed=value if total else None, amount=_amount(value, total, unit))
                if done:
                    final = (total or value) if ok.is_set() else value
                    bar.update(task, completed=final, total=total or final or 1, amount=_amount(final, total, unit))
                    return

    def _lines(self, name: str, total: float | None, unit: str, stop: threading.Event, ok: threading.Event) -> None:
        start = time.monotonic()
        self.console.print(f"prepare {name}: started" + (f" ({_amount(0, total, unit)})" if total else ""),
                           markup=False)
        while not stop.wait(self.interval):
            value, elapsed = self.counter.value, time.monotonic() - start
            pct = f"{100 * value / total:5.1f}% " if total else ""
            rate = value / elapsed if elapsed > 0 else 0.0
            speed = f"{rate / 1e6:.1f} MB/s" if unit == "bytes" else f"{rate:,.0f} docs/s"
            self.console.print(f"prepare {name}: {pct}{_amount(value, total, unit)} {speed}", markup=False)


def _amount(value: float, total: float | None, unit: str) -> str:
    if unit == "bytes":
        return f"{value / 1e6:,.1f}/{total / 1e6:,.1f} MB" if total else f"{value / 1e6:,.1f} MB"
    return f"{value:,.0f}/{total:,.0f} docs" if total else f"{value:,.0f} docs"
