"""The pre-training loop: Megatron DDP, optimizer, pipeline schedules, checkpoints.

Everything here is collective: every rank of the job runs :func:`pretrain`
with the same resolved spec.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from llmops.errors import EXIT_OK, EXIT_REQUEUE, UserError
from llmops.spec.run import RunSpec
from llmops_model import fp8, gpt
from llmops_model.compat import mcore
from llmops_model.fast import fallbacks, graphs
from llmops_model.parallel import Layout
from llmops_model.preemption import PreemptionFlag
from llmops_model.train import checkpoint, data, heartbeat, sharded_state, stragglers
from llmops_model.train.evaluation import HeldOutLoss
from llmops_model.train.metrics import Readout, StepLogger, StepQueue
from llmops_model.train.optimizer import step as step_without_sync


@dataclass
class Trainer:
    """The pieces of a training job, built once per process."""

    spec: RunSpec
    layout: Layout
    device: torch.device
    model: DistributedDataParallel
    optimizer: object
    scheduler: OptimizerParamScheduler
    ckpt_root: Path
    async_queue: object | None = None
    saver: checkpoint.Saver | None = None
    in_flight: int | None = None  # the step of the save being written in the background
    step_graph: graphs.StepGraph | None = None  # the pre-training step's schedule as a CUDA graph
    clock: stragglers.Clock | None = None  # this rank's time to reach each step's gradient sync

    def sharded_state(self, *, loading: bool) -> dict:
        """The model and optimizer as sharded tensors; for a save, also 'optimizer_on' (where it was described).

        The optimizer state is in the canonical per-parameter form
        (:mod:`llmops_model.train.sharded_state`), so a checkpoint reloads into any
        tensor/pipeline/data-parallel layout, not only a new DP size.
        """
        # The unwrapped module's keys ('decoder.layers...'), so checkpoints do not depend on the DDP wrapper.
        model_sd = self.model.module.sharded_state_dict(prefix="")
        if loading:
            return {"model": model_sd, "optimizer": self.optimizer.sharded_state_dict(
                model_sd, is_loading=True, metadata=sharded_state.FORMAT)}
        optimizer, where = sharded_state.describe(self.optimizer, model_sd)
        return {"model": model_sd, "optimizer": optimizer, "optimizer_on": where}


def build(spec: RunSpec, *, layout: Layout, device: torch.device, ckpt_root: Path,
          per_token_loss: bool = False, step_graph: bool = True) -> Trainer:
    """The model, optimizer and schedule of this process.

    With `per_token_loss` the loss function returns (sum, count, metrics) and
    gradients are divided by the count over the whole global batch (Megatron's
    calculate_per_token_loss), instead of averaging per micro-batch means.
    With `step_graph` (and train.cuda_graphs, on a GPU) :func:`train_step`
    replays its forward and backward passes from a CUDA graph.
    """
    cpu = device.type == "cpu"
    # Megatron's pipeline schedules synchronise the device around their sends and receives (batch_p2p_sync),
    # which a capture forbids: pipeline-parallel steps run eagerly.
    graphed = step_graph and spec.train.cuda_graphs and not cpu and layout.pp == 1
    # FP8: the current-scaling recipes compute their scales in the kernels the graph records; delayed
    # scaling updates its amax history from Python between steps (llmops_model.fp8.GRAPHABLE) and runs eagerly.
    graphed = graphed and (not fp8.enabled(spec) or fp8.graphable(spec, device))
    module = gpt.build_model(spec, device=device, compile_layers=gpt.compiles_layers(spec, graphed=graphed))
    config = module.config
    config.calculate_per_token_loss = per_token_loss  # read by DDP's gradient scaling, so set before wrapping
    if config.bf16:
        # Megatron's mixed-precision wrapper: bf16 parameters everywhere (norms included),
        # inputs cast on the first stage and outputs back to fp32 on the last.
        module = Float16Module(config, module)
    use_dist_opt = spec.train.distributed_optimizer and not cpu
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=not cpu,
        use_distributed_optimizer=use_dist_opt,
        # Megatron averages in the collective or divides by the global token count, not both.
        average_in_collective=not cpu and not per_token_loss,
    )
    # DDP keeps each parameter's AccumulateGrad node, which remembers the stream it was made on; a
    # backward captured on another stream would have to sync with it, which a capture forbids. So with
    # CUDA graphs DDP is built on the stream the step is warmed up and captured on.
    capture_stream = torch.cuda.Stream(device) if graphed else None
    with torch.cuda.stream(capture_stream) if graphed else contextlib.nullcontext():
        model = DistributedDataParallel(config=config, ddp_config=ddp_config, module=module)
    if graphed:
        torch.cuda.current_stream(device).wait_stream(capture_stream)
    tr = spec.train
    opt_config = OptimizerConfig(
        optimizer="adam", lr=tr.lr, min_lr=tr.min_lr, weight_decay=tr.weight_decay,
        adam_beta1=tr.adam_beta1, adam_beta2=tr.adam_beta2, clip_grad=tr.grad_clip,
        bf16=config.bf16, params_dtype=config.params_dtype, use_distributed_optimizer=use_dist_opt,
    )
    with mcore.torch_adamw():  # also where TE is installed: one optimizer, one checkpoint layout
        optimizer = get_megatron_optimizer(opt_config, [model])
    if spec.train.fused_kernels:
        fallbacks.use_fused_adamw(optimizer)  # Megatron builds torch's multi-tensor AdamW without Apex/TE
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=tr.lr, min_lr=tr.min_lr,
        lr_warmup_steps=tr.warmup_steps, lr_decay_steps=tr.steps, lr_decay_style="cosine",
        start_wd=tr.weight_decay, end_wd=tr.weight_decay, wd_incr_steps=tr.steps, wd_incr_style="constant",
        # The resolved spec is the source of truth: a checkpoint restores the step count, and a
        # spec that extends training (more steps) stretches the schedule instead of being ignored.
        override_opt_param_scheduler=True,
        use_checkpoint_opt_param_scheduler=False,
    )
    config.no_sync_func = model.no_sync
    clock = stragglers.Clock(device)
    config.finalize_model_grads_func = clock.wrap(finalize_model_grads)
    if not cpu:
        config.grad_sync_func = None
    queue = None
    if spec.checkpoint.async_save and not cpu:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        queue = AsyncCallsQueue(persistent=True)
        checkpoint.start_writer(queue)
    captured = graphs.StepGraph(get_forward_backward_func(), device=device, stream=capture_stream) if graphed else None
    return Trainer(spec, layout, device, model, optimizer, scheduler, ckpt_root, queue, checkpoint.Saver(),
                   step_graph=captured, clock=clock)


def _loss_func(loss_mask: torch.Tensor, output: torch.Tensor):
    losses = output.float()
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses.view(-1) * mask) / mask.sum().clamp(min=1)
    # clone: the schedule divides the returned loss in place by the micro-batch count.
    return loss, {"lm loss": loss.detach().clone()}


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(_loss_func, batch["loss_mask"])


def forward_backward(t: Trainer, batches, *, forward_step: Callable = _forward_step,
                     num_microbatches: int | None = None, rows: int | None = None, seq_length: int | None = None,
                     forward_only: bool = False, graphed: bool = False) -> list[dict]:
    """Megatron's schedule over `num_microbatches` (default: a global batch's share) of `rows` sequences
    (default: train.micro_batch_size) of `seq_length` tokens (default: model.seq_length; the shape pipeline
    stages pass between them) each; returns the loss functions' dicts on the last stage.
    `graphed`: replay the step from the trainer's CUDA graph where it has one."""
    spec = t.spec
    schedule = t.step_graph if graphed and t.step_graph is not None else get_forward_backward_func()
    return schedule(
        forward_step_func=forward_step,
        data_iterator=batches,
        model=[t.model],
        num_microbatches=num_microbatches or spec.num_microbatches,
        seq_length=seq_length or spec.model.seq_length,
        micro_batch_size=rows or spec.train.micro_batch_size,
        decoder_seq_length=seq_length or spec.model.seq_length,
        forward_only=forward_only,
    )


