"""The Slurm backend against a real cluster: the dev cluster's slurmctld and two slurmd nodes.

Real sbatch, srun, scontrol and squeue; real torch.distributed (gloo) through the launcher, TP=2 x PP=2
over two nodes. Start the cluster with `cluster/slurm/dev-cluster.sh up`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from llmops.runs.report import summarize
from llmops.runs.rundir import RunDir
from llmops_testing import llmops, write_spec
from llmops_testing.slurm import (
    ended_state,
    events,
    job_ids,
    metrics,
    squeue_state,
    status,
    step,
    submit,
    two_node_spec,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.slurm


def test_preemption_resumes_from_the_checkpoint_without_lost_steps(slurm_env, tmp_path: Path, record_property) -> None:
    spec = two_node_spec("tiny-preempt", steps=40, interval=100, max_restarts=3)
    run_dir = submit(write_spec(tmp_path / "spec.yaml", spec), tmp_path / "runs")
    [job] = job_ids(run_dir)

    # 1. The pre-timeout notice, exactly as `--signal=B:USR1@N` delivers it: SIGUSR1 to the batch script.
    wait_for(run_dir, lambda: step(run_dir) >= 6, "step 6")
    notice_at = time.time()
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    first = wait_for(run_dir, lambda: next((r for r in metrics(run_dir) if r["restart"] == 1), None),
                     "a training step after the requeue", timeout=240)
    resume_seconds = first["time"] - notice_at
    record_property("preemption_to_first_resumed_step_s", round(resume_seconds, 1))
    print(f"\npre-timeout notice to first resumed training step: {resume_seconds:.1f} s")

    # 2. An administrator's (or the scheduler's) requeue: SIGTERM to everything, Slurm requeues the job.
    wait_for(run_dir, lambda: any(r["restart"] == 1 and r["step"] >= first["step"] + 4 for r in metrics(run_dir)),
             "four more steps")
    subprocess.run(["scontrol", "requeue", job], check=True)
    final = wait_state(run_dir, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=300)
    assert (final["state"], final["restarts"]) == ("SUCCEEDED", 2), final

    rows = metrics(run_dir)
    by_restart = {r: [row["step"] for row in rows if row["restart"] == r] for r in (0, 1, 2)}
    # Each attempt resumes right after the step the previous one checkpointed on its way out:
    # no step after the checkpoint is lost, none is trained twice.
    for before, after in ((0, 1), (1, 2)):
        last = by_restart[before][-1]
        assert by_restart[after][0] == last + 1, by_restart
        log = (run_dir / "logs" / f"pretrain.restart-{after}.log").read_text()
        assert f"resumed from iter_{last:07d} (step {last}" in log
    assert sorted(by_restart[0] + by_restart[1] + by_restart[2]) == list(range(1, 41))
    kinds = events(run_dir)
    assert "notice signal=USR1" in kinds and "requeue code=75 reason=checkpointed before the time limit" in kinds
    assert any(k.startswith("stopped ") for k in kinds) and kinds[-1] == "finished code=0"
    assert ended_state(job) == "COMPLETED"


def test_cancel_checkpoints_never_requeues_and_resume_continues(slurm_env, tmp_path: Path) -> None:
    spec = two_node_spec("tiny-cancel", steps=100, interval=1000)
    run_dir = submit(write_spec(tmp_path / "spec.yaml", spec), tmp_path / "runs")
    [job] = job_ids(run_dir)
    wait_for(run_dir, lambda: step(run_dir) >= 3, "step 3")

    res = llmops("cancel", run_dir.name, "--runs-dir", str(tmp_path / "runs"), timeout=180)
    assert res.returncode == 0 and "CANCELLED" in res.stderr, res.stderr
    stopped_at = step(run_dir)
    assert (run_dir / "checkpoints" / f"iter_{stopped_at:07d}").is_dir(), "cancel saves a checkpoint first"
    assert wait_state(run_dir, {"CANCELLED"}, timeout=30)["state"] == "CANCELLED"
    assert ended_state(job) in ("COMPLETED", "FAILED", "CANCELLED"), "ended, not back in the queue"
    assert status(run_dir)["state"] == "CANCELLED" and step(run_dir) == stopped_at
    assert not any(e.startswith("requeue") for e in events(run_dir))

    # `llmops resume` submits again; training continues after the cancel's checkpoint, in a new log.
    res = llmops("resume", run_dir.name, "--detach", "--runs-dir", str(tmp_path / "runs"), timeout=120)
    assert res.returncode == 0, res.stderr
    assert wait_state(run_dir, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=240)["state"] == "SUCCEEDED"
    assert job_ids(run_dir) != [job]
    resumed = [r["step"] for r in metrics(run_dir) if r["restart"] == 1]
    assert resumed[0] == stopped_at + 1 and resumed[-1] == 100
    assert f"resumed from iter_{stopped_at:07d}" in (run_dir / "logs" / "pretrain.restart-1.log").read_text()


def test_crash_is_retried_then_the_run_fails(slurm_env, tmp_path: Path) -> None:
    spec = two_node_spec("tiny-crash", steps=2000, interval=2, max_restarts=1)
    run_dir = submit(write_spec(tmp_path / "spec.yaml", spec), tmp_path / "runs")

    def kill_a_worker(restart: int) -> None:
        wait_for(run_dir, lambda: any(r["restart"] == restart and r["step"] >= 3 for r in metrics(run_dir)),
                 f"training in attempt {restart}", timeout=240)
        # A worker dies as from a segfault or the OOM killer: no checkpoint, no exit 75.
        subprocess.run(["pkill", "-KILL", "-f", f"llmops_model.entrypoint {run_dir}"], check=True)

    kill_a_worker(0)
    kill_a_worker(1)
    final = wait_state(run_dir, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=120)
    assert final["state"] == "FAILED" and "gave up after 1 restart(s)" in final["message"], final
    assert "crashed with exit code" in final["message"]
    assert {r["restart"] for r in metrics(run_dir)} == {0, 1}
    # A crashed step can also deliver a signal to the batch script ("notice"); only the
    # start/requeue/failed sequence matters here: one retry, then the run gives up.
    kinds = [e.split()[0] for e in events(run_dir)]
    assert [k for k in kinds if k != "notice"] == ["start", "requeue", "start", "failed"], kinds


def test_impossible_requests_are_refused_before_anything_is_queued(slurm_env, tmp_path: Path) -> None:
    before = subprocess.run(["squeue", "-h", "-o", "%i"], check=False, capture_output=True, text=True).stdout
    cases = [  # (what the spec asks, what the message must name); the dev-cluster profile is left out:
        # these are the cluster's own answers (sinfo), not the profile's.
        ({"slurm": {"partition": "gpu-h100"}}, ["slurm.partition = 'gpu-h100'", "by sinfo: debug"]),
        ({"resources": {"nodes": 2, "gpus_per_node": 4}, "parallelism": {"tensor": 4}},
         ["resources.gpus_per_node = 4", "(0 GPU(s), by sinfo)", "choose a partition with GPU nodes"]),
        ({"resources": {"nodes": 3, "cpu": True, "processes_per_node": 2}, "parallelism": {"tensor": 2}},
         ["resources.nodes = 3", "more than partition debug holds (2, by sinfo)"]),
    ]
    for i, (change, words) in enumerate(cases):
        spec = {**two_node_spec(f"tiny-refused-{i}", steps=4), **change, "profile": None}
        spec["train"] = {**spec["train"], "global_batch_size": 24}
        res = llmops("submit", str(write_spec(tmp_path / f"spec{i}.yaml", spec)),
                     "--runs-dir", str(tmp_path / "runs"), timeout=60)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        for w in words:
            assert w in res.stderr, res.stderr
    after = subprocess.run(["squeue", "-h", "-o", "%i"], check=False, capture_output=True, text=True).stdout
    assert after == before, "nothing may reach the queue"
    assert not list((tmp_path / "runs").glob("*")), "a refused submission leaves no run behind"


def chain_spec(name: str, tmp_path: Path, inputs: dict) -> dict:
    """Three stages: preparation of `inputs` in 2 shards, 6 pretraining steps on it, 4 SFT steps after."""
    spec = two_node_spec(name, steps=6)
    spec["model"]["seq_length"] = 128  # room for a question and its answer
    spec["prepare"] = {"input": inputs, "filters": {"min_words": 20}, "tokenizer": {"vocab_size": 1024},
                       "output": {"dir": str(tmp_path / "data")}}
    spec["checkpoint"] = {"dir": str(tmp_path / "checkpoints" / "pretrain"), "interval": 100}
    spec["align"] = {"method": "sft", "data": {"builtin": "python-docstrings", "builtin_examples": 256},
                     "checkpoint_dir": str(tmp_path / "checkpoints" / "sft"), "steps": 4, "global_batch_size": 8,
                     "micro_batch_size": 2, "warmup_steps": 1}
    spec["slurm"] = {"prepare_shards": 2, "prepare_cpus_per_task": 1}
    return spec


def test_chain_prepare_fans_out_through_submitit_then_pretrain_then_sft(slurm_env, tmp_path: Path) -> None:
    spec = chain_spec("tiny-chain", tmp_path, {"builtin": "python-docstrings"})
    run_dir = submit(write_spec(tmp_path / "spec.yaml", spec), tmp_path / "runs")
    stages = json.loads((run_dir / "slurm" / "jobs.json").read_text())["stages"]
    assert list(stages) == ["prepare", "pretrain", "sft"] and len(stages["prepare"]) == 5  # one job per phase

    final = wait_state(run_dir, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=300)
    assert final["state"] == "SUCCEEDED", final
    # The map phases ran as arrays, one task per shard; the others as one task. Each left its marker.
    shards = run_dir / "slurm" / "prepare.shards"
    assert sorted(p.stem for p in shards.glob("*.done")) == [
        "clean-00000", "clean-00001", "dedup-00000", "finalize-00000", "tokenize-00000", "tokenize-00001",
        "tokenizer-00000"]
    for phase, job in zip(("clean", "tokenize"), (stages["prepare"][0], stages["prepare"][3])):
        tasks = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%i %T"], check=False,
                               capture_output=True, text=True).stdout.split("\n")
        assert sorted(t for t in tasks if t) == [f"{job}_0 COMPLETED", f"{job}_1 COMPLETED"], (phase, tasks)
    # afterok: each stage started only once the one before had finished, and used its output.
    lines = [line.split() for line in (run_dir / "slurm" / "events.log").read_text().splitlines()]
    started = {e[1]: float(e[0]) for e in lines if e[4] == "start"}
    finished = {e[1]: float(e[0]) for e in lines if e[4] == "finished"}
    assert started["pretrain"] >= int((shards / "finalize-00000.done").stat().st_mtime)
    assert started["sft"] >= finished["pretrain"]
    assert (tmp_path / "data" / "corpus_text_document.bin").stat().st_size > 100_000
    assert 6.0 < metrics(run_dir)[0]["loss"] < 7.5, "starts near ln(1024): the tokens come from the prepared vocabulary"
    align_log = (run_dir / "logs" / "sft.restart-0.log").read_text()
    assert f"starting weights from {tmp_path}/checkpoints/pretrain/iter_0000006" in align_log
    assert "[step 4/4]" in align_log
    status = json.loads((run_dir / "status.json").read_text())
    assert {s: r["state"] for s, r in status["stages"].items()} == dict.fromkeys(("prepare", "pretrain", "sft"),
                                                                                "SUCCEEDED")
    res = llmops("logs", run_dir.name, "--stage", "prepare", "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 0
    assert {line.split("]")[0] + "]" for line in res.stdout.splitlines()} >= {"[clean-00000]", "[finalize-00000]"}


def test_a_failed_stage_cancels_the_rest_of_the_chain(slurm_env, tmp_path: Path) -> None:
    spec = chain_spec("tiny-chain-fails", tmp_path, {"paths": [str(tmp_path / "missing" / "*.jsonl")]})
    run_dir = submit(write_spec(tmp_path / "spec.yaml", spec), tmp_path / "runs")
    stages = json.loads((run_dir / "slurm" / "jobs.json").read_text())["stages"]

    final = wait_state(run_dir, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=180)
    assert final["state"] == "FAILED", final
    assert final["message"].startswith("prepare: task clean-0000") and "matches no file" in final["message"]
    later = [*stages["prepare"][1:], *stages["pretrain"], *stages["sft"]]
    wait_for(run_dir, lambda: all(squeue_state(j) == "CANCELLED" for j in later), "the rest cancelled", timeout=60)
    assert not list((run_dir / "logs").glob("pretrain.*")) and not list((run_dir / "logs").glob("sft.*"))


def test_node_loss_requeues_and_resumes_from_the_last_checkpoint(slurm_env, tmp_path: Path, record_property) -> None:
    spec = two_node_spec("tiny-node-loss", steps=40, interval=5, max_restarts=3)
    run_dir = submit(write_spec(tmp_path / "spec.yaml", spec), tmp_path / "runs")
    [job] = job_ids(run_dir)
    wait_for(run_dir, lambda: step(run_dir) >= 8, "step 8")
    node = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], check=True, capture_output=True,
                          text=True).stdout.strip()
    victim = subprocess.run(["scontrol", "show", "hostnames", node], check=True, capture_output=True,
                            text=True).stdout.split()[-1]
    lost_at = time.time()
    try:
        # The node dies: no notice, no checkpoint. Slurm fails the job on it and requeues it.
        subprocess.run(["scontrol", "update", f"nodename={victim}", "state=down", "reason=llmops-test"], check=True)
        wait_for(run_dir, lambda: squeue_state(job) in ("PENDING", "REQUEUED", "REQUEUE_FED", "CONFIGURING"),
                 "the job back in the queue", timeout=60)
        requeued_at = time.time()
    finally:
        # A replacement node: the dev cluster has only two, so the one that died comes back (with
        # ReturnToService=2 its slurmd's next registration may already have brought it back).
        subprocess.run(["scontrol", "update", f"nodename={victim}", "state=resume"], check=False,
                       capture_output=True)
    back_at = time.time()
    first = wait_for(run_dir, lambda: next((r for r in metrics(run_dir) if r["restart"] == 1), None),
                     "a training step after the requeue", timeout=240)
    final = wait_state(run_dir, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=300)
    assert final["state"] == "SUCCEEDED", final

    rows = metrics(run_dir)
    before = [r["step"] for r in rows if r["restart"] == 0]
    after = [r["step"] for r in rows if r["restart"] == 1]
    # Slurm sends the job SIGTERM before it takes the node away: the job checkpoints at the step
    # boundary if it can (then nothing is lost), else the interval checkpoint (every 5 steps) is used.
    log = (run_dir / "logs" / "pretrain.restart-1.log").read_text()
    checkpointed = int(log.split("resumed from iter_")[1][:7])
    assert checkpointed >= (max(before) // 5) * 5, (before, checkpointed)
    assert after[0] == checkpointed + 1 and after[-1] == 40, (before, after)
    lost = len([s for s in before if s > checkpointed])
    # Fault to first resumed step, less the time the job waited for a node (scheduler queueing).
    resume_seconds = first["time"] - lost_at - (back_at - requeued_at)
    record_property("node_loss_to_first_resumed_step_s", round(resume_seconds, 1))
    record_property("node_loss_lost_steps", lost)
    print(f"\nnode loss to first resumed step (less {back_at - requeued_at:.1f} s without a node): "
          f"{resume_seconds:.1f} s, {lost} step(s) lost")
    assert resume_seconds < 60


HANG_TIMEOUT = 10.0
INJECT = Path(__file__).resolve().parents[2] / "llmops_testing" / "inject"


def test_a_rank_hung_in_a_collective_is_found_and_the_job_requeued(slurm_env, tmp_path: Path,
                                                                   record_property) -> None:
    spec = two_node_spec("tiny-hang", steps=10, interval=5, max_restarts=1)
    spec["restarts"]["hang_timeout"] = HANG_TIMEOUT
    # Rank 1 (node 0) of the first attempt posts a receive nobody sends at its first collective after step 8
    # (tests/llmops_testing/inject/sitecustomize.py, on the jobs' PYTHONPATH through slurm.env).
    path = os.pathsep.join(filter(None, [str(INJECT), os.environ.get("PYTHONPATH")]))
    spec["slurm"] = {"env": {"PYTHONPATH": path, "LLMOPS_TEST_HANG": "step@8"}}
    run_dir = submit(write_spec(tmp_path / "spec.yaml", spec), tmp_path / "runs")
    first_log = run_dir / "logs" / "pretrain.restart-0.log"
    wait_for(run_dir, lambda: first_log.exists() and "[test] rank 1 hangs" in first_log.read_text(),
             "rank 1 hanging", timeout=240)
    hung_at = time.time()
    # Between the requeue and the restart (cred_expire, queueing: seconds) `llmops status` names the hang.
    wait_for(run_dir, lambda: "requeued (hung: no progress" in status(run_dir)["message"], "the requeue",
             timeout=HANG_TIMEOUT + 60)
    shown = llmops("status", run_dir.name, "--runs-dir", str(tmp_path / "runs"))
    assert "requeued (hung: no progress within restarts.hang_timeout" in " ".join(shown.stdout.split()), shown.stdout
    first = wait_for(run_dir, lambda: next((r for r in metrics(run_dir) if r["restart"] == 1), None),
                     "a training step after the requeue", timeout=240)
    final = wait_state(run_dir, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=240)
    assert (final["state"], final["restarts"]) == ("SUCCEEDED", 1), final

    log = first_log.read_text()
    # Each node's launcher saw its own ranks stop and wrote their stacks (faulthandler): all four ranks.
    assert log.count("[llmops] hung: no progress from any rank of this node for") == 2, log[-3000:]
    dumps = log.split("[llmops] stacks of rank ")[1:]
    assert sorted(d[0] for d in dumps) == ["0", "1", "2", "3"], log[-3000:]
    # The two nodes' launchers write into the one log at once and Slurm interleaves their lines: every line of a
    # dump is labelled with its rank, and each rank's lines hold its main thread, inside torch.distributed for
    # the ranks waiting in the collective.
    lines = {rank: "\n".join(line for line in log.splitlines() if line.startswith(f"[rank {rank}] "))
             for rank in range(4)}
    assert all("most recent call first" in lines[r] and "model/entrypoint.py" in lines[r] for r in lines), log[-3000:]
    assert sum("distributed_c10d.py" in text for text in lines.values()) >= 2, log[-3000:]
    hung = [json.loads(line) for line in (run_dir / "stages" / "pretrain" / "events.jsonl").read_text().splitlines()
            if '"hung"' in line]
    assert [(e["restart"], e["step"], e["timeout"]) for e in hung] == [(0, 8, HANG_TIMEOUT)] * 2, hung
    detected = min(e["time"] for e in hung) - hung_at
    assert detected <= HANG_TIMEOUT + 15, detected
    kinds = events(run_dir)
    assert [k.split()[0] for k in kinds] == ["start", "requeue", "start", "finished"], kinds
    assert kinds[1].startswith("requeue code=76 reason=hung: no progress within restarts.hang_timeout"), kinds

    # The restart resumed from the checkpoint at step 5; the steps after it, trained again, have the losses of
    # the uninterrupted first attempt (CPU training is deterministic), and the report counts them as lost.
    rows = metrics(run_dir)
    before = {r["step"]: r["loss"] for r in rows if r["restart"] == 0}
    after = {r["step"]: r["loss"] for r in rows if r["restart"] == 1}
    assert "resumed from iter_0000005 (step 5" in (run_dir / "logs" / "pretrain.restart-1.log").read_text()
    lost = sorted(s for s in before if s > 5)
    assert sorted(before) == list(range(1, 9)) and sorted(after) == list(range(6, 11)), (before, after)
    for s in lost:
        assert after[s] == pytest.approx(before[s], rel=1e-6, abs=1e-7), (s, before[s], after[s])
    res = llmops("report", run_dir.name, "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 0, res.stderr
    shown = " ".join(llmops("status", run_dir.name, "--runs-dir", str(tmp_path / "runs")).stdout.split())
    assert (f"pretrain: restart 1: hung (no progress within restarts.hang_timeout) at step 8; resumed from step 5, "
            f"{len(lost)} steps lost") in shown, shown
    (stage,) = [s for s in summarize(RunDir(run_dir))["stages"] if s.name == "pretrain"]
    assert stage.lost_steps == len(lost) and stage.restarts == 1
    assert f"restart 1 (hung), {len(lost)} steps lost" in (run_dir / "report.html").read_text()
    resumed = first["time"] - hung_at
    record_property("hang_to_detection_s", round(detected, 1))
    record_property("hang_to_first_resumed_step_s", round(resumed, 1))
    record_property("hang_lost_steps", len(lost))
    print(f"\nhang to detection {detected:.1f} s (hang_timeout {HANG_TIMEOUT:.0f}), to first resumed step "
          f"{resumed:.1f} s, {len(lost)} step(s) lost")
