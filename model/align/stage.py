"""The alignment stage: SFT or DPO from a pre-training checkpoint, with checkpoints and auto-resume.

It reuses the pre-training machinery unchanged: the same model build, DDP
and optimizer (:func:`llmops_model.train.loop.build`), the same pipeline
schedules, checkpoint save/resume and preemption handling
(:func:`llmops_model.train.loop.run_steps`). What differs is the data, the loss
(:mod:`llmops_model.align.objectives`) and where the weights come from:

1. the stage's own latest checkpoint, when it has one (auto-resume), else
2. the starting checkpoint's model weights only (any TP/PP layout; Megatron's
   dist_checkpointing reshards), with a fresh optimizer.

Everything here is collective: every rank runs :func:`align`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from llmops.errors import UserError
from llmops.runs.rundir import checkpoint_root, start_root
from llmops.spec import hf
from llmops.spec.align import AlignSpec
from llmops.spec.run import RunSpec, TrainSpec
from llmops_model import gpt
from llmops_model.align import examples, reference
from llmops_model.align.metrics import AlignLogger
from llmops_model.align.objectives import DPO, SFT, objective, reduce_sums
from llmops_model.align.sources import DPOSource, SFTSource, sweep
from llmops_model.parallel import Layout
from llmops_model.preemption import PreemptionFlag
from llmops_model.train import checkpoint, data, loop

# Model fields a starting checkpoint must share with the spec (seq_length only with learned positions).


def stage_spec(spec: RunSpec, stage: str, *, run_dir: Path) -> RunSpec:
    """The spec as the shared training code reads it for align stage `stage`.

    `align` holds that stage alone (see :func:`current`), with its starting
    and its own checkpoint folders filled in; its optimisation settings become
    `train:`. Precision, Adam betas, the distributed optimizer and TensorBoard
    come from the pretrain stage's `train:` when the spec has one.
    """
    a = spec.align_stage(stage)
    a = a.model_copy(update={"start_from": start_root(spec, stage, run_dir),
                             "checkpoint_dir": checkpoint_root(spec, stage, run_dir)})
    base = spec.train.model_dump() if spec.train is not None else {}
    return spec.model_copy(update={"train": TrainSpec.model_validate({**base, **a.train_fields()}), "align": [a]})


def current(spec: RunSpec) -> AlignSpec:
    """The align stage a :func:`stage_spec` view runs."""
    (a,) = spec.align
    return a


@dataclass
class Data:
    train: SFTSource | DPOSource
    valid: SFTSource | DPOSource
    stats: dict
    folder: Path


def load_data(spec: RunSpec, *, run_dir: Path, layout: Layout, logger: AlignLogger) -> Data:
    """Collective: rank 0 tokenizes and quarantines (once per data and settings); every rank reads."""
    a, seq = current(spec), spec.model.seq_length
    folder = run_dir / f"align-data-{a.stage}"
    fp = examples.fingerprint(a, seq_length=seq)
    if layout.rank == 0 and examples.cached_stats(folder, fp) is None:
        examples.build(a, seq_length=seq, out=folder, fp=fp)
    dist.barrier()
    stats = examples.cached_stats(folder, fp)
    q = stats["quarantined"]
    bad = (f"; {sum(q.values())} quarantined ({', '.join(f'{k}: {v}' for k, v in q.items())}) in "
           f"{folder / 'quarantine.jsonl'}" if q else "")
    logger.info(f"{a.method} data: {stats['lines']} lines, {stats['train']} training and {stats['valid']} "
                f"held-out examples; {stats['truncated']} truncated{bad}")
    examples.check(stats, a=a, out=folder)
    train_ex, valid_ex = (examples.read(folder / f"{s}.npz", a.method) for s in ("train", "valid"))
    needed = a.steps * a.global_batch_size  # the training source is sized for every sample the stage takes
    return Data(_source(train_ex, spec=spec, stats=stats, needed=needed), _source(valid_ex, spec=spec, stats=stats),
                stats, folder)


def _source(ex: examples.Examples, *, spec: RunSpec, stats: dict, needed: int = 0) -> SFTSource | DPOSource:
    a, seq = current(spec), spec.model.seq_length
    if a.method == "sft":
        return SFTSource(ex, seq_length=seq, packing=a.sft.packing, pad_id=stats["pad_id"], seed=a.seed, needed=needed)
    return DPOSource(ex, seq_length=seq, pad_id=stats["pad_id"], eod_id=stats["eod_id"], seed=a.seed, needed=needed)


def start_checkpoint(spec: RunSpec, *, run_dir: Path) -> Path:
    """The complete checkpoint the stage starts from (or an `hf:` folder's path); UserError when there is none or
    its shape differs."""
    if hf.folder_of(current(spec).start_from) is not None:  # its config.json filled model: (llmops.spec.rules)
        return Path(hf.folder_of(current(spec).start_from))
    root = Path(current(spec).start_from)
    if (root / checkpoint.MANIFEST).exists() or re.match(r"iter_\d+", root.name):  # one checkpoint, not a root
        path, reason = root, checkpoint.verify(root)
    else:
        found = checkpoint.find_latest_agreed(root)
        path, reason = found.path, None if found.path else "holds no complete checkpoint"
    if reason is not None:
        raise UserError(f"align.start_from = {str(root)!r}: {reason}",
                        "pre-train first, or point align.start_from at a complete checkpoint (or its root)")
    differ = checkpoint.model_differences(path, spec.model)
    if differ:
        raise UserError(f"the starting checkpoint {path} is a different model ({'; '.join(differ)})",
                        "give model: the shape the checkpoint was pre-trained with")
    return path


def start_key(path: Path) -> str:
    """What identifies the starting weights, for the DPO reference cache: a checkpoint's save time, an hf:
    folder's weight files and their modification times."""
    if (path / checkpoint.MANIFEST).exists():
        return f"{path.resolve()}:{checkpoint.read_manifest(path)['saved_at']}"
    files = sorted(path.glob("*.safetensors"))
    return f"{path.resolve()}:" + ",".join(f"{f.name}@{f.stat().st_mtime_ns}" for f in files)


def load_start(t: loop.Trainer, path: Path, *, logger: AlignLogger) -> None:
    """Collective: the starting checkpoint's model weights (resharded to this layout), a fresh optimizer."""
    if not (path / checkpoint.MANIFEST).exists() and (path / "config.json").exists():
        loop.start_from_hf(t, hf.PREFIX + str(path), logger=logger)
        return
    state = checkpoint.load(path, sharded_state={"model": t.model.module.sharded_state_dict(prefix="")})
    checkpoint.load_model(t.model.module, state["model"])
    t.optimizer.reload_model_params()  # mixed-precision optimizers keep fp32 copies of the weights
    saved = checkpoint.read_manifest(path)["layout"]
    was = f"tp{saved['tp']}-pp{saved['pp']}-dp{saved['dp']}"
    now = t.layout.describe()
    logger.info(f"starting weights from {logger.where(path)} "
                + (f"(layout {now})" if was == now else f"(saved as {was}, now {now})"))


def evaluate(t: loop.Trainer, source, *, obj: SFT | DPO, step: int, logger: AlignLogger) -> None:
    """Collective: the loss (and DPO's figures) over every held-out example, forward only."""
    if source.count == 0:
        return
    mbs, layout = t.spec.train.micro_batch_size, t.layout
    steps, batches = sweep(source, micro_batch_size=mbs, dp=layout.dp, dp_rank=layout.dp_rank, device=t.device,
                           keys=obj.keys)
    t.model.eval()
    with torch.no_grad():
        outputs = loop.forward_backward(t, batches, forward_step=obj.forward_step, num_microbatches=steps,
                                         forward_only=True, **obj.shape(mbs, t.spec.model.seq_length))
    t.model.train()
    sums = reduce_sums(outputs)
    if sums is not None:
        logger.log_eval(step=step, metrics=obj.summarize(sums))


def align(spec: RunSpec, *, run_dir: Path, layout: Layout, device: torch.device, restart: int) -> int:
    """Train to `align.steps`, resuming and checkpointing; returns the process exit code.

    Precondition: `spec` is :func:`stage_spec`'s view (its `train:` holds the align settings).
    """
    a = current(spec)
    obj = objective(a, attention=gpt.attention_backend(spec))
    with AlignLogger(spec, run_dir, enabled=layout.is_logger, world_size=layout.world, restart=restart,
                     rows=obj.rows) as logger:
        logger.event("start", process_started=loop.process_started())
        flag = PreemptionFlag().install()
        d = load_data(spec, run_dir=run_dir, layout=layout, logger=logger)
        start = start_checkpoint(spec, run_dir=run_dir)
        ckpt_root = Path(a.checkpoint_dir)
        checkpoint.claim(ckpt_root, run=run_dir.name, stage=a.stage)
        # Alignment steps run eagerly: their objectives have not been made (or tested) safe to capture.
        t = loop.build(spec, layout=layout, device=device, ckpt_root=ckpt_root, per_token_loss=True, step_graph=False)
        loaded = False
        if isinstance(obj, DPO):
            key = f"{d.stats['fingerprint']}:{start_key(start)}"
            loaded = reference.attach(t, {"train": d.train, "valid": d.valid}, objective=obj,
                                      micro_batch_size=a.micro_batch_size, cache=d.folder / "reference.npz", key=key,
                                      load_start=lambda: load_start(t, start, logger=logger), logger=logger)
        step = loop.resume(t, logger=logger) if spec.checkpoint.resume else 0
        if step == 0 and not loaded:
            load_start(t, start, logger=logger)
        stream = data.batches(d.train, spec=spec, layout=layout, start_step=step, device=device, keys=obj.keys)

        def advance(step: int) -> None:
            began = time.perf_counter()
            outputs, grad_norm = loop.optimizer_step(t, stream, forward_step=obj.forward_step,
                                                      **obj.shape(a.micro_batch_size, spec.model.seq_length))
            sums = reduce_sums(outputs)
            if sums is not None and (step % a.log_interval == 0 or step == a.steps):
                logger.log_step(step=step, metrics=obj.summarize(sums),
                                lr=t.scheduler.get_lr(t.optimizer.param_groups[0]),
                                grad_norm=None if grad_norm is None else float(grad_norm),
                                step_time=time.perf_counter() - began)
            if step == a.steps or (a.eval_interval and step % a.eval_interval == 0):
                evaluate(t, d.valid, obj=obj, step=step, logger=logger)

        step, code = loop.run_steps(t, step=step, logger=logger, flag=flag, advance=advance)
        return loop.finish(t, code=code, step=step, run_dir=run_dir, logger=logger, flag=flag)