def optimizer_step(t: Trainer, batches, **schedule) -> tuple[list[dict], torch.Tensor | float | None]:
    """One optimizer step over a global batch: (the loss functions' dicts, grad norm).

    Nothing here waits for the GPU where :mod:`~llmops_model.train.optimizer` applies: the grad norm is
    then a device tensor, read when it is logged.
    """
    t.model.zero_grad_buffer()
    t.optimizer.zero_grad()
    losses = forward_backward(t, batches, **schedule)
    _, grad_norm = step_without_sync(t.optimizer)
    t.scheduler.step(increment=1)
    return losses, grad_norm


def train_step(t: Trainer, batches) -> Readout:
    """One optimizer step over a global batch; returns its loss (on the logger rank) and grad norm, to read
    once the GPU gets there: queueing the next step first keeps the GPU busy."""
    losses, grad_norm = optimizer_step(t, batches, graphed=True)
    loss = None
    if parallel_state.is_pipeline_last_stage():
        # The micro-batches' mean over the data-parallel ranks; a new tensor, as a replay overwrites `losses`.
        loss = torch.stack([x["lm loss"] for x in losses]).mean().reshape(1)
        dist.all_reduce(loss, group=parallel_state.get_data_parallel_group())
        loss = loss / t.layout.dp
    return Readout(loss=loss, grad_norm=grad_norm)


