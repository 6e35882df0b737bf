"""What the shards of a fan-out stage (data preparation) left in the run directory, for `llmops status`.

Each shard leaves a `.done` or `.failed` marker in ``slurm/<stage>.shards/``
(:mod:`llmops.backends.slurm.fanout`). A shard killed outright (SIGKILL, the
out-of-memory killer, a lost node) leaves neither, and its own log may be
empty, as it died before writing: the evidence is in submitit's log of its
task, ``slurm/submitit/<array>_<task>/<array>_<task>_0_log.out`` (the `srun:
error: n2: task 0: Killed` line), which is where :func:`read_shards` points.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmops.backends.slurm.status import read_text

_ENDED = re.compile(r"killed|terminated|cancelled|oom", re.IGNORECASE)


@dataclass
class Shards:
    done: list[str] = field(default_factory=list)
    expected: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(shard, reason) of the shards that recorded their failure."""
    unfinished: list[tuple[str, str]] = field(default_factory=list)
    """(shard, evidence) of the first phase's shards that left no marker at all."""
    restarts: int = 0
    """The most times a shard was requeued (preemption, node failure), from its logs' names."""


def read_shards(run_path: Path, stage: str) -> Shards:
    folder = run_path / "slurm" / f"{stage}.shards"
    try:
        phases = json.loads((run_path / "slurm" / f"{stage}.plan.json").read_text())["phases"]
        plan = [(p["name"], int(p["num_shards"]), str(p["job_id"])) for p in phases]
    except (OSError, ValueError, KeyError, TypeError):
        plan = []
    done = sorted(p.stem for p in folder.glob("*.done"))
    failures = [(p.stem, read_text(p).strip()) for p in sorted(folder.glob("*.failed")) if p.stem not in done]
    restarts = [int(m.group(1)) for p in (run_path / "logs").glob(f"{stage}.*.restart-*.log")
                if (m := re.search(r"\.restart-(\d+)\.log$", p.name))]
    return Shards(done=done, expected=sum(n for _, n, _ in plan), failures=failures,
                  unfinished=_unfinished(run_path, plan, set(done) | {f for f, _ in failures}),
                  restarts=max(restarts, default=0))


def submitit_log(run_path: Path, job_id: str, shard: int, num_shards: int) -> Path:
    """submitit's log of one task: its folder is named by the array task (`<array>_<task>`), or the job."""
    task = f"{job_id}_{shard}" if num_shards > 1 else job_id
    return run_path / "slurm" / "submitit" / task / f"{task}_0_log.out"


def task_log(run_path: Path, stage: str, task: str) -> Path | None:
    """submitit's log of the task `<phase>-<shard>` of the current plan; None where the plan does not name it."""
    phase, _, shard = task.rpartition("-")
    try:
        for p in json.loads((run_path / "slurm" / f"{stage}.plan.json").read_text())["phases"]:
            if p["name"] == phase and shard.isdigit():
                return submitit_log(run_path, str(p["job_id"]), int(shard), int(p["num_shards"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _unfinished(run_path: Path, plan: list[tuple[str, int, str]], marked: set[str]) -> list[tuple[str, str]]:
    """The shards without a marker of the first phase that has any: the phases after it never ran."""
    for phase, n, job_id in plan:
        missing = [i for i in range(n) if f"{phase}-{i:05d}" not in marked]
        if missing:
            return [(f"{phase}-{i:05d}", _evidence(run_path, submitit_log(run_path, job_id, i, n))) for i in missing]
    return []


def _evidence(run_path: Path, log: Path) -> str:
    """The line of submitit's log that tells how the task ended (srun's error before its "Force Terminated"
    that follows it), and where the log is."""
    where = log.relative_to(run_path)
    if not log.exists():
        return f"submitit left no log at {where}"
    lines = [line.strip() for line in read_text(log).splitlines()]
    errors = [line for line in lines if "error" in line.lower()] or [line for line in lines if _ENDED.search(line)]
    return f"{errors[-1]}; see {where}" if errors else f"see {where}"
