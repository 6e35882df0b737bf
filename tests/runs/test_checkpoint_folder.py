"""A stage's checkpoint folder: llmops resumes from, replaces and prunes what is in it, so it takes only a folder
that is new, its own, or empty of checkpoints it did not write (Megatron-LM's use the same ``iter_N`` names)."""

from __future__ import annotations

import json

import pytest

from llmops.errors import UserError
from llmops.runs.checkpoints import MANIFEST, OWNER, TRACKER, claim, owner_of


def _megatron_lm_checkpoint(root, step: int) -> None:
    folder = root / f"iter_{step:07d}"
    (folder / "mp_rank_00").mkdir(parents=True)
    (folder / "mp_rank_00" / "model_optim_rng.pt").write_bytes(b"their weights")
    (root / TRACKER).write_text(f"{step}\n")


def _listing(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_folder_of_checkpoints_llmops_did_not_write_is_refused_and_left_as_it_is(tmp_path):
    root = tmp_path / "megatron-lm"
    for step in (500, 1000):
        _megatron_lm_checkpoint(root, step)
    before = _listing(root)
    with pytest.raises(UserError) as refused:
        claim(root, run="mine-1", stage="pretrain")
    said = refused.value.render()
    assert "holds checkpoints llmops did not write (iter_0000500, iter_0001000)" in said
    assert "new or empty folder" in said
    assert _listing(root) == before  # no owner file written, nothing touched


def test_a_new_folder_or_one_of_llmops_own_checkpoints_is_claimed(tmp_path):
    claim(tmp_path / "new", run="mine-1", stage="pretrain")
    assert owner_of(tmp_path / "new") == {"run": "mine-1", "stage": "pretrain"}
    ours = tmp_path / "ours"  # written by a version of llmops before owner files: its checkpoints have manifests
    (ours / "iter_0000010").mkdir(parents=True)
    (ours / "iter_0000010" / MANIFEST).write_text(json.dumps({"step": 10, "files": {}}))
    (ours / "iter_0000020.partial").mkdir()
    (ours / "notes.txt").write_text("the user's own file, not a checkpoint")
    claim(ours, run="mine-1", stage="pretrain")
    assert (ours / OWNER).is_file()
