"""The work folder: the plan, intermediate shard files and completion markers.

::

    <output.dir>/work/
        plan.json                         the input's files (size, time), its units, the shard count, the config
                                          fingerprint, and the plan's id
        done/<phase>-<shard>-of-<N>.json  completion markers (with each shard's stats and the plan's id)
        clean/shard-<i>.arrow|.exact|.sig|.quarantine.jsonl
        dedup/shard-<i>.remove.npy, duplicates.jsonl
        tokenize/shard-<i>.bin|.idx|.jsonl.zst

Every file is written under a temporary name and renamed when complete; a
marker is written last. A phase whose marker exists is skipped on a re-run,
and one without a marker is redone from the start, so an interruption never
leaves output that looks complete. A marker counts only for the plan it was
written under: when the input changes, the clean phase writes a new plan and
every phase runs again on the new input (nothing is deleted for that: each
shard's stale marker goes just before its files are written again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmops.errors import UserError
from llmops.files import fsync_path
from llmops.prepare.sources import Unit, discover, listing
from llmops.spec.prepare import PrepareSpec


def temp_tag() -> str:
    """A temporary file's tag: the pid and a random part. Two writers of one shard at once (a retried Kubernetes
    pod, whose pid is 1 like the first one's; a requeued Slurm task beside a hung one) must not share a file."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


_TEMP = re.compile(r"\.(?P<name>.+)\.tmp-\d+-[0-9a-f]{12}(?P<suffix>\.bin|\.idx)?")


def remove_stale_temps(folder: Path, names: set[str]) -> list[str]:
    """Remove the temporary files (temp_tag's) of a writer of `names` that was killed before its rename, from
    `folder`; the names removed. Nothing else is touched: only these names, only in this pattern."""
    removed = []
    for path in folder.iterdir() if folder.is_dir() else []:
        m = _TEMP.fullmatch(path.name)
        if m and m["name"] + (m["suffix"] or "") in names and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return sorted(removed)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write; renamed to `path` only if the block succeeds, on disk first."""
    tmp = path.with_name(f".{path.name}.tmp-{temp_tag()}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


class WorkDir:
    """Paths and markers under one work folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.plan_id: str | None = None
        """The plan whose markers count (set by make_plan): a marker of an earlier plan stands for work on
        input that has changed since."""

    def path(self, phase: str, shard: int, suffix: str) -> Path:
        d = self.root / phase
        d.mkdir(parents=True, exist_ok=True)
        return d / f"shard-{shard:05d}{suffix}"

    def marker(self, phase: str, shard: int, num_shards: int) -> Path:
        return self.root / "done" / f"{phase}-{shard:05d}-of-{num_shards:05d}.json"

    def is_done(self, phase: str, shard: int, num_shards: int) -> bool:
        try:
            return self.read_marker(phase, shard, num_shards).get("plan") == self.plan_id
        except (OSError, ValueError):
            return False

    def mark_done(self, phase: str, shard: int, num_shards: int, payload: dict[str, Any]) -> None:
        (self.root / "done").mkdir(parents=True, exist_ok=True)
        write_json(self.marker(phase, shard, num_shards), {**payload, "plan": self.plan_id})

    def unmark(self, phase: str, shard: int) -> None:
        """Remove the stale markers of this shard's files (another plan's, of any shard count) before they are
        written again: a marker must never stand over files of another plan (were the input put back as it
        was, the old plan's marker would count again)."""
        for path in (self.root / "done").glob(f"{phase}-{shard:05d}-of-*.json"):
            path.unlink(missing_ok=True)

    def read_marker(self, phase: str, shard: int, num_shards: int) -> dict[str, Any]:
        return json.loads(self.marker(phase, shard, num_shards).read_text())

    def missing(self, phase: str, num_shards: int) -> list[int]:
        return [i for i in range(num_shards) if not self.is_done(phase, i, num_shards)]

    def remove_bulk(self) -> None:
        """Delete the intermediate shard files, keeping the plan and the markers: only the files the phases
        write (a --workdir given by hand may be a folder that also holds the user's own ``clean/``)."""
        for phase in ("clean", "dedup", "tokenize"):
            folder = self.root / phase
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.is_file() and (path.name.startswith(("shard-", ".shard-")) or path.name == "duplicates.jsonl"):
                    path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when nothing else is left in it


