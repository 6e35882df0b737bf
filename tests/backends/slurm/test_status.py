"""A Slurm run's state from squeue and the events its batch scripts record: every case, no cluster."""

from __future__ import annotations

import pytest

from llmops.backends.slurm.cluster import squeue_command
from llmops.backends.slurm.status import (
    Job,
    StageView,
    combine,
    fanout_stage,
    parse_events,
    parse_squeue,
    torchrun_stage,
)

EVENTS = """\
1700000000 pretrain job=41 restart=0 start nodes=n[1-2] log=logs/pretrain.restart-0.log
1700000060 pretrain job=41 restart=0 notice signal=USR1
1700000070 pretrain job=41 restart=0 requeue code=75 reason=checkpointed before the time limit
1700000095 pretrain job=41 restart=1 start nodes=n[1-2] log=logs/pretrain.restart-1.log
1700000100 pretrain job=41 restart=1 fai"""  # the last line was cut off by a node failure mid-write
COMPLETE = EVENTS.rsplit("\n", 1)[0] + "\n"


def job(state: str, reason: str = "None", restarts: int = 0, job_id: str = "41") -> Job:
    return Job(job_id, state, reason, restarts)


def view(events: str, slurm_job: Job | None, *, finished: bool = False, cancel: bool = False) -> StageView:
    return torchrun_stage("pretrain", "41", parse_events(events), slurm_job, finished=finished,
                          cancel_requested=cancel)


def test_events_parse_with_their_reasons_and_skip_a_cut_off_line() -> None:
    events = parse_events(EVENTS)
    assert [e.kind for e in events] == ["start", "notice", "requeue", "start"]
    assert events[2].code == 75 and events[2].reason == "checkpointed before the time limit"
    assert events[3].restart == 1 and events[3].fields["nodes"] == "n[1-2]"


def test_running_after_a_requeue_reports_the_restart() -> None:
    v = view(EVENTS, job("RUNNING", restarts=1))
    assert (v.state, v.restart) == ("RUNNING", 1) and "restart 1" in v.message


def test_requeued_and_waiting_says_why() -> None:
    events = "".join(EVENTS.splitlines(keepends=True)[:3])
    v = view(events, job("PENDING", "BeginTime", restarts=1))
    assert v.state == "PENDING" and "requeued (checkpointed before the time limit)" in v.message


def test_held_job_tells_how_to_release_it() -> None:
    v = view("", job("REQUEUE_HOLD", "JobHeldAdmin"))
    assert v.state == "PENDING" and "scontrol release 41" in v.message


def test_a_hold_shown_in_the_reason_alone_and_the_restart_to_come_are_told() -> None:
    """Slurm 22.05 keeps a held job PENDING with the hold in its reason: the hint never showed; a requeued job
    was said to start again as restart SLURM_RESTART_COUNT, not as llmops' next restart (3 came as 1)."""
    v = view("", job("PENDING", "JobHeldAdmin"))
    assert v.state == "PENDING" and "scontrol release 41" in v.message
    events = "".join(EVENTS.splitlines(keepends=True)[:3]).replace("restart=0", "restart=2")
    v = view(events, job("PENDING", "job requeued in held state", restarts=1))
    assert "start again as restart 3; held: release it with `scontrol release 41`" in v.message, v.message


def test_a_stop_recorded_by_the_script_outlives_squeue_forgetting_the_job() -> None:
    """An outside scancel was CANCELLED while squeue knew the job, and "left the queue without recording an
    outcome" (FAILED) once it had forgotten it, though the script had recorded its checkpointed stop."""
    stopped = COMPLETE + "1700000200 pretrain job=41 restart=1 stopped code=75 reason=stopped by Slurm (TERM)\n"
    v = view(stopped, None)
    assert v.state == "CANCELLED" and "its checkpoint is saved" in v.message, v


def test_finished_flag_is_success_even_while_slurm_completes_the_job() -> None:
    v = view(COMPLETE + "1700000200 pretrain job=41 restart=1 finished code=0\n", job("COMPLETING"), finished=True)
    assert (v.state, v.code) == ("SUCCEEDED", 0)


