"""Step lines, the metrics log and TensorBoard, written by the one rank that sees the loss.

The step line is a stable, greppable format that backends and users parse::

    [step 12/40] loss=5.321046 lr=2.910e-04 grad_norm=0.8731 tok/s=10234 time=0.121s mfu=41.2%

``stages/<stage>/metrics.jsonl`` in the run directory holds the same
figures at full precision, one JSON object per logged step; a resumed run
appends to it, so a step that was re-run after a crash appears twice and the
later row wins. ``stages/<stage>/progress.json`` holds the latest row, for
``llmops status``. Held-out evaluations print an ``[eval ...]`` line and go to
``stages/<stage>/eval.jsonl``, appended the same way::

    [eval 40/40] loss=5.298811 tokens=8192 time=0.412s

With ``tracking:`` in the spec, the rows and the evaluations also go to MLflow
and/or W&B (:mod:`llmops_model.train.tracking`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from llmops.errors import EXIT_BAD_INPUT, EXIT_FAILED, UserError
from llmops.runs.rundir import RunDir
from llmops.spec.run import RunSpec
from llmops_model.train import tracking

# Dense bf16 peak of the accelerators we know, FLOP/s. MFU is reported only for these.
_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12}


def layer_weights(m) -> int:
    """The weights one transformer layer multiplies by (a resolved model spec): the query and output
    projections, the key/value projections of the query groups, and the MLP (three matrices with SwiGLU)."""
    h, kv = m.hidden_size, m.hidden_size * (m.num_query_groups or m.num_attention_heads) // m.num_attention_heads
    return 2 * h * h + 2 * h * kv + (3 if m.activation == "swiglu" else 2) * h * m.ffn_hidden_size


def flops_per_token(spec: RunSpec, *, causal: bool = False) -> float:
    """Training FLOPs per token from the real shapes: 6*(L*layer_weights + V*h) + 12*L*h*s (attention scores
    and values; halved when causal). For the GPT-style 4x MLP that is the familiar 6*(12*L*h^2 + V*h) + 12*L*h*s."""
    m = spec.model
    L, h, s, V = m.num_layers, m.hidden_size, m.seq_length, m.padded_vocab_size
    attention = 12 * L * h * s
    return 6 * (L * layer_weights(m) + V * h) + (attention / 2 if causal else attention)


def peak_flops() -> float | None:
    """Per-device bf16 peak, when this is a GPU we know."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in _PEAK_BF16.items() if k in name), None)


class Readout:
    """Scalars of a step, copied to the host behind the step's own work so that reading them does not stall it.

    ``tensor.item()`` waits for everything queued on the stream, so a loop
    that reads each step's loss stalls the GPU at every step while the host
    launches the next one. A readout copies the values into pinned host
    memory on the stream and records an event; :meth:`get` waits for that
    event only. Read a step's values after the next step is queued and the
    GPU never waits for the host. On the CPU the values are read at once.
    """

    def __init__(self, **values: torch.Tensor | float | None):
        self.names = list(values)
        self.none = {k for k, v in values.items() if v is None}
        tensors = [v for k, v in values.items() if torch.is_tensor(v)]
        self.plain = {k: float(v) for k, v in values.items() if v is not None and not torch.is_tensor(v)}
        self.event = None
        self.host = None
        if tensors:
            stacked = torch.stack([t.detach().reshape(()).float() for t in tensors])
            if stacked.is_cuda:
                self.host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
                self.host.copy_(stacked, non_blocking=True)
                self.event = torch.cuda.Event()
                self.event.record()
            else:
                self.host = stacked
        self._values: dict[str, float | None] | None = None

    @property
    def deferred(self) -> bool:
        """Whether the values are still on their way from the GPU (on the CPU they were read at once)."""
        return self.event is not None

    def ready(self) -> bool:
        """Whether :meth:`get` would return without waiting."""
        return self.event is None or self.event.query()

    def get(self) -> dict[str, float | None]:
        """The values as floats (None for those given as None); waits until the GPU has computed them."""
        if self._values is None:
            if self.event is not None:
                self.event.synchronize()
            read = iter(self.host.tolist()) if self.host is not None else iter(())
            self._values = {k: None if k in self.none else self.plain[k] if k in self.plain else next(read)
                            for k in self.names}
        return self._values