def save_checkpoint(t: Trainer, step: int, *, logger: StepLogger, final: bool = False) -> None:
    """Save (collective). With async saves the training loop stalls only while tensors are staged."""
    began = time.perf_counter()
    finalize_saves(t, logger=logger, blocking=True)  # one save in flight at a time
    waited = time.perf_counter() - began  # for the previous background save to finish writing
    state = t.sharded_state(loading=False)
    described = time.perf_counter() - began - waited  # the sharded state dict (per-parameter optimizer state)
    optimizer_on = state.pop("optimizer_on")
    state["scheduler"] = t.scheduler.state_dict()
    state["step"] = step
    meta = {"layout": {"tp": t.layout.tp, "pp": t.layout.pp, "dp": t.layout.dp},
            "consumed_samples": step * t.spec.train.global_batch_size,
            "model": t.spec.model.model_dump(mode="json")}
    queue = None if final else t.async_queue
    try:
        checkpoint.save(t.ckpt_root, step, state=state, meta=meta, keep_last=t.spec.checkpoint.keep_last,
                        async_queue=queue, saver=t.saver)
    except checkpoint.SaveFailed as failed:
        _save_failed(t, step, failed, logger=logger, final=final)
        return
    if queue is not None:
        t.in_flight = step
    stall = time.perf_counter() - began
    where = logger.where(checkpoint.checkpoint_dir(t.ckpt_root, step))
    logger.event("save", step=step, stall=stall, background=queue is not None, waited=waited, describe=described,
                 optimizer_on=optimizer_on)
    if queue is None:
        logger.info(f"saved checkpoint step={step} in {stall:.2f}s to {where}")
    else:
        logger.info(f"checkpoint step={step} writing in the background (stalled {stall:.2f}s) to {where}")


def finalize_saves(t: Trainer, *, logger: StepLogger, blocking: bool) -> None:
    """Collective: seal the background save if it is written (wait for it if `blocking`).

    A background save that failed (a full disk, an I/O error on any rank) is
    reported like a failed synchronous one: its partial folder is removed,
    the previous checkpoint stays the latest, and training goes on.
    """
    if t.async_queue is None:
        return
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        try:
            t.async_queue.maybe_finalize_async_calls(blocking=blocking)
        except CheckpointException as exc:  # a rank's writer failed; Megatron raises it on every rank
            checkpoint.abandon(t.ckpt_root, t.in_flight, exc)
    except checkpoint.SaveFailed as failed:  # from abandon, or written but it could not be sealed
        step, t.in_flight = t.in_flight, None
        _save_failed(t, step, failed, logger=logger, final=False)
        return
    if not t.async_queue.get_num_unfinalized_calls():
        t.in_flight = None


def _save_failed(t: Trainer, step: int, failed: checkpoint.SaveFailed, *, logger: StepLogger, final: bool) -> None:
    """Report a save that wrote nothing complete; a failed final save ends the run with the fix."""
    free = shutil.disk_usage(t.ckpt_root).free
    latest = checkpoint.find_latest(t.ckpt_root).path
    size = sum(checkpoint.read_manifest(latest)["files"].values()) if latest else 0
    if free < size:  # said first: writers do not always say it (torch's zip writer: 'unexpected pos')
        exc = (f"the disk is full: {free / 2**20:,.1f} MiB free under {t.ckpt_root}, a checkpoint of this run "
               f"takes {size / 2**20:,.1f} MiB ({failed})")
    else:
        exc = f"{failed} ({free / 2**20:,.1f} MiB free under {t.ckpt_root})"
    kept = f"{latest.name} stays the latest complete checkpoint" if latest else "there is no complete checkpoint"
    logger.event("save_failed", step=step, reason=str(exc))
    if not final:
        logger.info(f"checkpoint step={step} could not be written: {exc}; {kept}; training goes on "
                    f"and tries again at the next interval")
        return
    raise UserError(f"the final checkpoint (step {step}) could not be written: {exc}; {kept}",
                    f"free space under {t.ckpt_root} (or point checkpoint.dir elsewhere), then "
                    f"`llmops resume` the run: it continues from that checkpoint") from None


