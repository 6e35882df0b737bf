"""Checkpoint folders as the control plane sees them: listing, completeness, verification.

The training side (:mod:`llmops_model.train.checkpoint`) writes checkpoints; this
module reads them without Megatron, so ``llmops checkpoints`` and resume
decisions work on a laptop. Layout of a checkpoint root::

    iter_0000100/                       a complete checkpoint (torch_dist format)
        llmops-manifest.json            written last: step, layout, model, every file and its size
    iter_0000200.partial/               being written, or left behind by a crash
    latest_checkpointed_iteration.txt   Megatron's tracker, replaced atomically
    llmops-owner.json                   the run and stage that save here (see :func:`claim`)

:func:`verify` is the check every resume makes (manifest present, every file
there with its recorded size). :func:`verify_deep` also reads the torch_dist
metadata and checks that every tensor's byte range lies inside its file,
which catches a shard that was overwritten or cut in a way that kept its size
in the manifest but not its contents' extent (it needs torch).
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops.errors import UserError

MANIFEST = "llmops-manifest.json"
TRACKER = "latest_checkpointed_iteration.txt"
OWNER = "llmops-owner.json"
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


def claim(root: Path, *, run: str, stage: str) -> None:
    """Make `root` the checkpoint folder of `run`'s `stage`, or refuse one another run or stage owns.

    A stage resumes from the newest checkpoint in its folder and prunes the old ones: two owners of one
    folder would resume from and delete each other's work (an align stage pointed at pretraining's folder
    resumed at pretraining's last step and trained nothing). The first to claim writes the owner file with
    a hard link, which fails when one exists, so concurrent ranks on a shared file system agree.
    Precondition: every rank of the stage calls it before it loads or saves (they all raise alike).
    """
    mine = {"run": run, "stage": stage}
    path = root / OWNER
    if not path.exists():
        foreign = foreign_checkpoints(root)
        if foreign:
            shown = ", ".join(p.name for p in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                                            else "")
            raise UserError(f"the checkpoint folder {root} holds checkpoints llmops did not write ({shown}): a "
                            "stage resumes from, replaces and prunes the checkpoints in its folder",
                            "give checkpoint.dir (or the align stage's checkpoint_dir) a new or empty folder; to "
                            "start from other weights, convert them to a transformers folder and set "
                            "model.init_from")
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{OWNER}.{socket.gethostname()}.{os.getpid()}"
        tmp.write_text(json.dumps(mine) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another rank, or another owner, was first: read what it wrote
        finally:
            tmp.unlink(missing_ok=True)
    owner = owner_of(root)
    if owner != mine:
        who = f"run {owner['run']} (stage {owner['stage']})" if owner else "an unreadable owner file"
        raise UserError(f"the checkpoint folder {root} belongs to {who}, not to run {run} (stage {stage}): "
                        "two owners would resume from and delete each other's checkpoints",
                        "give this stage a folder of its own (checkpoint.dir, or the align stage's checkpoint_dir)"
                        + (f", or continue that run with `llmops resume {owner['run']}`" if owner else "")
                        + f"; to hand the folder over on purpose, delete {path}")


def owner_of(root: Path) -> dict[str, str] | None:
    """The run and stage that own a checkpoint folder, if it says."""
    try:
        data = json.loads((root / OWNER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and set(data) == {"run", "stage"} else None


def step_of(path: Path) -> int | None:
    """The step of a checkpoint folder (iter_0000040 -> 40), None for any other name."""
    m = _ITER_RE.match(path.name)
    return int(m.group(1)) if m and not m.group(2) else None


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
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({exc})"
    if not isinstance(files, dict) or not all(isinstance(n, str) and isinstance(v, int) and not isinstance(v, bool)
                                              for n, v in files.items()):
        return "damaged manifest (its files are not a mapping of names to sizes)"
    for name, size in files.items():
        try:  # one look: a prune deleting the folder meanwhile makes it missing, not an error
            st = (path / name).stat()
        except (FileNotFoundError, NotADirectoryError):
            return f"missing file {name}"
        if not stat.S_ISREG(st.st_mode):
            return f"missing file {name}"
        actual = st.st_size
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


def foreign_checkpoints(root: Path) -> list[Path]:
    """The ``iter_*`` entries under `root` that llmops did not write: no manifest (Megatron-LM's own
    checkpoints use the same names). llmops's complete checkpoints carry one, and its unfinished ones are
    ``iter_N.partial``, which only a folder llmops owns holds."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _ITER_RE.match(p.name) and not p.name.endswith(".partial")
                  and not (p / MANIFEST).is_file())


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
        if not isinstance(meta, dict):
            meta = {}
        layout, saved = meta.get("layout"), meta.get("saved_at")
        if not (isinstance(layout, dict) and all(isinstance(layout.get(k), int) for k in ("tp", "pp", "dp"))):
            layout = None  # a manifest edited or damaged by hand: shown as unknown
        if not (isinstance(saved, int | float) and not isinstance(saved, bool) and 0 < saved < 2**33):
            saved = None
        out.append(Info(path=p, step=int(m.group(1)), complete=problem is None, problem=problem,
                        layout=layout, size=size, saved_at=saved, latest=p == latest))
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
