"""What data preparation's shards tell `llmops status` and `llmops logs`, and how a shard fails: no cluster."""

from __future__ import annotations

import json
from pathlib import Path

import submitit

from llmops.backends.slurm.backend import _task_logs, refusal
from llmops.backends.slurm.fanout import MAX_TIMEOUT_REQUEUES, _why
from llmops.backends.slurm.shards import read_shards
from llmops.runs.rundir import RunDir
from llmops.spec.load import parse_spec
from llmops_testing import tiny_spec

# submitit's log of tokenize shard 2 after `kill -9` of its Python on the dev cluster; its own log stayed empty.
KILLED_LOG = """\
submitit INFO (2026-12-05 14:11:54,960) - Starting with JobEnvironment(job_id=34_2, hostname=vm, local_rank=0(1))
submitit INFO (2026-12-05 14:11:54,962) - Loading pickle: /runs/prep-kill/slurm/submitit/34_2/34_2_submitted.pkl
srun: error: n2: task 0: Killed
srun: Force Terminated StepId=41.0
"""
PHASES = [("clean", 4, "31"), ("dedup", 1, "32"), ("tokenizer", 1, "33"), ("tokenize", 4, "34"), ("finalize", 1, "35")]


def killed_run(tmp_path: Path) -> Path:
    """A run whose tokenize shard 2 was killed: no marker of it, and finalize never ran."""
    (tmp_path / "slurm" / "prepare.shards").mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    (tmp_path / "slurm" / "prepare.plan.json").write_text(json.dumps(
        {"phases": [{"name": n, "num_shards": k, "job_id": j} for n, k, j in PHASES]}))
    for name, n, _ in PHASES[:4]:
        for i in range(n):
            if (name, i) != ("tokenize", 2):
                (tmp_path / "slurm" / "prepare.shards" / f"{name}-{i:05d}.done").touch()
                (tmp_path / "logs" / f"prepare.{name}-{i:05d}.restart-0.log").write_text(f"[llmops] {name} done\n")
    (tmp_path / "logs" / "prepare.tokenize-00002.restart-0.log").touch()
    (tmp_path / "logs" / "prepare.clean-00001.restart-1.log").write_text("[llmops] clean done\n")  # a requeue
    (tmp_path / "slurm" / "submitit" / "34_2").mkdir(parents=True)
    (tmp_path / "slurm" / "submitit" / "34_2" / "34_2_0_log.out").write_text(KILLED_LOG)
    return tmp_path


def test_a_killed_shard_is_found_with_its_evidence(tmp_path: Path) -> None:
    shards = read_shards(killed_run(tmp_path), "prepare")
    assert (shards.expected, len(shards.done), shards.failures, shards.restarts) == (11, 9, [], 1)
    assert shards.unfinished == [("tokenize-00002", "srun: error: n2: task 0: Killed; see "
                                  "slurm/submitit/34_2/34_2_0_log.out")]


def test_logs_show_submitits_log_in_place_of_an_empty_task_log(tmp_path: Path) -> None:
    """The evidence was only in slurm/submitit/, which `llmops logs` never showed."""
    run = RunDir(killed_run(tmp_path))
    lines = list(_task_logs(run, stage="prepare", follow=False, is_done=lambda: True))
    assert "[tokenize-00002] srun: error: n2: task 0: Killed" in lines
    assert "[clean-00000] [llmops] clean done" in lines


def test_a_timed_out_shard_is_not_requeued_and_says_how_to_fit() -> None:
    """A shard at its time limit was requeued 3 times, each from zero, then failed with submitit's "timed-out
    too many times" and no fix."""
    assert MAX_TIMEOUT_REQUEUES == 0  # submitit still requeues preemptions, whatever this count
    spec = parse_spec({**tiny_spec("t"), "backend": "slurm", "slurm": {"time": "00:01:00"}})
    why = _why(submitit.core.utils.UncompletedJobError("Job not requeued because: timed-out too many times."),
               spec)
    # a resume keeps the run's resolved spec, so the fix is a new submit, which keeps the finished shards
    assert "time limit (1 min)" in why and "larger slurm.time" in why and "llmops submit SPEC --time" in why


def test_a_refused_fanout_keeps_its_own_fix_once() -> None:
    """`Fix:` was printed twice: fanout's, inside the message, then the backend's generic one."""
    stderr = ("sbatch refused the prepare stage's phase clean: sbatch: error: CPU count per node can not be "
              "satisfied\nsbatch: error: Batch job submission failed: Requested node configuration is not "
              "available\nFix: fix the request (partition, account, qos, time) and submit again\n")
    rendered = refusal(stderr).render()
    assert rendered.count("Fix:") == 1 and rendered.endswith("Fix: fix the request (partition, account, qos, time) "
                                                              "and submit again"), rendered
