"""Progress: plain periodic lines when not on a terminal, a bar on one; counts from other processes."""

from __future__ import annotations

import io
import multiprocessing
import time

from rich.console import Console

from llmops.prepare.progress import Display


def test_plain_lines_report_share_done_and_speed():
    buf = io.StringIO()
    display = Display(Console(file=buf, force_terminal=False, width=200), interval=0.05)
    tracker = display.tracker()
    with display.phase("clean", total=4e6):
        for _ in range(4):
            tracker(1e6)
            tracker.flush()
            time.sleep(0.06)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "prepare clean: started (0.0/4.0 MB)"
    assert any("% " in line and "MB/s" in line for line in lines[1:-1])
    assert lines[-1].startswith("prepare clean: done in ")


def _work(counter) -> None:
    from llmops.prepare.progress import Tracker

    t = Tracker(counter, every=0)
    for _ in range(10):
        t(5)
    t.flush()


def test_workers_in_other_processes_add_to_the_count():
    display = Display(Console(file=io.StringIO()), interval=60)
    procs = [multiprocessing.get_context("fork").Process(target=_work, args=(display.counter,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert display.counter.value == 150


def test_a_terminal_gets_a_bar():
    buf = io.StringIO()
    display = Display(Console(file=buf, force_terminal=True, width=100), interval=60)
    with display.phase("tokenize", total=100, unit="docs"):
        display.counter.value = 100
        time.sleep(0.15)
    out = buf.getvalue()
    assert "tokenize" in out and "100/100 docs" in out and "━" in out
