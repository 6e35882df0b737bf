"""Checkpoint completeness: sealing, verification, fallback past broken checkpoints, pruning."""

from __future__ import annotations

import json
from pathlib import Path

from llmops_model.train import checkpoint


def _fake_written(root: Path, step: int, files: dict[str, bytes]) -> Path:
    """What dist_checkpointing leaves in a .partial folder before it is sealed."""
    partial = root / f"iter_{step:07d}.partial"
    partial.mkdir(parents=True)
    for name, data in files.items():
        (partial / name).write_bytes(data)
    return partial


def _seal(root: Path, step: int, keep_last: int = 5) -> Path:
    _fake_written(root, step, {"__0_0.distcp": b"x" * (100 + step), "common.pt": b"c", ".metadata": b"m"})
    return checkpoint.commit(root, step, meta={"layout": {"tp": 1, "pp": 1, "dp": 1}}, keep_last=keep_last)


def test_commit_seals_renames_and_updates_tracker(tmp_path):
    path = _seal(tmp_path, 10)
    assert path.name == "iter_0000010" and not (tmp_path / "iter_0000010.partial").exists()
    assert checkpoint.verify(path) is None
    assert (tmp_path / checkpoint.TRACKER).read_text().strip() == "10"
    manifest = json.loads((path / checkpoint.MANIFEST).read_text())
    assert manifest["files"]["__0_0.distcp"] == 110 and manifest["step"] == 10


def test_unsealed_checkpoint_is_never_resumed(tmp_path):
    _seal(tmp_path, 10)
    _fake_written(tmp_path, 20, {"__0_0.distcp": b"half"})  # a save killed mid-write
    found = checkpoint.find_latest(tmp_path)
    assert found.step == 10 and found.path.name == "iter_0000010"


def test_truncated_newest_checkpoint_is_skipped_with_reason(tmp_path):
    _seal(tmp_path, 10)
    newest = _seal(tmp_path, 20)
    shard = newest / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:50])
    found = checkpoint.find_latest(tmp_path)
    assert found.step == 10
    (skipped_path, reason), = found.skipped
    assert skipped_path == newest and "truncated" in reason and "__0_0.distcp" in reason


def test_missing_shard_and_missing_manifest_are_reported(tmp_path):
    a = _seal(tmp_path, 10)
    (a / "common.pt").unlink()
    assert "missing file common.pt" in checkpoint.verify(a)
    b = _seal(tmp_path, 20)
    (b / checkpoint.MANIFEST).unlink()
    assert "no manifest" in checkpoint.verify(b)
    assert checkpoint.find_latest(tmp_path).path is None


def test_prune_keeps_the_newest_complete_ones(tmp_path):
    for step in (10, 20, 30, 40):
        _seal(tmp_path, step, keep_last=2)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [40, 30]


def test_prune_counts_only_complete_checkpoints(tmp_path):
    _seal(tmp_path, 10, keep_last=2)
    broken = _seal(tmp_path, 20, keep_last=2)
    (broken / "common.pt").unlink()
    _seal(tmp_path, 30, keep_last=2)
    # 20 is broken, so keeping two complete ones must keep 10 as well as 30.
    steps = [s for s, _ in checkpoint.list_checkpoints(tmp_path)]
    assert 10 in steps and 30 in steps
