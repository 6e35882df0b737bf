"""Python-function stages on Slurm through submitit: data preparation, one array task per shard.

``python -m llmops.backends.slurm.fanout RUN_DIR prepare [--dependency afterok:ID]``
is what ``slurm/submit.sh`` runs on the login node for a `prepare:` stage. It
submits each phase of :mod:`llmops.prepare.pipeline` as its own job, waiting
for the phase before (afterok): the map phases (clean, tokenize) as one job
array with a task per shard, the others (dedup, tokenizer, finalize) as a
single task. It prints the job ids, the last one first-class: the next stage
depends on it.

On the nodes every task runs :class:`PrepareShard`: it reads the run
directory's resolved spec, calls ``run_phase`` for its shard, and leaves a
``.done`` or ``.failed`` marker in ``slurm/prepare.shards/`` for
``llmops status``; the finalize task writes ``slurm/prepare.finished``. A task
that is preempted (or whose node fails) is requeued by submitit
(:class:`submitit.helpers.Checkpointable`); the phases skip work whose
completion marker exists, so a rerun only redoes what was cut off. A task
that reaches its time limit is not: a shard cannot checkpoint, so it would
start from zero and time out again; it fails, saying how to make it fit.

submitit is imported here and nowhere else, so ``import llmops`` never loads it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import submitit

from llmops.backends.slurm.spec import SlurmSpec
from llmops.errors import EXIT_BAD_INPUT, UserError
from llmops.runs.rundir import RunDir
from llmops.secrets import FILE as SECRETS_FILE
from llmops.shell import quote
from llmops.spec.run import RunSpec

STAGE = "prepare"
# How many times submitit requeues a task that hit its time limit: none, as a shard has no checkpoint and would
# run from its start again into the same limit (three tries used to cost four time limits, then fail anyway).
# Preemptions are requeued regardless of this count.
MAX_TIMEOUT_REQUEUES = 0


class PrepareShard(submitit.helpers.Checkpointable):
    """One shard of one phase, on a node. Callable, so that submitit can requeue it as it is."""

    def __call__(self, run_dir: str, phase: str, shard: int, num_shards: int, last: bool) -> dict:
        from llmops.prepare.pipeline import run_phase

        run = RunDir(Path(run_dir))
        markers = run.path / "slurm" / f"{STAGE}.shards"
        name = f"{phase}-{shard:05d}"
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        _log_to(run.logs / f"{STAGE}.{name}.restart-{restart}.log")
        spec = None
        try:
            spec = run.read_spec()
            result = run_phase(spec.prepare, phase=phase, shard=shard, num_shards=num_shards,
                               threads=int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
        except Exception as exc:
            why = _why(exc, spec)
            (markers / f"{name}.failed").write_text(why.replace("\n", " ") + "\n")
            raise
        for step in result.get("steps", []):
            print(f"[llmops] {phase} {shard + 1}/{num_shards} {step['name']}: {step['docs_in']} -> "
                  f"{step['docs_out']} documents in {step['seconds']:.1f} s", flush=True)
        print(f"[llmops] {phase} {shard + 1}/{num_shards} done{' (already)' if result.get('skipped') else ''}",
              flush=True)
        (markers / f"{name}.done").touch()
        if last:
            (run.path / "slurm" / f"{STAGE}.finished").touch()
        return result


def _why(exc: Exception, spec: RunSpec | None) -> str:
    """The reason a shard's `.failed` marker gives, with the fix where there is one."""
    if isinstance(exc, UserError):
        return exc.render()
    if isinstance(exc, submitit.core.utils.UncompletedJobError) and "timed-out" in str(exc):
        minutes = _minutes(spec.slurm or SlurmSpec()) if spec else "?"
        # A resume keeps the run's resolved spec, and another shard count meets the work folder's own: a new
        # submit with more time is what fits, and it keeps the shards that finished.
        return (f"hit its time limit ({minutes} min) before it finished; a shard has no checkpoint, so it is not "
                "requeued. Fix: submit the spec again with a larger slurm.time (`llmops submit SPEC --time "
                "MINUTES`): the shards that finished are kept")
    return f"{type(exc).__name__}: {exc}"


