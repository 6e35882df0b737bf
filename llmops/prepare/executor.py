"""Every phase on this machine: map phases over a pool of worker processes, the others here.

Each map phase forks its pool before its progress thread starts; megatron-core
is imported once, in this process, just before the tokenize phase forks, so
the workers inherit it instead of importing it each. Shards are smaller than
one per worker (four per worker by default) so that a slow shard does not
leave the other cores idle at the end of a phase.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmops.errors import UserError
from llmops.prepare import workers as worker_pool
from llmops.prepare.pipeline import (
    MAP_PHASES,
    PHASES,
    default_workdir,
    ensure_writable,
    refuse_foreign_outputs,
    run_phase,
)
from llmops.prepare.progress import Display, Tracker
from llmops.prepare.workdir import WorkDir, make_plan
from llmops.spec.prepare import PrepareSpec

_COUNTER = None  # the display's shared counter, inherited by forked workers


def run_all(config: PrepareSpec, *, workers: int | None = None, num_shards: int | None = None,
            workdir: str | os.PathLike | None = None, display: Display | None = None) -> dict:
    """Run (or resume) every phase; returns the stats report written to `<output.dir>/stats.json`."""
    global _COUNTER
    workers = workers or config.workers or os.cpu_count() or 1
    work = WorkDir(workdir or default_workdir(config))
    display = display or Display()
    existing = (work.root / "plan.json").exists()
    shards = num_shards or config.num_shards or (None if existing else 4 * workers)
    if not existing:
        ensure_writable(Path(config.output.dir), "prepare.output.dir")
        refuse_foreign_outputs(config)
        ensure_writable(work.root, "the work folder")
    plan = make_plan(config, work, shards)
    if not existing and (skipped := plan.data.get("skipped_files")):
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        display.console.print(f"prepare: skipped {len(skipped)} file(s) of the input (an unknown format, a link "
                              f"out of its folder, a pipe or device; all in stats.json): {shown}", markup=False)
    _COUNTER = display.counter
    for phase in PHASES:
        if work.missing(phase, plan.num_shards if phase in MAP_PHASES else 1):
            _run_here(config, phase, work, plan, workers, display)
        else:
            display.console.print(f"prepare {phase}: done earlier, skipped", markup=False)
    return work.read_marker("finalize", 0, 1)["report"]


def _run_here(config: PrepareSpec, phase: str, work: WorkDir, plan, workers: int, display: Display) -> None:
    """One phase on this machine: a map phase over a pool of `workers` processes, the others in this one."""
    if phase == "tokenize" and config.tokenizer is not None:
        from llmops.prepare.steps.writer import preload

        preload()  # megatron-core takes seconds to import: once here, inherited by the forked workers
    if phase in MAP_PHASES and len(todo := work.missing(phase, plan.num_shards)) < plan.num_shards:
        display.console.print(f"prepare {phase}: {plan.num_shards - len(todo)} of {plan.num_shards} shards done "
                              f"earlier, skipped; running {len(todo)}", markup=False)
    total, unit = _total(phase, work, plan)
    # Fork before the progress thread starts: a forked child gets only the forking thread.
    pool = worker_pool.start(workers) if phase in MAP_PHASES and workers > 1 else None
    try:
        with display.phase(phase, total=total, unit=unit):
            if phase in MAP_PHASES:
                _map(config, phase, plan.num_shards, work, pool)
            else:
                tracker = display.tracker()
                run_phase(config, phase=phase, workdir=work.root, progress=tracker, threads=workers)
                tracker.flush()
    finally:
        if pool is not None:
            worker_pool.stop(pool)


def _map(config: PrepareSpec, phase: str, n: int, work: WorkDir, pool) -> None:
    todo = work.missing(phase, n)
    args = [(config.model_dump_json(), phase, i, n, str(work.root)) for i in todo]
    results = map(_run_shard, args) if pool is None else worker_pool.unordered(pool, _run_shard, args,
                                                                             what=f"prepare {phase}")
    for error in results:
        if error is not None:
            raise UserError(*error)


def _run_shard(args: tuple) -> tuple[str, str | None] | None:
    """One map shard in a worker; a UserError comes back as (message, fix) to be raised again."""
    config_json, phase, shard, n, workdir = args
    tracker = Tracker(_COUNTER)
    try:
        run_phase(PrepareSpec.model_validate_json(config_json), phase=phase, shard=shard, num_shards=n,
                  workdir=workdir, progress=tracker, check_input=False)  # run_all checked it
    except UserError as exc:
        return exc.message, exc.fix
    finally:
        tracker.flush()
    return None


def _total(phase: str, work: WorkDir, plan) -> tuple[float | None, str]:
    """How much work a phase has, for its progress bar."""
    if phase == "clean":
        return float(plan.total_bytes), "bytes"
    if phase == "dedup":
        n = plan.num_shards
        done = [i for i in range(n) if work.is_done("clean", i, n)]
        return float(sum(work.read_marker("clean", i, n)["documents"] for i in done)), "docs"
    if phase == "tokenize" and work.is_done("dedup", 0, 1):
        return float(work.read_marker("dedup", 0, 1)["steps"][0]["bytes_out"]), "bytes"
    return None, "bytes"


def prepare(config: PrepareSpec, *, phase: str | None = None, shard: int = 0, num_shards: int | None = None,
            workers: int | None = None, workdir: str | os.PathLike | None = None,
            display: Display | None = None) -> dict | None:
    """What `llmops prepare` does: every phase here (returns the stats report), or one shard of one phase."""
    display = display or Display()
    if phase is None:
        if shard:
            raise UserError(f"--shard {shard} needs --phase", "name the phase this shard runs, e.g. --phase clean")
        return run_all(config, workers=workers, num_shards=num_shards, workdir=workdir, display=display)
    tracker = display.tracker()
    with display.phase(f"{phase} {shard}", total=None):
        payload = run_phase(config, phase=phase, shard=shard, num_shards=num_shards, workdir=workdir,
                            progress=tracker, threads=workers or config.workers or os.cpu_count() or 1)
        tracker.flush()
    if payload.get("skipped"):
        display.console.print(f"prepare {phase} shard {shard}: done earlier, skipped", markup=False)
    return payload.get("report")