def resume(t: Trainer, *, logger: StepLogger) -> int:
    """Load the latest complete checkpoint, if any; returns the step to continue from."""
    found = checkpoint.find_latest_agreed(t.ckpt_root)
    for path, reason in found.skipped:
        logger.info(f"skipping checkpoint {path.name}: {reason}")
    if found.path is None:
        return 0
    differ = checkpoint.model_differences(found.path, t.spec.model)
    if differ:  # Megatron would fail on the first tensor of another shape, and every restart again
        raise UserError(f"the checkpoint {found.path} is of another model than this run's ({'; '.join(differ)})",
                        "give model: the shape the checkpoints were saved with, or a checkpoint folder of its own "
                        "(checkpoint.dir) to start afresh")
    _materialise_optimizer_state(t.optimizer)
    mcore.apply()
    state = t.sharded_state(loading=True)
    loaded = checkpoint.load(found.path, sharded_state=state)
    checkpoint.load_model(t.model.module, loaded["model"])
    t.optimizer.load_state_dict(loaded["optimizer"])
    if t.spec.train.fused_kernels:
        fallbacks.use_fused_adamw(t.optimizer)  # the load restores the saved groups' flags
    t.scheduler.load_state_dict(loaded["scheduler"])
    saved = checkpoint.read_manifest(found.path)["layout"]
    logger.event("resumed", step=int(loaded["step"]), skipped=len(found.skipped))
    logger.info(f"resumed from {found.path.name} (step {loaded['step']}, saved as "
                f"tp{saved['tp']}-pp{saved['pp']}-dp{saved['dp']}, now {t.layout.describe()})")
    return int(loaded["step"])


def process_started() -> float:
    """When this process started (its import of torch and Megatron counts as start-up): for a worker forked
    warm, when the forkserver that imported them did."""
    import os

    import psutil

    forked = os.environ.get("LLMOPS_PROCESS_STARTED")  # llmops_model.warm.STARTED_ENV
    return float(forked) if forked else psutil.Process().create_time()


def _materialise_optimizer_state(optimizer) -> None:
    """Create the optimizer state that torch's AdamW otherwise creates on its first step.

    Megatron's distributed optimizer describes its checkpoint from that state,
    so it must exist before a load; Megatron's own helper for this is private.
    """
    from megatron.core.optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer) and not opt.optimizer.state:
            opt._init_optimizer_states_with_dummy_values()


def start_from_hf(t: Trainer, ref: str, *, logger: StepLogger) -> None:
    """This rank's slices of a transformers checkpoint (`hf:DIR`) as the starting weights; a fresh optimizer."""
    from llmops.spec import hf
    from llmops_model.hf import weights

    folder = Path(hf.folder_of(ref))
    weights.load_hf(t.model.module, folder, t.spec)
    t.optimizer.reload_model_params()  # mixed-precision optimizers keep fp32 copies of the weights
    logger.info(f"starting weights from {ref} (a transformers checkpoint, loaded as {t.layout.describe()})")


