"""Checkpoint folders as the control plane sees them: listing, completeness, verification.

The training side (:mod:`llmops_model.train.checkpoint`) writes checkpoints; this
module reads them without Megatron, so ``llmops checkpoints`` and resume
decisions work on a laptop. Layout of a checkpoint root::

    iter_0000100/                       a complete checkpoint (torch_dist format)
        llmops-manifest.json            written last: step, layout, model, every file and its size
    iter_0000200.partial/               being written, or left behind by a crash
    latest_checkpointed_iteration.txt   Megatron's tracker, replaced atomically

:func:`verify` is the check every resume makes (manifest present, every file
there with its recorded size). :func:`verify_deep` also reads the torch_dist
metadata and checks that every tensor's byte range lies inside its file,
which catches a shard that was overwritten or cut in a way that kept its size
in the manifest but not its contents' extent (it needs torch).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "llmops-manifest.json"
TRACKER = "latest_checkpointed_iteration.txt"
_ITER_RE = re.compile(r"^iter_(\d{7,})(\.partial)?$")


@dataclass(frozen=True)
class Found:
    """The checkpoint to resume from, and the newer ones that were skipped (with reasons)."""

    path: Path | None
    step: int
    skipped: list[tuple[Path, str]]


@dataclass(frozen=True)
class Info:
    """One checkpoint folder, as `llmops checkpoints` lists it."""

    path: Path
    step: int
    complete: bool
    problem: str | None  # why it cannot be resumed from; None when complete
    layout: dict[str, int] | None  # tp, pp, dp it was saved with
    size: int  # bytes on disk
    saved_at: float | None
    latest: bool  # the one a resume would load

    def as_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "step": self.step, "complete": self.complete, "problem": self.problem,
                "layout": self.layout, "size": self.size, "saved_at": self.saved_at, "latest": self.latest}


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


def verify_deep(path: Path) -> str | None:
    """:func:`verify`, then every tensor of the torch_dist metadata within its file's bytes (needs torch)."""
    reason = verify(path)
    if reason is not None:
        return reason
    try:
        from torch.distributed.checkpoint import FileSystemReader
    except ImportError:
        return "cannot read the tensor metadata: torch is not installed here (pip install torch)"
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as exc:  # noqa: BLE001 (a corrupt pickle raises anything)
        return f"unreadable tensor metadata .metadata ({type(exc).__name__}: {exc})"
    sizes: dict[str, int] = {}
    for index, info in (metadata.storage_data or {}).items():
        name = info.relative_path
        if name not in sizes:
            f = path / name
            if not f.is_file():
                return f"missing shard file {name} (holds {index.fqn})"
            sizes[name] = f.stat().st_size
        if info.offset + info.length > sizes[name]:
            return (f"{index.fqn} lies at bytes {info.offset}..{info.offset + info.length} of {name}, "
                    f"which has {sizes[name]} bytes")
    if not metadata.state_dict_metadata:
        return "the tensor metadata lists no tensors"
    return None


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text())


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Every complete-named ``iter_N`` directory under root, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _ITER_RE.match(p.name)) and not m.group(2)]
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


def is_root(path: Path) -> bool:
    """A folder that holds checkpoints (iter_N folders or Megatron's tracker)."""
    return path.is_dir() and ((path / TRACKER).exists() or any(_ITER_RE.match(p.name) for p in path.iterdir()))


def describe(root: Path) -> list[Info]:
    """Every checkpoint under `root`, partial ones included, newest first."""
    if not root.is_dir():
        return []
    latest = find_latest(root).path
    out = []
    for p in root.iterdir():
        m = _ITER_RE.match(p.name)
        if not (p.is_dir() and m):
            continue
        problem = "being written, or left by a crash (a resume ignores it)" if m.group(2) else verify(p)
        meta: dict[str, Any] = {}
        if problem is None or (p / MANIFEST).is_file():
            try:
                meta = read_manifest(p)
            except (OSError, ValueError):
                meta = {}
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        out.append(Info(path=p, step=int(m.group(1)), complete=problem is None, problem=problem,
                        layout=meta.get("layout"), size=size, saved_at=meta.get("saved_at"), latest=p == latest))
    return sorted(out, key=lambda i: (i.step, i.complete), reverse=True)


def roots(ref: str, runs_root: Path) -> list[tuple[str, Path]]:
    """The checkpoint roots `ref` names, labelled: a root itself, one checkpoint's root, or every training
    stage's root of a run (an id, a name, or a run directory). UserError when it names none of these."""
    from llmops.errors import UserError
    from llmops.runs.rundir import checkpoint_root, resolve_run

    path = Path(ref)
    if path.is_dir() and _ITER_RE.match(path.name):
        return [(str(path.parent), path.parent)]
    if is_root(path):
        return [(str(path), path)]
    try:
        run = resolve_run(ref, runs_root)
    except UserError:
        raise UserError(f"{ref!r} is neither a checkpoint folder nor a run",
                        "pass a checkpoint root (the folder with iter_* in it), a run id, or a run directory") from None
    spec = run.read_spec()
    return [(stage, Path(checkpoint_root(spec, stage, run.path))) for stage in spec.training_stages]
