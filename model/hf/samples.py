"""The completions of a few fixed prompts at the end of a training stage (`samples:` in the spec).

Run by the training entrypoint on global rank 0 once the stage has succeeded
and its process group is gone: the stage's final checkpoint is exported into
a temporary folder and completed greedily with transformers, exactly as
`llmops generate` would. Rows land in `stages/<stage>/samples.jsonl` and the
report shows them beside the previous stages', so the model's change from
stage to stage is visible. Never fails the stage: a missing transformers, a
run without a tokenizer, a model above ``samples.max_parameters`` (its export
would hold the whole model in one process) or any error is one line in the log.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from llmops.errors import UserError
from llmops.runs.rundir import RunDir, atomic_write
from llmops.spec.run import SAMPLES_DEADLINE_ENV


def write(run: RunDir, stage: str, *, info: Callable[[str], None]) -> Path | None:
    """Complete the spec's sample prompts with `stage`'s final model; the file written, or None (said why)."""
    spec = run.read_spec()
    cfg = spec.samples
    if not cfg.enabled:
        return None
    size = parameters(spec.model)
    if size > cfg.max_parameters:
        info(f"samples: skipped, the model has about {size:,} parameters, more than samples.max_parameters "
             f"({cfg.max_parameters:,}); `llmops generate` samples it")
        return None
    if importlib.util.find_spec("transformers") is None:
        info("samples: skipped, transformers is not installed (pip install 'llmops[hf]')")
        return None
    deadline = float(os.environ.get(SAMPLES_DEADLINE_ENV) or 0)
    timer = threading.Timer(deadline, _out_of_time, args=(deadline, info)) if deadline > 0 else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        return _write(run, stage, cfg, info=info)
    except Exception as exc:  # a sample is a courtesy: the stage has already succeeded
        info(f"samples: skipped, {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return None
    finally:
        if timer is not None:
            timer.cancel()


def _out_of_time(deadline: float, info: Callable[[str], None]) -> None:
    """The samples took longer than the stage allows them: end the process as the stage's success (samples run
    only after one), before something outside kills it and the stage reads as failed. The file is never
    half-written (atomic_write)."""
    info(f"samples: stopped after {deadline:g} s ({SAMPLES_DEADLINE_ENV}: on several Slurm nodes the others leave "
         f"first, and srun would end this one); `llmops generate` samples the model")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def preload(spec) -> None:
    """Import what :func:`write` imports (transformers and the exported architecture's modules), for a warm
    start's forkserver (llmops_model.warm): rank 0 would otherwise import them after the stage's training, for
    about 1.7 s, while the next stage waits."""
    if (not spec.samples.enabled or parameters(spec.model) > spec.samples.max_parameters
            or importlib.util.find_spec("transformers") is None):
        return
    import transformers

    from llmops_model.hf import convert, export, generate  # noqa: F401

    try:
        architecture, _ = convert.architecture(spec.model)
    except UserError:  # no transformers architecture to export to: write says so, later
        return
    for name in ("AutoModelForCausalLM", "AutoTokenizer", "PreTrainedTokenizerFast", architecture):
        getattr(transformers, name)  # transformers imports its modules on first use


def _write(run: RunDir, stage: str, cfg, *, info: Callable[[str], None]) -> Path | None:
    import torch

    from llmops.runs.models import resolve
    from llmops_model.hf.generate import Sampling, opened
    from llmops_model.train import heartbeat

    ck = resolve(str(run.path), runs_root=run.path.parent, stage=stage)
    if ck.tokenizer is None:
        info("samples: skipped, the run has no tokenizer (synthetic data)")
        return None
    started = time.monotonic()
    rows = []
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    heartbeat.beat(ck.step, "samples")  # watched again: a stuck sample must not hold the job
    try:
        with opened(ck, device=device, info=lambda _: None) as gen:
            chat = ck.template is not None and gen.has_chat
            for prompt in cfg.prompts:
                heartbeat.beat(ck.step, "samples")
                ids = gen.encode([{"role": "user", "content": prompt}] if chat else prompt)
                (done,) = gen.complete([ids], Sampling(max_new_tokens=cfg.max_new_tokens))
                rows.append({"stage": stage, "step": ck.step, "prompt": prompt, "chat": chat,
                             "completion": done.text, "tokens": done.tokens, "finish_reason": done.finish_reason})
    finally:
        heartbeat.beat(ck.step, heartbeat.DONE, code=0)  # samples run only after a stage that succeeded
    path = run.stage_dir(stage) / "samples.jsonl"
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    info(f"samples: {len(rows)} completions at step {ck.step} in {time.monotonic() - started:.1f}s "
         f"({path.relative_to(run.path)})")
    return path


def parameters(model) -> int:
    """About how many parameters a resolved model spec has (norms and biases are noise at this scale)."""
    from llmops_model.train.metrics import layer_weights

    embeddings = model.vocab_size * model.hidden_size * (1 if model.tie_embeddings else 2)
    return model.num_layers * layer_weights(model) + embeddings
