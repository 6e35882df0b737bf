"""Fault injection on the local backend: real training (Megatron-Core on gloo, torchrun), real signals.

Every case ends with the run finished and its loss curve equal to an
uninterrupted run's (training on CPU is deterministic, so a step re-run from
a checkpoint gives the same loss), and the lost work reported by the run
report. The runs are started side by side to keep the file's wall time down.

1. SIGKILL of one training rank mid-step: torchrun tears the group down, the
   supervisor restarts the stage from the last checkpoint.
2. SIGTERM to the job (a preemption notice): checkpoint at the step boundary,
   exit 75, restart: no step is lost.
4. The newest checkpoint truncated on disk: resume falls back to the one before.
5. Disk full while saving (a real, full tmpfs): the save fails cleanly, the
   previous checkpoint stays the latest, training goes on; the final save
   fails with a message naming the fix; after space is freed the run resumes.
6. A crash in the middle of data preparation: the restart skips finished
   shards and the output is byte-identical to an uninterrupted preparation.
7. A cancel: nothing of the run keeps running, nothing incomplete is marked complete.
8. A hang: one rank frozen with SIGSTOP (no exit, no error). The launcher's watchdog sees no progress for
   restarts.hang_timeout, writes every rank's stacks to the log, stops the job, and the stage restarts.
   The same for a rank that blocks inside a collective and for one that blocks inside a checkpoint save
   (a test-only sitecustomize on the run's PYTHONPATH, tests/llmops_testing/inject): the restart takes the
   checkpoint before, never the one left half-written.
9. A straggler: one rank of a data-parallel run throttled (stopped for 40 ms of every 50 ms), slow but not
   stuck: it is named in the log, `llmops status` and the report, and the run is not restarted.
"""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from llmops.runs.report import summarize
from llmops.runs.rundir import RunDir
from llmops_model.warm import find_workers
from llmops_testing import (
    llmops,
    log_text,
    losses,
    run_processes,
    same_curve,
    start,
    status,
    tiny_spec,
    wait_state,
    wait_step,
    write_spec,
)

STEPS = 30
INTERVAL = 10
HANG_TIMEOUT = 10.0
INJECT = Path(__file__).resolve().parents[2] / "llmops_testing" / "inject"


def _spec(name: str, **overrides) -> dict:
    spec = tiny_spec(name, tp=2, pp=1, steps=STEPS, checkpoint={"interval": INTERVAL, "keep_last": 3},
                     restarts={"max_restarts": 2})
    spec["train"]["log_interval"] = 1
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key].update(value)
        else:
            spec[key] = value
    return spec


def workers(run_dir: Path) -> list[psutil.Process]:
    """The training processes of a run (torchrun's workers)."""
    return list(find_workers(run_dir).values())


