"""Units and shards: every unit in exactly one shard, contiguous, balanced by bytes."""

from __future__ import annotations

from llmops.prepare.sources import Unit, assign


def units(*sizes: int) -> list[Unit]:
    return [Unit(f"f{i}", "jsonl", "none", f"f{i}", size) for i, size in enumerate(sizes)]


def test_shards_are_contiguous_runs_covering_every_unit_once():
    us = units(*([10] * 37))
    for n in (1, 2, 5, 37, 50):
        shards = assign(us, n)
        assert len(shards) == n
        assert [i for s in shards for i in s] == list(range(37))


def test_shards_balance_bytes_not_unit_counts():
    shards = assign(units(100, 1, 1, 1, 1, 100, 1, 1), 2)
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7]]  # 103 bytes each: the big units sit at opposite ends


def test_more_shards_than_units_leaves_some_empty():
    assert assign(units(5, 5), 4) == [[], [0], [], [1]]
