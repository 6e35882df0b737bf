"""Sharded checkpoints with Megatron ``dist_checkpointing`` and crash-safe completion.

Layout of a checkpoint root::

    iter_0000100/                       a complete checkpoint (torch_dist format)
        llmops-manifest.json            written last: step, layout, every file and its size
    iter_0000200.partial/               being written, or left behind by a crash
    latest_checkpointed_iteration.txt   Megatron's tracker, replaced atomically

A checkpoint is written under ``.partial`` and renamed only after every rank
finished and the manifest is on disk, so a directory named ``iter_N`` is
complete when it was made. The manifest's sizes catch what can happen to it
later (a truncated copy, a deleted shard): :func:`find_latest` walks back
from the newest checkpoint to the first one that verifies, and says why it
skipped the others. Because the tensors are saved as ShardedTensors with
global shapes, a checkpoint loads into any tensor/pipeline layout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

MANIFEST = "llmops-manifest.json"
TRACKER = "latest_checkpointed_iteration.txt"
_ITER_RE = re.compile(r"^iter_(\d{7,})$")


@dataclass(frozen=True)
class Found:
    """The checkpoint to resume from, and the newer ones that were skipped (with reasons)."""

    path: Path | None
    step: int
    skipped: list[tuple[Path, str]]


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"iter_{step:07d}"


def verify(path: Path) -> str | None:
    """Why this checkpoint cannot be used, or None when it is complete."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no manifest (the save did not finish)"
    try:
        meta = json.loads(manifest.read_text())
        files: dict[str, int] = meta["files"]
    except (OSError, ValueError, KeyError) as exc:
        return f"unreadable manifest ({exc})"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"missing file {name}"
        actual = f.stat().st_size
        if actual != size:
            return f"file {name} has {actual} bytes, the manifest says {size} (truncated or overwritten)"
    return None


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text())


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Every ``iter_N`` directory under root, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _ITER_RE.match(p.name))]
    return sorted(found, reverse=True)


def find_latest(root: Path) -> Found:
    """The newest checkpoint that verifies; newer broken ones are listed with the reason."""
    skipped: list[tuple[Path, str]] = []
    for step, path in list_checkpoints(root):
        reason = verify(path)
        if reason is None:
            return Found(path, step, skipped)
        skipped.append((path, reason))
    return Found(None, 0, skipped)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(root: Path, step: int, *, meta: dict[str, Any], keep_last: int) -> Path:
    """Seal a fully written ``.partial`` checkpoint: manifest, rename, tracker, prune.

    Runs on one rank after every rank's shards are on disk.
    """
    final = checkpoint_dir(root, step)
    partial = final.with_name(final.name + ".partial")
    files = {str(p.relative_to(partial)): p.stat().st_size for p in sorted(partial.rglob("*")) if p.is_file()}
    _write_atomic(partial / MANIFEST, json.dumps({**meta, "step": step, "files": files,
                                                  "saved_at": time.time()}, indent=1))
    if final.exists():  # an older save of the same step (a resumed run re-saving): replace it
        shutil.rmtree(final)
    os.replace(partial, final)
    _fsync_dir(root)
    _write_atomic(root / TRACKER, f"{step}\n")
    prune(root, keep_last=keep_last)
    return final


def prune(root: Path, *, keep_last: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest `keep_last`, and leftover partial ones."""
    removed = []
    complete = [p for _, p in list_checkpoints(root) if verify(p) is None]
    for path in complete[keep_last:]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    for path in root.glob("iter_*.partial"):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def save(root: Path, step: int, *, state: dict[str, Any], meta: dict[str, Any], keep_last: int,
         async_queue=None) -> None:
    """Collective: every rank calls this with its sharded state dict.

    With `async_queue` (a Megatron ``AsyncCallsQueue``) the shards are written
    in the background and the checkpoint is sealed when the queue finalizes it;
    otherwise this returns once the checkpoint is sealed.
    """
    from megatron.core import dist_checkpointing

    root.mkdir(parents=True, exist_ok=True)
    partial = checkpoint_dir(root, step).with_name(checkpoint_dir(root, step).name + ".partial")
    rank = dist.get_rank()
    if rank == 0:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    dist.barrier()

    def seal() -> None:
        dist.barrier()
        if rank == 0:
            commit(root, step, meta=meta, keep_last=keep_last)
        dist.barrier()

    if async_queue is None:
        dist_checkpointing.save(state, str(partial))
        seal()
        return
    def seal_async() -> None:
        # Runs on every rank once all ranks' shards are written (the queue checks collectively),
        # after Megatron's own finalize steps have written the checkpoint metadata.
        if rank == 0:
            commit(root, step, meta=meta, keep_last=keep_last)

    request = dist_checkpointing.save(state, str(partial), async_sharded_save=True)
    request.add_finalize_fn(seal_async)
    async_queue.schedule_async_request(request)


def load(path: Path, *, sharded_state: dict[str, Any]) -> dict[str, Any]:
    """Collective: load a checkpoint into this rank's layout (resharding as needed)."""
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load(sharded_state, str(path))