def wait_restart(run_dir: Path, stage: str = "pretrain", timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if status(run_dir).get("stages", {}).get(stage, {}).get("restarts", 0) >= 1:
            return
        time.sleep(0.2)
    raise AssertionError(f"{run_dir.name} was not restarted: {status(run_dir)}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def faulted(workdir: Path) -> dict:
    """The reference run and the runs hit by a SIGKILL of one rank and by a preemption signal."""
    runs = workdir / "runs"
    ref = start(write_spec(workdir / "ref.yaml", _spec("reference")), runs)
    killed = start(write_spec(workdir / "killed.yaml", _spec("rank-killed")), runs)
    preempted = start(write_spec(workdir / "preempted.yaml", _spec("preempted")), runs)
    hung = start(write_spec(workdir / "hung.yaml", _spec("hung", restarts={"hang_timeout": HANG_TIMEOUT})), runs)
    # rank 1 hangs inside a collective (a receive rank 0 never sends) after the first checkpoint, and in another
    # run inside the second checkpoint's save (tests/llmops_testing/inject/sitecustomize.py)
    inject = {"PYTHONPATH": os.pathsep.join([str(INJECT), os.environ.get("PYTHONPATH", "")])}
    hung_specs = {f"hung-{what}": _spec(f"hung-{what}", restarts={"hang_timeout": HANG_TIMEOUT, "max_restarts": 2})
                  for what in ("collective", "saving")}
    in_collective = start(write_spec(workdir / "hung-collective.yaml", hung_specs["hung-collective"]), runs,
                          env={**inject, "LLMOPS_TEST_HANG": f"step@{INTERVAL + 3}"})
    in_save = start(write_spec(workdir / "hung-saving.yaml", hung_specs["hung-saving"]), runs,
                    env={**inject, "LLMOPS_TEST_HANG": f"checkpoint@{2 * INTERVAL}"})
    facts: dict = {"reference": ref, "killed": killed, "preempted": preempted, "hung": hung,
                   "in_collective": in_collective, "in_save": in_save}


    wait_step(killed, INTERVAL + 3)
    victim = find_workers(killed)[1]
    facts["killed_after"] = RunDir(killed).progress("pretrain")["step"]
    victim.send_signal(signal.SIGKILL)

    wait_step(preempted, INTERVAL + 3)
    facts["preempted_after"] = RunDir(preempted).progress("pretrain")["step"]
    os.kill(status(preempted)["job_pgid"], signal.SIGTERM)  # the launcher forwards it to every worker

    wait_step(hung, INTERVAL + 3)
    frozen = find_workers(hung)[1]
    facts["frozen_after"] = RunDir(hung).progress("pretrain")["step"]
    facts["frozen_at"] = time.time()
    frozen.send_signal(signal.SIGSTOP)

    # Data-parallel (a slow rank's peers wait for it in the gradient all-reduce, not inside the step). Started
    # last, so that all its steps come after the throttle begins: started with the others, it had trained most of
    # its 40 steps by the time the faults above were placed on a loaded machine, too few windows to name anyone.
    slow = tiny_spec("straggler", procs=2, steps=60, checkpoint={"interval": 60}, restarts={"max_restarts": 0})
    facts["straggler"] = straggler = start(write_spec(workdir / "straggler.yaml", slow), runs)
    wait_step(straggler, 1)
    throttled = find_workers(straggler)[1]
    done = threading.Event()

    # A node that is slow, not stuck: rank 1 runs a fifth of the time. The period is shorter than the part of a
    # step before the gradient sync (about 25 ms here), so every step of rank 1 is stretched. A period longer than
    # a step (it was 0.4 s) let several steps run whole in each running window and put the stop in the all-reduce,
    # where the peer waits too: then no rank was slower to the sync, and the straggler went unnamed.
    def throttle() -> None:
        while not done.is_set():
            try:
                throttled.suspend()
                time.sleep(0.04)
                throttled.resume()
            except psutil.Error:
                return
            time.sleep(0.01)

    threading.Thread(target=throttle, daemon=True).start()

    for run in (ref, killed, preempted, hung, straggler, in_collective, in_save):
        wait_state(run, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=400)
    done.set()
    return facts


def test_sigkill_of_one_rank_restarts_from_the_last_checkpoint(faulted):
    run = faulted["killed"]
    st = status(run)
    assert st["state"] == "SUCCEEDED", st
    (reason,) = st["stages"]["pretrain"]["why"].values()
    assert reason.startswith("crashed with exit code")
    assert f"resumed from iter_{INTERVAL:07d}" in (run / "logs" / "pretrain.restart-1.log").read_text()
    same_curve(run, faulted["reference"], STEPS)
    (stage,) = [s for s in summarize(RunDir(run))["stages"] if s.name == "pretrain"]
    # The steps after the checkpoint at INTERVAL that the killed attempt had logged were run again.
    lost = stage.lost_steps
    assert faulted["killed_after"] - INTERVAL <= lost <= faulted["killed_after"] - INTERVAL + 2, lost
    assert stage.time["lost"] > 0 and len(stage.resume_seconds) == 1
    assert not workers(run)


def test_preemption_signal_loses_no_step(faulted):
    run = faulted["preempted"]
    st = status(run)
    assert st["state"] == "SUCCEEDED", st
    assert st["stages"]["pretrain"]["why"] == {"1": "preempted"}
    first = (run / "logs" / "pretrain.restart-0.log").read_text()
    assert "preemption signal" in first and "exiting with 75" in first
    same_curve(run, faulted["reference"], STEPS)
    (stage,) = [s for s in summarize(RunDir(run))["stages"] if s.name == "pretrain"]
    assert stage.lost_steps == 0 and stage.time["lost"] == 0
    resumed = (run / "logs" / "pretrain.restart-1.log").read_text()
    saved_at = int(resumed.split("resumed from iter_")[1][:7])
    assert saved_at >= faulted["preempted_after"]  # checkpointed at the step boundary after the signal


def test_a_frozen_rank_is_found_its_stacks_kept_and_the_stage_restarted(faulted):
    import json

    run = faulted["hung"]
    # The freeze comes once the run is past step 13, later on a loaded machine (past step 20 in one CI run): the
    # restart resumes from the last checkpoint at or before the frozen step (the one before if rank 1 was frozen
    # inside that save)
    resumed = int((run / "logs" / "pretrain.restart-1.log").read_text().split("resumed from iter_")[1][:7])
    assert resumed % INTERVAL == 0 and faulted["frozen_after"] - 2 * INTERVAL <= resumed <= faulted["frozen_after"]
    first, then = _hung_once(run, resumed=resumed)
    assert "[llmops] hung: no progress from any rank of this node for" in first
    _names_the_held_or_the_holder(first)
    # faulthandler's dump of each rank: the frozen one (continued to write it) and the one waiting for it
    assert first.count("most recent call first") >= 2 and "train/loop.py" in first
    assert "[llmops] stacks of rank 0, pid" in first
    assert "[llmops] stacks of rank 1, pid" in first and "(it was stopped, SIGSTOP: continued to write them)" in first
    (event,) = [e for e in map(json.loads, (run / "stages" / "pretrain" / "events.jsonl").read_text().splitlines())
                if e["event"] == "hung"]
    # frozen_after is rank 0's progress when the signal went out: rank 1 may have been stopped after that step
    # and before its own beat for it, one step behind (the message then names it as behind)
    assert event["timeout"] == HANG_TIMEOUT and event["step"] >= faulted["frozen_after"] - 1
    assert event["time"] - faulted["frozen_at"] <= HANG_TIMEOUT + 15  # found within the timeout and a margin
    same_curve(run, faulted["reference"], STEPS)
    (stage,) = [s for s in summarize(RunDir(run))["stages"] if s.name == "pretrain"]
    assert stage.lost_steps >= faulted["frozen_after"] - resumed and stage.time["lost"] > 0
    assert not [p for p in workers(run) if p.status() == psutil.STATUS_STOPPED]


def _names_the_held_or_the_holder(log: str) -> None:
    """Rank 1 hangs, rank 0 waits for it: the watchdog names rank 1 as behind where their heartbeats show it, or
    says they stopped together where ranks in lockstep do (rank 0 held in the step's first collective)."""
    said = log.split("[llmops] hung: ")[1].splitlines()[0]
    assert "all its ranks stopped at the same point" in said or "rank 1 is behind" in said, said


def _hung_once(run: Path, *, resumed: int = INTERVAL) -> tuple[str, str]:
    """The run finished after one restart for a hang, resumed from step `resumed`; (the hung attempt's log, the
    restarted one's)."""
    st = status(run)
    assert st["state"] == "SUCCEEDED", st
    assert st["stages"]["pretrain"]["why"]["1"].startswith("hung (no progress within the hang timeout"), st
    shown = llmops("status", run.name, "--runs-dir", str(run.parent))  # after the end, status still says why
    said = " ".join(shown.stdout.split())
    assert ("pretrain: restart 1: hung (no progress within the hang timeout; stacks in pretrain.restart-0.log) at "
            "step") in said, shown.stdout
    assert f"resumed from step {resumed}" in said, shown.stdout
    first, then = ((run / "logs" / f"pretrain.restart-{i}.log").read_text() for i in (0, 1))
    assert f"resumed from iter_{resumed:07d}" in then
    return first, then


def test_a_rank_stuck_inside_a_collective_is_found_and_the_stage_restarted(faulted):
    first, then = _hung_once(faulted["in_collective"])
    assert "[test] rank 1 hangs in a receive before" in first and "[llmops] hung: no progress" in first
    _names_the_held_or_the_holder(first)
    # both ranks' stacks: rank 1 in its receive, rank 0 in the collective rank 1 never joined
    dumps = first.split("[llmops] stacks of rank ")[1:]
    assert sorted(d[0] for d in dumps) == ["0", "1"]
    assert all("distributed_c10d.py" in d for d in dumps), dumps
    assert f"resumed from iter_{INTERVAL:07d}" in then
    same_curve(faulted["in_collective"], faulted["reference"], STEPS)


def test_a_hang_inside_a_checkpoint_save_leaves_no_checkpoint_taken_for_complete(faulted):
    run = faulted["in_save"]
    first, then = _hung_once(run)
    assert f"saved checkpoint step={2 * INTERVAL}" not in first  # the save never finished...
    assert f"resumed from iter_{INTERVAL:07d}" in then  # ...so the restart took the one before it
    same_curve(run, faulted["reference"], STEPS)
    listing = llmops("checkpoints", run.name, "--runs-dir", str(run.parent))
    rows = {(r[1], r[-1]) for r in map(str.split, listing.stdout.splitlines()[1:])}  # (step, state)
    assert listing.returncode == 0, listing.stderr
    assert rows == {("10", "complete"), ("20", "complete"), ("30", "latest")}, listing.stdout


def test_a_slow_rank_is_named_a_straggler_and_not_restarted(faulted):
    import json

    run = faulted["straggler"]
    st = status(run)
    assert st["state"] == "SUCCEEDED" and st["restarts"] == 0, st
    log = (run / "logs" / "pretrain.restart-0.log").read_text()
    assert "[llmops] straggler: rank 1 takes" in log and "straggler: rank 0" not in log
    named = [e for e in map(json.loads, (run / "stages" / "pretrain" / "events.jsonl").read_text().splitlines())
             if e["event"] == "straggler"]
    assert named and {e["rank"] for e in named} == {1}, named  # again only if it caught up in between
    event = named[0]
    assert event["seconds"] > 1.25 * event["peers"]
    shown = llmops("status", run.name, "--runs-dir", str(run.parent))
    assert f"pretrain: straggler: rank 1 from step {event['step']}:" in shown.stdout, shown.stdout
    assert "straggler: rank 1 from step" in (run / "report.html").read_text()


def test_truncated_newest_checkpoint_falls_back_to_the_previous(workdir, faulted):
    runs = workdir / "runs"
    # Rank 1 stops inside a collective at the step after the one waited for, so that the cancel finds the run
    # there: on a loaded machine the 8 steps left had run to the end before it came (SUCCEEDED, not CANCELLED).
    inject = {"PYTHONPATH": os.pathsep.join([str(INJECT), os.environ.get("PYTHONPATH", "")]),
              "LLMOPS_TEST_HANG": f"step@{2 * INTERVAL + 3}"}
    run = start(write_spec(workdir / "corrupt.yaml", _spec("corrupted")), runs, env=inject)
    wait_step(run, 2 * INTERVAL + 2)
    res = llmops("cancel", run.name, "--force", "--runs-dir", str(runs))
    assert res.returncode == 0, res.stderr
    assert status(run)["state"] == "CANCELLED" and not run_processes(run)
    newest = run / "checkpoints" / f"iter_{2 * INTERVAL:07d}"
    shard = sorted(newest.glob("*.distcp"))[0]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 3)
    listing = llmops("checkpoints", run.name, "--runs-dir", str(runs))
    assert "truncated" in listing.stdout and "latest" in listing.stdout
    assert llmops("checkpoints", run.name, "--verify", str(2 * INTERVAL), "--runs-dir", str(runs)).returncode == 1

    res = llmops("resume", run.name, "--detach", "--runs-dir", str(runs))
    assert res.returncode == 0, res.stderr
    assert wait_state(run, {"SUCCEEDED", "FAILED"}, timeout=300)["state"] == "SUCCEEDED"
    text = log_text(run)
    assert f"skipping checkpoint iter_{2 * INTERVAL:07d}: file {shard.name}" in text
    assert f"resumed from iter_{INTERVAL:07d}" in text
    same_curve(run, faulted["reference"], STEPS)


@pytest.fixture
def small_disk(tmp_path: Path, faulted):
    """A real tmpfs with room for one checkpoint of the test model, not two."""
    one = sum(f.stat().st_size for f in (faulted["reference"] / "checkpoints" / f"iter_{INTERVAL:07d}").rglob("*"))
    mount = tmp_path / "small-disk"
    mount.mkdir()
    size = f"{int(one * 1.6) // 4096 * 4}k"
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()}); needs root or CAP_SYS_ADMIN")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(workdir, faulted, small_disk, tmp_path):
    runs = workdir / "runs"
    spec = _spec("disk-full", checkpoint={"dir": str(small_disk), "keep_last": 5})
    run = start(write_spec(tmp_path / "full.yaml", spec), runs)
    final = wait_state(run, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=300)
    assert final["state"] == "FAILED", final
    assert final["stages"]["pretrain"]["restarts"] == 0  # a full disk is not retried blindly
    # which write meets the full disk decides the writer's own words ('No space left on device', or torch's
    # zip writer's 'unexpected pos'), so the message leads with what the trainer measured
    assert "could not be written: the disk is full: " in final["message"]
    text = log_text(run)
    assert f"checkpoint step={2 * INTERVAL} could not be written" in text and "training goes on" in text
    assert "Fix: free space under" in text and "Traceback" not in text
    assert sorted(p.name for p in small_disk.iterdir()) == ["iter_0000010", "latest_checkpointed_iteration.txt",
                                                            "llmops-owner.json"]
    assert (small_disk / "latest_checkpointed_iteration.txt").read_text().strip() == str(INTERVAL)
    assert losses(run)[STEPS] == pytest.approx(losses(faulted["reference"])[STEPS], rel=1e-6)  # it trained on

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    res = llmops("resume", run.name, "--detach", "--runs-dir", str(runs))
    assert res.returncode == 0, res.stderr
    assert wait_state(run, {"SUCCEEDED", "FAILED"}, timeout=300)["state"] == "SUCCEEDED"
    assert f"resumed from iter_{INTERVAL:07d}" in (run / "logs" / "pretrain.restart-1.log").read_text()
    same_curve(run, faulted["reference"], STEPS)