def test_a_recorded_failure_keeps_its_reason() -> None:
    events = COMPLETE + ("1700000300 pretrain job=41 restart=3 failed code=1 reason=crashed with exit code 1, "
                         "see logs/pretrain.restart-3.log; gave up after 3 restart(s) (restarts.max_restarts)\n")
    v = view(events, job("FAILED"))
    assert v.state == "FAILED" and v.code == 1 and "gave up after 3 restart(s)" in v.message


def test_cancelled_by_the_user_is_never_success() -> None:
    # The script exits 1 after a cancel, but a job that exited 0 is no success either without the flag.
    assert view(EVENTS, job("COMPLETED"), cancel=True).state == "CANCELLED"
    assert view(EVENTS, None, cancel=True).state == "CANCELLED"


@pytest.mark.parametrize("slurm_job, state, words", [
    (job("CANCELLED"), "CANCELLED", "scancel outside llmops"),
    (job("TIMEOUT"), "FAILED", "raise slurm.signal_lead"),
    (job("NODE_FAIL", "NodeDown"), "FAILED", "ended as NODE_FAIL (NodeDown)"),
    (None, "FAILED", "left the queue without recording an outcome"),
])
def test_a_job_that_ended_without_an_outcome(slurm_job: Job | None, state: str, words: str) -> None:
    v = view(EVENTS, slurm_job)
    assert v.state == state and words in v.message


SQUEUE = """\
12_0|12|RUNNING|None|0|
12_1|12|COMPLETED|None|0|
12_[2-3]|12|PENDING|Resources|0|
13|13|PENDING|Dependency|0|
14|14|COMPLETED|None|2|
"""


def test_squeue_arrays_count_as_alive_while_any_task_is() -> None:
    jobs = parse_squeue(SQUEUE)
    assert jobs["12"].state == "RUNNING" and jobs["12"].alive
    assert jobs["12_1"].state == "COMPLETED" and not jobs["12_1"].alive
    assert jobs["14"].restarts == 2 and not jobs["14"].alive


def test_fanout_stage_progress_failure_and_finish() -> None:
    jobs = parse_squeue(SQUEUE)
    common = {"shards_expected": 7, "failures": [], "cancel_requested": False}
    running = fanout_stage("prepare", ["12", "13"], jobs, finished=False, shards_done=1, **common)
    assert running.state == "RUNNING" and "1/7 task(s) done" in running.message
    waiting = fanout_stage("prepare", ["13"], jobs, finished=False, shards_done=3, **common)
    assert waiting.state == "PENDING" and "Dependency" in waiting.message
    failed = fanout_stage("prepare", ["14"], jobs, finished=False, shards_done=2,
                          **{**common, "failures": [("clean-00001", "input.paths[0]: the pattern matches no file")]})
    assert failed.state == "FAILED" and "clean-00001" in failed.message and "matches no file" in failed.message
    done = fanout_stage("prepare", ["14"], jobs, finished=True, shards_done=7, **common)
    assert done.state == "SUCCEEDED"
    gone = fanout_stage("prepare", ["99"], {}, finished=False, shards_done=2, **common)
    assert gone.state == "FAILED" and "left the queue with 2/7" in gone.message


def test_the_first_unfinished_stage_decides_the_run() -> None:
    ok, run, wait = StageView("SUCCEEDED", "finished"), StageView("RUNNING", "r"), StageView("PENDING", "w")
    assert combine([("prepare", ok), ("pretrain", run), ("align", wait)]) == ("pretrain", run)
    assert combine([("prepare", ok), ("pretrain", ok)]) == ("pretrain", ok)