class StepQueue:
    """Training steps whose values are still on the GPU, logged in order once read.

    A step's time runs from the end of the step before it or, if later, from
    when it was queued (a checkpoint save in between is not counted), to its
    end. On a GPU both ends are events on the stream, timed by the GPU
    itself: when the host reads a step late, or early (before a save), its
    time does not change. On the CPU they are host times.
    """

    def __init__(self, logger: StepLogger, *, steps: int, log_interval: int, clock=time.perf_counter):
        self.logger, self.steps, self.log_interval, self.clock = logger, steps, log_interval, clock
        self.queued: list[tuple[int, Readout, float, float | torch.cuda.Event, torch.cuda.Event | None]] = []
        self.last_done = float("-inf")

    def begin(self, device: torch.device) -> float | torch.cuda.Event:
        """Mark a step's start (call before queueing its work); pass the mark to :meth:`add`."""
        if device.type == "cuda":
            return self._mark()  # the GPU passes it when the work before it is done, or when it is queued if later
        return self.clock()

    @staticmethod
    def _mark() -> torch.cuda.Event:
        mark = torch.cuda.Event(enable_timing=True)
        mark.record()
        return mark

    def add(self, step: int, values: Readout, *, lr: float, began: float | torch.cuda.Event) -> None:
        """Queue a step whose work (and `values`) have just been queued, started at `began` (:meth:`begin`)."""
        end = self._mark() if isinstance(began, torch.cuda.Event) else None
        self.queued.append((step, values, lr, began, end))

    def read(self) -> None:
        """Wait for the queued steps' values and log those on the interval (and the last step)."""
        for step, values, lr, began, end in self.queued:
            got = values.get()
            done = self.clock()
            if end is not None:
                end.synchronize()
                seconds = began.elapsed_time(end) / 1e3
            else:
                seconds = done - max(began, self.last_done)
            self.last_done = done
            if step % self.log_interval == 0 or step == self.steps:
                loss = got["loss"] if got["loss"] is not None else float("nan")
                self.logger.log(step=step, loss=loss, lr=lr, grad_norm=got["grad_norm"], step_time=seconds)
        self.queued.clear()


