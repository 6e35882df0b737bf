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

import functools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from llmops.files import fsync_path

# What a checkpoint is, and how it is checked, is shared with the control plane (no torch needed there).
from llmops.runs.checkpoints import (
    MANIFEST,
    TRACKER,
    Found,
    checkpoint_dir,
    claim,
    find_latest,
    list_checkpoints,
    read_manifest,
    verify,
)

__all__ = [
    "MANIFEST",
    "TRACKER",
    "Found",
    "checkpoint_dir",
    "claim",
    "commit",
    "find_latest",
    "find_latest_agreed",
    "list_checkpoints",
    "load",
    "prune",
    "read_manifest",
    "SaveFailed",
    "save",
    "verify",
]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def commit(root: Path, step: int, *, meta: dict[str, Any], keep_last: int) -> Path:
    """Seal a fully written ``.partial`` checkpoint: manifest, rename, tracker, prune.

    Runs on one rank after every rank's shards are on disk.
    """
    final = checkpoint_dir(root, step)
    partial = final.with_name(final.name + ".partial")
    files = {str(p.relative_to(partial)): p.stat().st_size for p in sorted(partial.rglob("*")) if p.is_file()}
    # On disk before the manifest says they are: the shard writers sync theirs, Megatron's common.pt and
    # metadata files it does not (a host crash could otherwise leave a manifest over a file never written).
    for name in files:
        fsync_path(partial / name)
    fsync_path(partial)
    _write_atomic(partial / MANIFEST, json.dumps({**meta, "step": step, "files": files,
                                                  "saved_at": time.time()}, indent=1))
    if final.exists():  # an older save of the same step (a resumed run re-saving): replace it, if it is ours
        if not (final / MANIFEST).is_file():
            raise FileExistsError(f"{final} exists and llmops did not write it (no {MANIFEST}): left as it is")
        shutil.rmtree(final)
    os.replace(partial, final)
    try:
        fsync_path(root)
        _write_atomic(root / TRACKER, f"{step}\n")
        prune(root, keep_last=keep_last, sealed=final)
    except OSError as exc:  # sealed already (its manifest says it is complete): not a failed save
        print(f"[llmops] checkpoint {final.name} is saved, but updating its folder afterwards failed "
              f"(tracker file or removing older checkpoints): {exc}", file=sys.stderr, flush=True)
    return final


def prune(root: Path, *, keep_last: int, sealed: Path) -> list[Path]:
    """Delete complete checkpoints beyond the newest `keep_last`, and leftover partial ones; never `sealed`, the one
    just written (a run that does not resume, in a folder with later steps of an earlier attempt, keeps it)."""
    removed = []
    complete = [p for _, p in list_checkpoints(root) if verify(p) is None]
    for path in complete[keep_last:]:
        if path == sealed:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    for path in root.glob("iter_*.partial"):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


class Saver:
    """What successive saves of one training process share, so that only the first pays for planning.

    Megatron's torch_dist strategy can cache the global save plan once two
    saves agreed on it (``cached_metadata``): later saves skip gathering every
    rank's plan. The access-integrity check (every tensor saved exactly once)
    runs on the first save only; the model's structure does not change after it.
    """

    def __init__(self) -> None:
        self.strategy = None
        self.saves = 0

    def kwargs(self) -> dict[str, Any]:
        if self.strategy is None:
            from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

            self.strategy = TorchDistSaveShardedStrategy("torch_dist", 1, cached_metadata=True)
            _fork_results_queue()
        return {"sharded_strategy": self.strategy, "validate_access_integrity": self.saves == 0}


def _fork_results_queue() -> None:
    """Give Megatron's shard writers a results queue served by a forked process, not a spawned one.

    Megatron creates the queue, on the first save, through a ``spawn``-context
    ``Manager``: a fresh interpreter that must import torch and
    ``torch.distributed.checkpoint`` to unpickle the first write results it
    relays. With four ranks on two cores that made every stage's first save
    take 9-10 s against 0.3 s for the later ones (measured, tiny CPU run). A
    forked manager has those modules already; it only relays queue items and
    never touches an accelerator, and Megatron forks its writers the same way.
    Megatron keeps the queue in a module global; if that ever goes, its own
    queue is used and only the first save is slower. The manager ends with the
    training process, also when that is killed and no finalizer runs.
    """
    import multiprocessing
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", False) is None:
        manager = SyncManager(ctx=multiprocessing.get_context("fork"))
        manager.start(_end_with_parent, (os.getpid(),))
        filesystem_async._results_queue = manager.Queue()  # the queue's proxy keeps its manager alive