def test_cancel_leaves_nothing_running_and_nothing_falsely_complete(workdir):
    runs = workdir / "runs"
    run = start(write_spec(workdir / "cancel.yaml", _spec("cancelled", train={"steps": 400})), runs)
    wait_step(run, INTERVAL + 2)
    res = llmops("cancel", run.name, "--runs-dir", str(runs))
    assert res.returncode == 0, res.stderr
    st = status(run)
    assert st["state"] == "CANCELLED" and st["stages"]["pretrain"]["state"] == "CANCELLED"
    assert "checkpointed" in st["message"]
    time.sleep(1.0)
    assert not run_processes(run), [p.info["cmdline"] for p in run_processes(run)]
    ckpts = run / "checkpoints"
    assert not list(ckpts.glob("*.partial"))
    step = int((ckpts / "latest_checkpointed_iteration.txt").read_text())
    assert INTERVAL < step < 400 and (ckpts / f"iter_{step:07d}" / "llmops-manifest.json").is_file()
    assert not (run / "report.html").read_text().count("SUCCEEDED")


def test_crash_mid_preparation_resumes_to_identical_output(tmp_path):
    prepare = {"input": {"builtin": "python-docstrings"}, "filters": {"min_words": 20}, "num_shards": 4,
               "workers": 1, "tokenizer": {"vocab_size": 512}}
    ref_spec = {"name": "prep-ref", "prepare": {**prepare, "output": {"dir": str(tmp_path / "ref")}},
                "resources": {"cpu": True, "processes_per_node": 1}}
    cut_spec = {"name": "prep-cut", "prepare": {**prepare, "output": {"dir": str(tmp_path / "cut")}},
                "resources": {"cpu": True, "processes_per_node": 1}, "restarts": {"max_restarts": 1}}
    res = llmops("prepare", str(write_spec(tmp_path / "ref.yaml", ref_spec)), timeout=600)
    assert res.returncode == 0, res.stderr
    run = start(write_spec(tmp_path / "cut.yaml", cut_spec), tmp_path / "runs")
    done = tmp_path / "cut" / "work" / "done"
    deadline = time.time() + 120
    while not list(done.glob("clean-*")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(done.glob("clean-*")), status(run)
    os.killpg(status(run)["job_pgid"], signal.SIGKILL)  # the whole preparation, mid-phase
    st = wait_state(run, {"SUCCEEDED", "FAILED"}, timeout=300)
    assert st["state"] == "SUCCEEDED" and st["stages"]["prepare"]["restarts"] == 1, st
    again = (run / "logs" / "prepare.restart-1.log").read_text()
    assert "shards done earlier, skipped" in again  # the finished shards were not redone
    for name in ("corpus_text_document.bin", "corpus_text_document.idx", "tokenizer.model",
                 "documents.jsonl.zst", "duplicates.jsonl", "quarantine.jsonl"):
        assert filecmp.cmp(tmp_path / "ref" / name, tmp_path / "cut" / name, shallow=False), name