class StepLogger:
    """Formats and writes step metrics; a no-op on every rank but the logger rank."""

    def __init__(self, spec: RunSpec, run_dir: Path, *, enabled: bool, world_size: int, restart: int,
                 stage: str = "pretrain"):
        self.spec, self.enabled, self.world_size, self.restart, self.stage = spec, enabled, world_size, restart, stage
        self.run_dir = Path(run_dir)
        self.folder = RunDir(run_dir).stage_dir(stage)
        if enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.folder / "metrics.jsonl"
        self.progress_path = self.folder / "progress.json"
        self.eval_path = self.folder / "eval.jsonl"
        self.tokens_per_step = spec.train.global_batch_size * spec.model.seq_length
        self.flops_per_token = flops_per_token(spec)
        self.peak = peak_flops()
        self.tb = None
        if enabled and spec.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard" / stage))
            except ImportError:  # tensorboard is optional; the step lines and metrics.jsonl remain
                self.tb = None
        self.tracker: tracking.Tracker | None = None
        self.exit_code: int | None = None
        if spec.tracking is not None:
            tracking.require(spec.tracking)  # on every rank: a missing library stops all of them before training
            if enabled:
                self.tracker = tracking.Tracker(spec, run_dir, stage=stage, info=self.info)

    def log(self, *, step: int, loss: float, lr: float, grad_norm: float | None, step_time: float) -> None:
        if not self.enabled:
            return
        tokens_per_s = self.tokens_per_step / max(step_time, 1e-9)
        row: dict[str, Any] = {
            "step": step, "steps": self.spec.train.steps, "loss": loss, "lr": lr,
            "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "step_time": step_time,
            "tokens": step * self.tokens_per_step, "restart": self.restart, "stage": self.stage, "time": time.time(),
        }
        mfu = None
        if self.peak:
            mfu = tokens_per_s * self.flops_per_token / (self.peak * self.world_size)
            row["mfu"] = mfu
        gn = "nan" if grad_norm is None else f"{grad_norm:.4f}"
        line = (f"[step {step}/{self.spec.train.steps}] loss={loss:.6f} lr={lr:.3e} grad_norm={gn} "
                f"tok/s={tokens_per_s:.0f} time={step_time:.3f}s")
        if mfu is not None:
            line += f" mfu={100 * mfu:.1f}%"
        print(line, flush=True)
        self.write_row(row)
        if self.tb is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
                if row.get(key) is not None:
                    self.tb.add_scalar(f"train/{key}", row[key], step)

    def log_eval(self, *, step: int, metrics: dict[str, float]) -> None:
        """A held-out evaluation (loss, loss_tokens, seconds): its [eval] line, a row of eval.jsonl (appended like
        metrics.jsonl: an evaluation run again after a restart appears twice, the later row wins), TensorBoard
        and the trackers."""
        if not self.enabled:
            return
        self.write_eval(step, metrics, line=f"loss={metrics['loss']:.6f} tokens={metrics['loss_tokens']:.0f} "
                        f"time={metrics['seconds']:.3f}s", fields={"stage": self.stage, "restart": self.restart},
                        tb_key="train/valid_loss")

    def write_eval(self, step: int, metrics: dict[str, float], *, line: str, fields: dict[str, Any],
                   tb_key: str) -> None:
        """An evaluation's `[eval step/steps] line`, its eval.jsonl row (with `fields`), trackers and TensorBoard."""
        row = {"step": step, "steps": self.spec.train.steps, **metrics, **fields, "time": time.time()}
        print(f"[eval {step}/{self.spec.train.steps}] {line}", flush=True)
        with open(self.eval_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.track(step, metrics, prefix="eval_")
        if self.tb is not None:
            self.tb.add_scalar(tb_key, metrics["loss"], step)

    def write_row(self, row: dict[str, Any]) -> None:
        """Append a step row to metrics.jsonl, make it the stage's progress.json, hand it to the trackers."""
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        tmp = self.progress_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row))
        os.replace(tmp, self.progress_path)
        self.track(row["step"], row)

    def track(self, step: int, row: dict[str, Any], *, prefix: str = "") -> None:
        """Queue a row's numbers for the trackers as `<stage>/<prefix><name>` (returns at once)."""
        if self.tracker is not None:
            self.tracker.log(step, tracking.metric_values(row, stage=self.stage, prefix=prefix))

    def event(self, kind: str, **fields: Any) -> None:
        """One line of the stage's ``events.jsonl`` (process start, resume, checkpoint save, exit), from
        which the run report tells where the time went."""
        if kind == "exit":  # the process's own record of how it ends: the tracking run's status follows it
            self.exit_code = fields.get("code")
        if self.enabled:
            row = {"event": kind, "time": time.time(), "restart": self.restart, **fields}
            with open(self.folder / "events.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def info(self, message: str) -> None:
        if self.enabled:
            print(f"[llmops] {message}", flush=True)

    def where(self, path: Path | str) -> str:
        """A path as a person reads it in the log: relative to the run directory when it lies inside it."""
        path = Path(path)
        try:
            return str(path.relative_to(self.run_dir))
        except ValueError:
            return str(path)

    def __enter__(self) -> StepLogger:
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        """A stage that ends in an exception still closes its trackers, within their bounded time: the tracking
        run is marked failed (it stayed RUNNING for good), and the steps logged so far and the stage's files are
        sent. The exception goes on."""
        if exc is not None and self.exit_code is None:
            self.exit_code = EXIT_BAD_INPUT if isinstance(exc, UserError) else EXIT_FAILED
        self.close()

    def close(self) -> None:
        """Close TensorBoard; give the trackers their bounded time to send the rest and the stage's files, and
        record how each did as a `tracking` event. Once; later calls do nothing."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.tracker is not None:
            files = [self.metrics_path, self.eval_path]  # the run's report comes at its end (tracking.log_report)
            for outcome in self.tracker.close(files=files, code=self.exit_code):
                self.event("tracking", **outcome)
            self.tracker = None