def pretrain(spec: RunSpec, *, run_dir: Path, layout: Layout, device: torch.device, restart: int) -> int:
    """Train to `spec.train.steps`, resuming and checkpointing; returns the process exit code."""
    ckpt_root = Path(spec.checkpoint.dir) if spec.checkpoint.dir else run_dir / "checkpoints"
    heartbeat.beat(0, "start")  # the launcher's watchdog: each part of the start-up, as it begins (heartbeat.STARTUP)
    with StepLogger(spec, run_dir, enabled=layout.is_logger, world_size=layout.world, restart=restart) as logger:
        logger.event("start", process_started=process_started())
        flag = PreemptionFlag().install()
        heartbeat.beat(0, "build")
        checkpoint.claim(ckpt_root, run=run_dir.name, stage="pretrain")
        t = build(spec, layout=layout, device=device, ckpt_root=ckpt_root)
        n_params = sum(p.numel() for p in t.model.parameters())
        logger.info(f"model {spec.model.preset or 'custom'}: {spec.model.num_layers} layers, hidden "
                    f"{spec.model.hidden_size}; {n_params:,} parameters in this process's shard; "
                    f"layout {layout.describe()}")
        heartbeat.beat(0, "load")
        step = resume(t, logger=logger) if spec.checkpoint.resume else 0
        if step == 0 and spec.model.init_from is not None:
            start_from_hf(t, spec.model.init_from, logger=logger)
        heartbeat.beat(step, "data")
        source = data.build_source(spec, cache_dir=str(run_dir / "data-cache"))
        stream = data.batches(source, spec=spec, layout=layout, start_step=step, device=device)
        held_out = HeldOutLoss(spec, layout=layout, device=device, cache_dir=str(run_dir / "data-cache"), logger=logger)

        queue = StepQueue(logger, steps=spec.train.steps, log_interval=spec.train.log_interval)

        def advance(step: int) -> None:
            graph = t.step_graph
            uncaptured = graph is not None and graph.graph is None
            if uncaptured:
                queue.read()  # a capture synchronises the device: read the warm-up steps before it, not after
            began = queue.begin(device)
            values = train_step(t, stream)
            # The previous step is read only now that this one is queued behind it: the GPU never waits for the host.
            queue.read()
            if uncaptured and graph.graph is not None:
                logger.event("cuda_graph", step=step, capture=graph.capture_seconds)
                logger.info(f"step {step}: forward and backward captured as a CUDA graph in "
                            f"{graph.capture_seconds:.1f}s; later steps replay it")
            queue.add(step, values, lr=t.scheduler.get_lr(t.optimizer.param_groups[0]), began=began)
            if not values.deferred:  # on the CPU the step has run by now: log it at once
                queue.read()
            if held_out.due(step):  # before the step's checkpoint: a restart from it never loses an evaluation
                queue.read()  # the step's line comes first
                held_out.measure(t.model, step=step, logger=logger, forward=partial(forward_backward, t))

        step, code = run_steps(t, step=step, logger=logger, flag=flag, advance=advance, settle=queue.read)
        return finish(t, code=code, step=step, run_dir=run_dir, logger=logger, flag=flag)


def run_steps(t: Trainer, *, step: int, logger: StepLogger, flag: PreemptionFlag,
              advance: Callable[[int], None], settle: Callable[[], None] = lambda: None) -> tuple[int, int]:
    """Run `advance(n)` (train and log step n) up to train.steps, checkpointing on the interval, at the end
    and after a preemption notice; returns (the last step, the exit code).

    `settle()` logs what `advance` left queued; it runs before each save and at the end, so that a step's
    line comes before its checkpoint's."""
    spec = t.spec
    last_saved = step
    code = EXIT_OK
    # A step replayed from a CUDA graph does not call back into Python: nothing to time, nothing to gather.
    watch = stragglers.Watch(t.clock, device=t.device, logger=logger) if t.step_graph is None else None
    while step < spec.train.steps:
        step += 1
        t.clock.start()
        advance(step)
        if watch is not None:
            watch.after(step)
        finalize_saves(t, logger=logger, blocking=False)
        preempted = flag.agreed(t.device)
        heartbeat.beat(step, "step")  # the launcher's watchdog: this rank got through step `step`
        if step % spec.checkpoint.interval == 0 or step == spec.train.steps or preempted:
            settle()
            heartbeat.beat(step, "checkpoint")
            # The last save before exiting is synchronous: nothing may be left half-written.
            save_checkpoint(t, step, logger=logger, final=preempted or step == spec.train.steps)
            heartbeat.beat(step, "step")
            last_saved = step
        if preempted:
            logger.info(f"preemption signal {flag.signal or 'on another rank'}: checkpoint at step {step} "
                        f"saved, exiting with {EXIT_REQUEUE} to be requeued")
            code = EXIT_REQUEUE
            break
    settle()
    if code == EXIT_OK and last_saved != step:
        save_checkpoint(t, step, logger=logger, final=True)
    return step, code


def finish(t: Trainer, *, code: int, step: int, run_dir: Path, logger: StepLogger, flag: PreemptionFlag) -> int:
    """Close the checkpoint queue, leave last_exit.json for the launcher; returns the exit code."""
    if t.async_queue is not None:
        t.async_queue.close()
    logger.event("exit", code=code, step=step)
    if t.layout.is_logger:
        (run_dir / "last_exit.json").write_text(json.dumps({"code": code, "step": step, "time": time.time()}))
    logger.close()
    flag.uninstall()
    heartbeat.beat(step, heartbeat.DONE, code=code)  # what is left (teardown, samples) is not training
    return code