def _end_with_parent(parent: int) -> None:
    """In the manager process: exit once the process that started it is gone."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="llmops-parent-watch", daemon=True).start()


# Megatron writes common.pt (the state that is not sharded) and metadata.json on global rank 0 alone, between
# collectives. An error there (a full disk, a quota) took rank 0 out of the collective the other ranks were in:
# a hang, which the watchdog ended with a restart that met the same full disk. Both writes are guarded: rank 0
# keeps the error, goes on with the others, and every rank learns of it in _agree.
_rank0_failures: list[BaseException] = []


@functools.cache
def _guard_rank0_writes() -> None:
    """Install the guards, once per process."""
    from megatron.core.dist_checkpointing import serialization
    from megatron.core.dist_checkpointing.strategies.base import StrategyAction, register_default_strategy
    from megatron.core.dist_checkpointing.strategies.common import TorchCommonSaveStrategy

    class GuardedCommonSave(TorchCommonSaveStrategy):
        def save_common(self, common_state_dict, checkpoint_dir):
            try:
                super().save_common(common_state_dict, checkpoint_dir)
            except Exception as exc:  # noqa: BLE001 (whatever it is, the other ranks must learn of it)
                _rank0_failures.append(exc)

    register_default_strategy(StrategyAction.SAVE_COMMON, "torch", 1, GuardedCommonSave("torch", 1))
    write = serialization.save_config

    def save_config(*args, **kwargs):
        try:
            write(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            _rank0_failures.append(exc)

    serialization.save_config = save_config


def _rank0_failure() -> BaseException | None:
    """The first error of a guarded rank-0 write since the last call (None on other ranks, or when none)."""
    failures, _rank0_failures[:] = list(_rank0_failures), []
    return failures[0] if failures else None


def save(root: Path, step: int, *, state: dict[str, Any], meta: dict[str, Any], keep_last: int,
         async_queue=None, saver: Saver | None = None) -> None:
    """Collective: every rank calls this with its sharded state dict.

    With `async_queue` (a Megatron ``AsyncCallsQueue``) the shards are written
    in the background and the checkpoint is sealed when the queue finalizes it;
    otherwise this returns once the checkpoint is sealed.
    """
    from megatron.core import dist_checkpointing

    _guard_rank0_writes()
    root.mkdir(parents=True, exist_ok=True)
    partial = _partial(root, step)
    rank = dist.get_rank()
    if rank == 0:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    dist.barrier()

    def seal() -> None:
        dist.barrier()
        failure = _rank0_failure()  # common.pt or metadata.json: never sealed without them
        if rank == 0 and failure is None:
            try:
                commit(root, step, meta=meta, keep_last=keep_last)
            except OSError as exc:  # the manifest or the rename: nothing is sealed
                failure = exc
        _agree(failure, partial, rank)

    if async_queue is None:
        options = saver.kwargs() if saver is not None else {}
        try:
            dist_checkpointing.save(state, str(partial), **options)
            failure = None
        except (Exception, CheckpointException) as exc:  # noqa: BLE001 (disk full, quota, I/O error: every
            failure = exc  # rank must learn of it; torch's CheckpointException is a BaseException)
        _agree(failure, partial, rank)
        seal()
        if saver is not None:
            saver.saves += 1
        return
    def seal_async() -> None:
        # Runs on every rank once all ranks' shards are written (the queue checks collectively),
        # after Megatron's own finalize steps have written the checkpoint metadata; a failure
        # raises SaveFailed on every rank out of the queue's maybe_finalize_async_calls.
        seal()

    options = saver.kwargs() if saver is not None else {}
    request = dist_checkpointing.save(state, str(partial), async_sharded_save=True, **options)
    request.add_finalize_fn(seal_async)
    async_queue.schedule_async_request(request)
    if saver is not None:
        saver.saves += 1


def _partial(root: Path, step: int) -> Path:
    final = checkpoint_dir(root, step)
    return final.with_name(final.name + ".partial")


def find_latest_agreed(root: Path) -> Found:
    """Collective: :func:`find_latest` as global rank 0 sees it, on every rank. Ranks listing the folder each for
    itself could pick different checkpoints where nodes' views of a shared file system lag (an NFS client still
    showing a ``.partial``, a transient error on one node): mixed weights, then a hang."""
    if not dist.is_initialized():  # one process (a tool, a test): nobody to agree with
        return find_latest(root)
    box = [find_latest(root) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class SaveFailed(Exception):
    """A checkpoint could not be written on some rank; its partial folder is removed, nothing was sealed."""


def abandon(root: Path, step: int, failure: BaseException) -> None:
    """Collective: after a background save failed on some rank (every rank saw the failure), remove
    its partial folder and raise SaveFailed on every rank."""
    _agree(failure, _partial(root, step), dist.get_rank())


def start_writer(async_queue) -> None:
    """Collective: start the queue's background writer process now, so that its start-up (a fresh
    interpreter importing torch and Megatron) overlaps training instead of stalling the first save."""
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest

    async_queue.schedule_async_request(AsyncRequest(async_fn=_ready, async_fn_args=(), finalize_fns=[]))


def _ready() -> None:
    """What the background writer runs to start (it must be importable there)."""


def _agree(failure: BaseException | None, partial: Path, rank: int) -> None:
    """Collective: raise SaveFailed on every rank when the save failed on any, after removing the leftovers."""
    import torch

    failure = failure or _rank0_failure()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    flag = torch.tensor([0 if failure is None else 1], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return
    dist.barrier()
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)  # frees the space the shards took
    dist.barrier()
    raise SaveFailed(_reason(failure) if failure is not None else "another rank could not write its shards")


def _reason(exc: BaseException) -> str:
    """The OS error at the root of a (possibly wrapped) save failure, else the exception itself."""
    pending = [exc]
    while pending:
        seen = pending.pop(0)
        if isinstance(seen, OSError):
            return f"{seen.strerror or seen} ({seen.filename})" if seen.filename else str(seen)
        if isinstance(seen, CheckpointException):  # the ranks' own failures, maybe wrapped with a traceback
            for failure in seen.failures.values():
                failure = failure[0] if isinstance(failure, tuple) else getattr(failure, "exception", failure)
                if isinstance(failure, BaseException):
                    pending.append(failure)
        pending += [e for e in (seen.__cause__, seen.__context__) if e is not None]
    text = f"{exc} {getattr(exc, 'failures', '')}"
    for hint in ("No space left on device", "Disk quota exceeded", "File too large"):
        if hint in text:
            return hint
    if isinstance(exc, CheckpointException):  # its str() carries every rank's traceback: keep the messages
        lines = {str(f[0] if isinstance(f, tuple) else f).strip().splitlines()[-1] for f in exc.failures.values()}
        return "; ".join(sorted(lines)) or "the ranks could not write their shards"
    return f"{type(exc).__name__}: {exc}"


EXTRA_STATE = "_extra_state"
"""Transformer Engine's per-module state (FP8 scaling factors and amax history) in a state dict's keys."""


# The model settings that decide its tensors and what they compute: a checkpoint saved with another value of any is
# another model (seq_length too, where positions are learned).
SHAPE = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size", "normalization",
         "position_embedding", "activation", "tie_embeddings", "norm_epsilon", "rope_base", "rope_scaling_factor",
         "qkv_bias")


def model_differences(path: Path, model) -> list[str]:
    """How the model a checkpoint's manifest records differs from `model` (the spec's model:), one "key: there,
    here" each; [] where it is the same model (or the manifest records none)."""
    saved = read_manifest(path).get("model", {})
    keys = SHAPE + (("seq_length",) if model.position_embedding == "learned_absolute" else ())
    ours = model.model_dump()
    differ = [f"{k}: {saved.get(k)} there, {ours[k]} here" for k in keys if k in saved and saved[k] != ours[k]]
    if isinstance(saved.get("vocab_size"), int) and math.ceil(saved["vocab_size"] / 128) * 128 != \
            model.padded_vocab_size:
        differ.append(f"vocab_size: {saved['vocab_size']} there, {model.vocab_size} here")
    return differ


