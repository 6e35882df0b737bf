"""The straggler watch's arithmetic and clock, without processes (the real-process case is in
tests/backends/local/test_faults.py)."""

from __future__ import annotations

import math

import pytest
import torch

from llmops_model.train import stragglers
from llmops_model.train.stragglers import MARGIN, PERSIST, WINDOW, Clock, Watch


class Logger:
    enabled = True

    def __init__(self):
        self.lines, self.events = [], []

    def info(self, line: str) -> None:
        self.lines.append(line)

    def event(self, kind: str, **fields) -> None:
        self.events.append({"event": kind, **fields})


def _watch() -> tuple[Watch, Logger]:
    logger = Logger()
    return Watch(Clock(torch.device("cpu")), device=torch.device("cpu"), logger=logger), logger


def test_a_rank_slower_than_its_peers_in_windows_in_a_row_is_named_once():
    watch, logger = _watch()
    slow = [(0.10, 0), (0.21, 0), (0.11, 0), (0.10, 0)]
    named = [watch.judge(WINDOW * (i + 1), slow) for i in range(PERSIST + 2)]
    assert named == [[]] * (PERSIST - 1) + [[1]] + [[]] * 2  # named when it persists, then not again
    (line,) = logger.lines
    assert line.startswith(f"straggler: rank 1 takes 0.210s per step to reach the gradient sync, its peers 0.100s "
                           f"(2.1x), over steps 1-{WINDOW * PERSIST}; the others wait for it")
    assert logger.events == [{"event": "straggler", "step": WINDOW * PERSIST, "rank": 1, "seconds": 0.21,
                              "peers": pytest.approx(0.10), "windows": PERSIST}]
    watch.judge(WINDOW * 9, [(0.1, 0)] * 4)  # it caught up...
    named = [watch.judge(WINDOW * (10 + i), slow) for i in range(PERSIST)]
    assert named[-1] == [1]  # ...and fell behind anew: named again


def test_noise_pipeline_stages_and_untimed_ranks_name_nobody():
    watch, logger = _watch()
    within = 1 + MARGIN * 0.8
    for i in range(PERSIST + 1):
        # within the margin; a pipeline stage of its own (nobody to compare with); a graphed rank without samples
        assert watch.judge(WINDOW * (i + 1), [(0.1, 0), (0.1 * within, 0), (5.0, 1), (math.nan, 0)]) == []
        assert watch.judge(WINDOW * (i + 1), [(0.010, 0), (0.025, 0), (0.010, 0)]) == []  # 2.5x but 15 ms
    assert logger.lines == []


def test_the_clock_measures_to_the_gradient_sync_only(monkeypatch):
    clock = Clock(torch.device("cpu"))
    now = [100.0]
    monkeypatch.setattr(stragglers.time, "perf_counter", lambda: now[0])
    finalize = clock.wrap(lambda *a, **k: ("synced", a, k))
    for took in (0.5, 0.3):
        clock.start()
        now[0] += took
        assert finalize(1, x=2) == ("synced", (1,), {"x": 2})
        now[0] += 10.0  # the optimizer step after the sync is not counted
    finalize()  # a sync outside a step (none started) is not a sample
    assert clock.take() == pytest.approx(0.4) and math.isnan(clock.take())