def _log_to(path: Path) -> None:
    """Send this process's stdout and stderr (file descriptors, so child processes too) to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def phases(spec: RunSpec, slurm: SlurmSpec) -> list[tuple[str, int]]:
    """(phase, tasks) in order: the map phases get one task per shard, the others one task."""
    from llmops.prepare.pipeline import MAP_PHASES, PHASES

    shards = spec.prepare.num_shards or slurm.prepare_shards
    return [(p, shards if p in MAP_PHASES else 1) for p in PHASES]


def _minutes(slurm: SlurmSpec) -> int:
    """Each task's time limit: slurm.time, else 4 hours."""
    return max(1, (slurm.time_seconds or 4 * 3600) // 60)


def executor(spec: RunSpec, slurm: SlurmSpec, run: RunDir, *, python: str) -> submitit.SlurmExecutor:
    """A submitit executor for preparation tasks: CPU tasks with the run's partition, account and setup."""
    ex = submitit.SlurmExecutor(folder=str(run.path / "slurm" / "submitit" / "%j"),
                                max_num_timeout=MAX_TIMEOUT_REQUEUES, python=python)
    extra: dict = {"kill-on-invalid-dep": "yes"}
    for name in ("account", "qos", "constraint"):
        if getattr(slurm, name):
            extra[name] = getattr(slurm, name)
    setup = list(slurm.setup) + [f"export {k}={quote(v)}" for k, v in sorted(slurm.env.items())]
    if spec.secrets:
        setup.append(f"set -a; . {quote(str(run.path / SECRETS_FILE))}; set +a")
    ex.update_parameters(
        partition=slurm.partition, nodes=1, ntasks_per_node=1, cpus_per_task=slurm.prepare_cpus_per_task,
        time=_minutes(slurm), signal_delay_s=slurm.signal_lead,
        setup=setup, additional_parameters=extra, stderr_to_stdout=True,
    )
    return ex


def submit(run: RunDir, *, dependency: str | None, python: str) -> list[str]:
    """Submit every phase, each after the one before; returns the job ids in order."""
    spec = run.read_spec()
    slurm = spec.slurm or SlurmSpec()
    (run.path / "slurm" / f"{STAGE}.shards").mkdir(parents=True, exist_ok=True)
    plan = phases(spec, slurm)
    ex = executor(spec, slurm, run, python=python)
    ids: list[str] = []
    try:
        for i, (phase, tasks) in enumerate(plan):
            last = i == len(plan) - 1
            ex.update_parameters(job_name=f"{spec.name}.{STAGE}-{phase}",
                                 dependency=f"afterok:{ids[-1]}" if ids else dependency)
            shard = PrepareShard()
            if tasks > 1:
                jobs = ex.map_array(shard, [str(run.path)] * tasks, [phase] * tasks, list(range(tasks)),
                                    [tasks] * tasks, [last] * tasks)
            else:
                jobs = [ex.submit(shard, str(run.path), phase, 0, 1, last)]
            ids.append(jobs[0].job_id.split("_")[0])
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as exc:
        if ids:  # no half-submitted chain of phases
            subprocess.run(["scancel", *ids], check=False)
        raise UserError(f"sbatch refused the {STAGE} stage's phase {phase}: {exc}",
                        "fix the request (partition, account, qos, time) and submit again") from None
    record = {"phases": [{"name": p, "num_shards": n, "job_id": j} for (p, n), j in zip(plan, ids)]}
    (run.path / "slurm" / f"{STAGE}.plan.json").write_text(json.dumps(record, indent=1))
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmops.backends.slurm.fanout",
                                     description="Submit a run's data preparation as Slurm job arrays.")
    parser.add_argument("run_dir")
    parser.add_argument("stage", choices=[STAGE])
    parser.add_argument("--dependency", help="Slurm dependency of the first phase, e.g. afterok:123")
    args = parser.parse_args(argv)
    try:
        ids = submit(RunDir(Path(args.run_dir)), dependency=args.dependency, python=sys.executable)
    except UserError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(" ".join(ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