class Plan:
    """The input's files and units, and how the units are split into shards; fixed at the first phase that runs
    and made again when the input changes."""

    def __init__(self, data: dict[str, Any]):
        self.data = data
        self.units = [Unit(**u) for u in data["units"]]
        self.num_shards: int = data["num_shards"]
        self.id: str | None = data.get("id")  # None in a plan.json of an llmops before ids: its markers have none

    @property
    def total_bytes(self) -> int:
        return sum(u.size for u in self.units)


def make_plan(spec: PrepareSpec, work: WorkDir, num_shards: int | None, *, check_input: bool = True) -> Plan:
    """Read the existing plan (checking it matches), or discover the input and write one; `work` then counts
    only this plan's markers.

    With `check_input` (every clean shard, and a whole run at its start) the input's files are listed again
    and compared with the plan's: a changed input gets a new plan, `num_shards` or the old count of shards,
    and every phase runs again on it. Every shard of a fanned-out phase may call this at once: each computes
    the same plan from the same input and the renames are atomic.
    """
    path = work.root / "plan.json"
    files = None
    if path.exists():
        plan = Plan(json.loads(path.read_text()))
        _check_config(spec, plan, work)
        if not check_input or (files := listing(spec.input)) == plan.data.get("inputs"):
            work.plan_id = plan.id
            # A finished dataset of this input and these settings is done, whatever the count of shards asked
            if num_shards is not None and num_shards != plan.num_shards and not work.is_done("finalize", 0, 1):
                raise shard_count_error(work, plan.num_shards, num_shards)
            return plan
        _say_changed(plan.data.get("inputs"), files, path)
        num_shards = num_shards or plan.num_shards
    if num_shards is None:
        raise UserError(f"{work.root} has no plan.json: the clean phase has not started there",
                        "run `llmops prepare SPEC --phase clean --shard I --num-shards N` for every shard first")
    files = files if files is not None else listing(spec.input)  # before the units: a change in between is seen
    units, skipped = discover(spec.input)
    if not units:
        raise UserError("the input holds no readable file", "check input.paths and input.format")
    data = {"fingerprint": spec.fingerprint(), "config": spec.output_settings(), "num_shards": num_shards,
            "inputs": files, "units": [u.to_dict() for u in units], "skipped_files": skipped}
    data["id"] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    work.root.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    work.plan_id = data["id"]
    return Plan(data)


def shard_count_error(work: WorkDir, planned: int, asked: int) -> UserError:
    # `--num-shards` exists only on `llmops prepare`; a run spec sets prepare.num_shards, which every backend's
    # own shard count (slurm.prepare_shards, k8s.prepare_shards) gives way to.
    return UserError(f"the work folder {work.root} was started with {planned} shard(s), not {asked}, and its "
                     "finished shards are kept", f"set prepare.num_shards: {planned} in the spec (or "
                     f"--num-shards {planned} for `llmops prepare --phase`), or delete {work.root} to start over "
                     f"with {asked}")


def _say_changed(old: dict | None, new: dict, plan_path: Path) -> None:
    """Say on stderr (the log of a cluster task) that the work folder is being redone, and why."""
    if old is None:
        why = "it was written by an earlier llmops that did not record the input's files"
    else:
        parts = [(what, sorted(names)) for what, names in (
            ("added", new.keys() - old.keys()), ("removed", old.keys() - new.keys()),
            ("changed", {p for p in new.keys() & old.keys() if new[p] != old[p]})) if names]
        why = "; ".join(f"{len(names)} {what}: " + ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
                        for what, names in parts)
    print(f"prepare: the input is not what {plan_path} was made of ({why}): every phase runs again on it",
          file=sys.stderr, flush=True)


def _check_config(spec: PrepareSpec, plan: Plan, work: WorkDir) -> None:
    if plan.data["fingerprint"] != spec.fingerprint():
        old, new = plan.data["config"], spec.output_settings()
        changed = sorted(k for k in new if old.get(k) != new[k])
        raise UserError(f"{work.root} was started with a different prepare config (changed: "
                        f"{', '.join(changed) or 'details'}); finished shards would not match the new ones",
                        f"delete {work.root} to start over, or restore the earlier settings")