# Captured from the dev cluster (Slurm 22.05.8) at one moment: array 1, tasks 0-3 running, 4 waiting for a node,
# 5 held (`scontrol hold 1_5`), each in the format llmops might ask for. Under JobID a task is listed by its own
# raw id (task 4 of array 1 is job 1, task 5 is job 6), so only ArrayJobID relates it to its array.
CAPTURED = {
    "JobID:|,ArrayJobID:|,State:|,Reason:|,RestartCnt:|": """\
1|1|PENDING|Resources|0|
6|1|PENDING|JobHeldAdmin|0|
5|1|RUNNING|None|0|
4|1|RUNNING|None|0|
3|1|RUNNING|None|0|
2|1|RUNNING|None|0|
""",
    "JobArrayID:|,ArrayJobID:|,State:|,Reason:|,RestartCnt:|": """\
1_4|1|PENDING|Resources|0|
1_5|1|PENDING|JobHeldAdmin|0|
1_3|1|RUNNING|None|0|
1_2|1|RUNNING|None|0|
1_1|1|RUNNING|None|0|
1_0|1|RUNNING|None|0|
""",
}
NO_SHARDS = {"shards_expected": 11, "shards_done": 3, "failures": [], "cancel_requested": False}


def test_array_tasks_are_read_from_what_llmops_asks_squeue_for() -> None:
    """squeue -O JobID gives each task's raw id: array 1 read as its task 4 (waiting for Resources) while four of
    its tasks ran, and its held task was filed under job 6, so the release hint never showed."""
    asked = squeue_command(["1"])[-1]
    jobs = parse_squeue(CAPTURED[asked])
    assert jobs["1"].state == "RUNNING" and jobs["1_5"].reason == "JobHeldAdmin"
    v = fanout_stage("prepare", ["1"], jobs, finished=False, **NO_SHARDS)
    assert v.state == "RUNNING" and "3/11 task(s) done" in v.message
    assert "held: release with `scontrol release 1_5`" in v.message, v.message


def test_a_task_held_after_its_node_failed_is_told_how_to_be_released() -> None:
    jobs = parse_squeue("3_2|3|PENDING|launch failed requeued held|1|\n3_[3-4]|3|PENDING|Resources|0|\n")
    v = fanout_stage("prepare", ["3"], jobs, finished=False, **NO_SHARDS)
    assert v.state == "PENDING" and "scontrol release 3_2" in v.message, v.message


def test_a_cancelled_fanout_is_stopping_not_cancelled_while_a_task_is_on_the_cluster() -> None:
    """A cancelled shard stayed COMPLETING with its Python alive for KillWait while status said CANCELLED, and a
    resume then ran a second copy of it beside it."""
    jobs = parse_squeue("5_0|5|COMPLETED|None|0|\n5_1|5|COMPLETING|None|0|\n6|6|CANCELLED|Dependency|0|\n")
    v = fanout_stage("prepare", ["5", "6"], jobs, finished=False, **{**NO_SHARDS, "cancel_requested": True})
    assert v.state == "RUNNING" and "stopping after the cancel: task(s) 5_1 still on the cluster" in v.message
    gone = parse_squeue("5_0|5|COMPLETED|None|0|\n5_1|5|CANCELLED|None|0|\n")
    assert fanout_stage("prepare", ["5", "6"], gone, finished=False,
                        **{**NO_SHARDS, "cancel_requested": True}).state == "CANCELLED"


def test_a_killed_shard_is_named_with_its_evidence_and_requeues_are_restarts() -> None:
    """kill -9 of a shard was reported as "arrays ... ended as CANCELLED" (the finalize job Slurm cancelled
    afterwards), the shard unnamed; requeues never reached the restarts column."""
    jobs = parse_squeue("34_2|34|FAILED|NonZeroExitCode|0|\n35|35|CANCELLED|DependencyNeverSatisfied|0|\n")
    evidence = "srun: error: n2: task 0: Killed; see slurm/submitit/34_2/34_2_0_log.out"
    v = fanout_stage("prepare", ["34", "35"], jobs, finished=False, shards_expected=11, shards_done=9, failures=[],
                     cancel_requested=False, unfinished=[("tokenize-00002", evidence)], restarts=1)
    assert v.state == "FAILED" and v.restart == 1
    assert v.message.startswith("task tokenize-00002 ended without finishing") and evidence in v.message


def test_a_stage_slurm_cancelled_for_a_dependency_that_failed_says_so() -> None:
    """Said "cancelled in Slurm (scancel outside llmops)" when Slurm cancelled it as the stage before failed."""
    v = view(EVENTS, job("CANCELLED", "DependencyNeverSatisfied"))
    assert "scancel outside llmops" not in v.message and "stage before it did not succeed" in v.message, v.message
