"""Alignment step and evaluation lines: the pre-training step line, plus the method's own figures.

::

    [step 12/40] loss=0.512345 lr=1.000e-04 grad_norm=0.8731 tok/s=10234 time=0.121s acc=0.875 margin=1.2034
    [eval 40/40] loss=0.498811 acc=0.812 margin=1.1021 prefers=0.812 ref_prefers=0.438

Step rows go to the stage's ``metrics.jsonl`` and ``progress.json`` as in pre-training
(same keys, so ``llmops status`` and the backends read them unchanged, plus
the extra figures); evaluation rows go to ``eval.jsonl``.
"""

from __future__ import annotations

import time
from pathlib import Path

from llmops.spec.run import RunSpec
from llmops_model.train.metrics import StepLogger

# Short names for the step line; metrics.jsonl keeps the full ones.
_SHORT = {"accuracy": "acc", "margin": "margin", "chosen_reward": "chosen", "rejected_reward": "rejected",
          "policy_prefers": "prefers", "reference_prefers": "ref_prefers"}


class AlignLogger(StepLogger):
    def __init__(self, spec: RunSpec, run_dir: Path, *, enabled: bool, world_size: int, restart: int, rows: int):
        (a,) = spec.align  # the stage's own view (llmops_model.align.stage.stage_spec)
        super().__init__(spec, run_dir, enabled=enabled, world_size=world_size, restart=restart, stage=a.stage)
        self.tokens_per_step *= rows  # DPO runs two sequences per pair
        self.method = a.method
        self.eval_path = self.folder / "eval.jsonl"

    def log_step(self, *, step: int, metrics: dict[str, float], lr: float, grad_norm: float | None,
                 step_time: float) -> None:
        if not self.enabled:
            return
        tokens_per_s = self.tokens_per_step / max(step_time, 1e-9)
        row = {"step": step, "steps": self.spec.train.steps, **metrics, "lr": lr, "grad_norm": grad_norm,
               "tokens_per_s": tokens_per_s, "tokens": step * self.tokens_per_step, "step_time": step_time,
               "stage": self.stage, "method": self.method,
               "restart": self.restart, "time": time.time()}
        gn = "nan" if grad_norm is None else f"{grad_norm:.4f}"
        line = (f"[step {step}/{self.spec.train.steps}] loss={metrics['loss']:.6f} lr={lr:.3e} grad_norm={gn} "
                f"tok/s={tokens_per_s:.0f} time={step_time:.3f}s{_extras(metrics, ('accuracy', 'margin'))}")
        print(line, flush=True)
        self.write_row(row)
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, float) and key not in ("time", "step_time"):
                    self.tb.add_scalar(f"{self.method}/{key}", value, step)

    def log_eval(self, *, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.write_eval(step, metrics, fields={"method": self.method}, tb_key=f"{self.method}/valid_loss",
                        line=f"loss={metrics['loss']:.6f}"
                        f"{_extras(metrics, ('accuracy', 'margin', 'policy_prefers', 'reference_prefers'))}")


def _extras(metrics: dict[str, float], keys: tuple[str, ...]) -> str:
    return "".join(f" {_SHORT[k]}={metrics[k]:.4f}" for k in keys if k in metrics)
