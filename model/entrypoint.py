"""The process every backend launches: ``python -m llmops_model.entrypoint RUN_DIR``.

Reads the resolved spec that the control plane wrote into the run directory
(never re-resolving it), joins the job's process group and runs one stage:
``$LLMOPS_STAGE`` (pretrain, or an align stage's name) when the backend
sets it, else the spec's first training stage. Exit codes: 0 done, 75 checkpointed after a
preemption notice (requeue me), 2 bad input, 1 failed.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path

from llmops import procs
from llmops.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, UserError
from llmops.runs.rundir import RunDir

_PREPARED = False


def prepare(spec) -> None:
    """Set up this process for `spec`'s workers and import what they run (once per process: a warm start,
    llmops_model.warm, does it in the process the workers are forked from)."""
    global _PREPARED
    if _PREPARED:
        return
    _PREPARED = True
    from llmops_model.compat import mcore

    mcore.quiet_known_warnings()
    tracking = getattr(spec, "tracking", None)
    if tracking is None or getattr(tracking, "wandb", None) is None:
        mcore.hide_wandb()
    mcore.import_deferring_compiles()
    if os.environ.get("LLMOPS_LOG_LEVEL"):  # e.g. DEBUG: Megatron's own timings (checkpoint staging, writes)
        import logging

        logging.basicConfig(level=os.environ["LLMOPS_LOG_LEVEL"].upper(),
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from llmops_model import gpt, parallel  # noqa: F401
    from llmops_model.fast import layers  # noqa: F401 (gpt.layer_spec's: it imports TorchDynamo, 0.4 s)
    from llmops_model.train import loop  # noqa: F401

    if (os.environ.get("LLMOPS_STAGE") or spec.training_stages[0]) != "pretrain":
        from llmops_model.align import stage  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m llmops_model.entrypoint RUN_DIR", file=sys.stderr)
        return EXIT_BAD_INPUT
    # A launcher that ends leaves no worker behind: killed (its torchrun agent, or the forkserver it forks from),
    # its workers would train on beside the attempt that replaces it, writing the same checkpoints.
    procs.die_with_parent(signal.SIGKILL)
    run = RunDir(Path(argv[0]))
    try:
        spec = run.read_spec()
    except UserError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_BAD_INPUT

    prepare(spec)
    from llmops_model import parallel
    from llmops_model.train import heartbeat, loop

    heartbeat.install()  # stacks on SIGUSR2, for the launcher's watchdog

    restart = int(os.environ.get("LLMOPS_RESTART", "0"))
    stage = os.environ.get("LLMOPS_STAGE") or spec.training_stages[0]
    if stage not in spec.training_stages:
        print(f"error: LLMOPS_STAGE={stage!r} is not a training stage of this run "
              f"({', '.join(spec.training_stages)})", file=sys.stderr)
        return EXIT_BAD_INPUT
    run_stage = loop.pretrain
    try:
        if stage != "pretrain":
            from llmops_model.align import stage as align

            spec, run_stage = align.stage_spec(spec, stage, run_dir=run.path), align.align
        layout, device = parallel.setup(spec)
        code = run_stage(spec, run_dir=run.path, layout=layout, device=device, restart=restart)
    except UserError as exc:  # every rank meets the same problem (data, starting checkpoint, a full disk)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {exc.render()}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        # A rank that fails must not leave the others waiting in a collective forever:
        # exiting non-zero makes torchrun tear the whole group down.
        return EXIT_FAILED
    parallel.teardown()
    if code == EXIT_OK and int(os.environ.get("RANK", "0")) == 0:  # the stage is done: a sample of its model
        from llmops_model.hf import samples

        samples.write(run, stage, info=lambda line: print(f"[llmops] {line}", flush=True))
    return code


if __name__ == "__main__":
    sys.exit(main())