def load(path: Path, *, sharded_state: dict[str, Any]) -> dict[str, Any]:
    """Collective: load a checkpoint into this rank's layout (resharding as needed).

    Linear layers ask for an `_extra_state` (Transformer Engine's FP8 scaling state; None for Megatron's own),
    which a checkpoint written by other layers (another precision, or a machine without TE) may not hold:
    those are not asked for (the checkpoint's index says which it has) and start afresh, as at the start of an
    FP8 run. Any other absent tensor is dist_checkpointing's error, as always.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.dict_utils import extract_matching_values
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.dist_checkpointing.serialization import load_sharded_metadata

    held = {key.split("/shard_")[0] for key in load_sharded_metadata(str(path))}  # objects: <key>/shard_<offset>

    def absent_extra_state(v) -> bool:
        return isinstance(v, ShardedObject) and v.key.endswith(EXTRA_STATE) and v.key not in held

    _, wanted = extract_matching_values(sharded_state, absent_extra_state)
    return dist_checkpointing.load(wanted, str(path))


def load_model(module, state: dict[str, Any]) -> None:
    """`module.load_state_dict(state)`, where TE's `_extra_state` that :func:`load` could not find starts afresh."""
    wanted = module.state_dict().keys()  # Megatron's wrappers return nothing from load_state_dict: compare here
    missing = [k for k in wanted if k not in state]
    wrong = [k for k in missing if not k.endswith(EXTRA_STATE)] + [k for k in state if k not in wanted]
    if wrong:
        raise RuntimeError(f"the checkpoint does not match the model: {', '.join(wrong[:3])}"
                           + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""))
    module.load_state_dict(state, strict=not missing)

