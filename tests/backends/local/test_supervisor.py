"""The local backend's supervisor: what status says when it is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

from llmops_testing import llmops, start, status, tiny_spec, wait_state, wait_step, write_spec


def test_lost_supervisor_is_reported(tmp_path):
    runs = tmp_path / "runs"
    run_dir = start(write_spec(tmp_path / "long.yaml", tiny_spec("lost", steps=2000)), runs)
    wait_step(run_dir, 1)
    st = status(run_dir)
    # As a reboot would: every process of the run goes, the workers too (torchrun starts them in sessions
    # of their own, so the launcher's process group does not hold them).
    workers = psutil.Process(st["job_pgid"]).children(recursive=True)
    os.killpg(st["job_pgid"], signal.SIGKILL)
    os.kill(st["supervisor_pid"], signal.SIGKILL)
    for p in workers:
        p.kill()
    psutil.wait_procs(workers, timeout=30)
    res = llmops("status", run_dir.name, "--json", "--runs-dir", str(runs))
    assert res.returncode == 0
    assert '"state": "FAILED"' in res.stdout and "supervisor process is gone" in res.stdout


def test_cancel_never_signals_a_process_that_is_not_the_runs(tmp_path):
    """Pids in status.json go stale (a reboot, a file system shared between machines): check before killing."""
    from llmops.runs.rundir import RunDir
    from llmops.spec.load import parse_spec

    stranger = subprocess.Popen(["sleep", "120"])
    try:
        run = RunDir.create(parse_spec(tiny_spec("stale")), tmp_path / "runs" / "stale-1")
        born = psutil.Process(stranger.pid).create_time()
        run.update_status(state="RUNNING", supervisor_pid=stranger.pid, supervisor_started=born,
                          job_pgid=stranger.pid, job_started=born, stage="pretrain")
        res = llmops("cancel", "--force", str(run.path))
        assert res.returncode == 0, res.stderr
        assert stranger.poll() is None, "cancel killed a process that was not the run's"
        final = run.read_status()  # cancelled, and what it found said
        assert final.state == "CANCELLED" and "after its supervisor process was gone" in final.message, final
    finally:
        stranger.kill()


def test_a_stop_that_reaches_a_finished_stage_leaves_it_succeeded(tmp_path, monkeypatch):
    """The cancel came after the last step and the final checkpoint: the launcher died of the signal (-15),
    but the training had written its exit record with code 0. The run finished; it was not cancelled."""
    import json
    import time

    from llmops.backends.local.supervisor import Supervisor
    from llmops.runs.rundir import RunDir
    from llmops.spec.load import parse_spec

    run = RunDir.create(parse_spec(tiny_spec("late")), tmp_path / "runs" / "late-1")

    def launch(self, stage, attempt):
        (run.path / "last_exit.json").write_text(json.dumps({"code": 0, "step": 4, "time": time.time()}))
        run.cancel_marker.touch()
        return -15

    monkeypatch.setattr(Supervisor, "launch", launch)
    monkeypatch.setattr("llmops.backends.local.supervisor.report.write", lambda run: None)
    Supervisor(run).supervise()
    st = run.read_status()
    assert (st.state, st.stages["pretrain"]["state"]) == ("SUCCEEDED", "SUCCEEDED")


def test_cancel_waits_without_killing_and_resume_follows_the_new_attempt_to_its_end(tmp_path):
    """A cancel whose wait ends before the next step boundary is reported, not turned into a kill: the run
    still checkpoints and stops. `llmops resume` then follows only the new attempt, and exits 0."""
    from llmops import runner
    from llmops.runs.rundir import RunDir

    spec = write_spec(tmp_path / "r.yaml", tiny_spec("again", steps=30, checkpoint={"interval": 5}))
    run_dir = start(spec, tmp_path / "runs")
    wait_step(run_dir, 2)
    final = runner.cancel(RunDir(run_dir), wait=0)
    assert final.state == "RUNNING" and psutil.pid_exists(final.supervisor_pid)
    assert wait_state(run_dir, {"CANCELLED"})["message"].startswith("cancelled by the user (checkpointed")
    res = llmops("resume", str(run_dir), env={"COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    assert f"run {run_dir.name} succeeded" in res.stderr and "exitcode: 75" not in res.stdout + res.stderr
    assert "30/30" in res.stdout and "resumed from iter_" in res.stdout
    # Quiet and fitted: only llmops's own lines, none wider than the terminal, and where the model is.
    shown = res.stdout + res.stderr
    assert not any(word in shown for word in ("Warning", "warnings.warn", "torch.distributed", "Traceback"))
    assert all(len(line) <= 80 for line in shown.splitlines()), max(shown.splitlines(), key=len)
    assert "model:  " in res.stderr and "iter_0000030" in res.stderr and f"llmops report {run_dir.name}" in shown
    # The user's resume is the stage's restart too (it said 0 beside the run's 1), and not a preemption.
    st = RunDir(run_dir).read_status()
    assert st.restarts == 1 and st.stages["pretrain"]["restarts"] == 1, st
    said = " ".join(llmops("status", str(run_dir), env={"COLUMNS": "200"}).stdout.split())
    assert "pretrain: restart 1: cancelled by the user at step" in said, said


STAND_IN = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))  # a launcher's notice: checkpoint and exit 75
time.sleep(600)
"""


def test_a_supervisor_that_fails_stops_the_job_it_started(tmp_path, monkeypatch):
    """An error in the supervisor itself (a status write, say) leaves the run FAILED and no launcher training on
    unwatched, which `llmops cancel` could no longer reach (a FAILED run is ended)."""
    import sys

    import pytest

    from llmops.backends.local import supervisor
    from llmops.runs.rundir import RunDir
    from llmops.spec.load import parse_spec

    run = RunDir.create(parse_spec(tiny_spec("broken")), tmp_path / "runs" / "broken-1")
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    monkeypatch.setattr(supervisor, "launch_command", lambda spec, path: [sys.executable, str(script)])
    started = []
    update_stage = RunDir.update_stage

    def failing_update(self, stage, **fields):
        if "launched_ahead" in fields:  # written once the launcher runs
            started.append(psutil.Process(self.read_status().job_pgid))
            raise OSError(28, "No space left on device")
        return update_stage(self, stage, **fields)

    monkeypatch.setattr(RunDir, "update_stage", failing_update)
    monkeypatch.setattr(sys, "argv", ["supervisor", str(run.path)])
    with pytest.raises(OSError, match="No space left"):
        supervisor.main()
    (launcher,) = started
    assert not launcher.is_running() or launcher.status() == psutil.STATUS_ZOMBIE
    st = run.read_status()
    assert st.state == "FAILED" and "supervisor error" in st.message and st.job_pgid is None, st


def test_no_part_of_a_job_outlives_the_part_that_manages_it_and_one_resume_wins(tmp_path):
    """Found by trying the lifecycle by hand: a launcher killed left its worker training beside the restart
    (both writing the same checkpoints, the orphan then hanging for good); a supervisor killed left the job
    training unmanaged while `status` said FAILED and `cancel` did nothing, so the advised resume started a
    second trainer; two resumes at once both started the run; a second cancel during the first turned a
    checkpointed stop into "exit code -15"."""
    from llmops.procs import descendants
    from llmops_model.warm import find_workers

    runs = tmp_path / "runs"
    spec = tiny_spec("orphans", steps=4000, checkpoint={"interval": 5}, restarts={"max_restarts": 2})
    spec["train"]["log_interval"] = 1
    run_dir = start(write_spec(tmp_path / "orphans.yaml", spec), runs)
    wait_step(run_dir, 3)
    old = list(find_workers(run_dir).values())
    assert old
    os.kill(status(run_dir)["job_pgid"], signal.SIGKILL)  # the launcher alone
    gone, alive = psutil.wait_procs(old, timeout=20)
    assert not alive, f"workers outlived their launcher: {alive}"

    st = wait_state(run_dir, {"RUNNING"})  # the supervisor restarts the stage
    deadline = time.time() + 120
    while st.get("stages", {}).get("pretrain", {}).get("restarts", 0) < 1 or not find_workers(run_dir):
        assert time.time() < deadline, st
        time.sleep(0.3)
        st = status(run_dir)
    wait_step(run_dir, 8)
    st = status(run_dir)
    job = [psutil.Process(st["job_pgid"]), *map(psutil.Process, descendants(st["job_pgid"]))]
    os.kill(st["supervisor_pid"], signal.SIGKILL)
    gone, alive = psutil.wait_procs(job, timeout=60)  # told by the kernel, it checkpoints and stops
    assert not alive, f"the job outlived its supervisor: {alive}"
    res = llmops("status", run_dir.name, "--json", "--runs-dir", str(runs))
    (final,) = json.loads(res.stdout)
    assert final["state"] == "FAILED" and "supervisor process is gone" in final["message"], final
    assert final["stages"]["pretrain"]["state"] == "FAILED"  # not RUNNING beside a FAILED run
    assert "preemption" in (run_dir / "logs" / "pretrain.restart-1.log").read_text().lower()

    both = [subprocess.Popen([sys.executable, "-m", "llmops", "resume", run_dir.name, "--detach", "--runs-dir",
                              str(runs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    codes = sorted(p.wait(timeout=120) for p in both)
    said = [p.stderr.read() for p in both]
    assert codes == [0, 2], said
    assert any("not stopped" in s for s in said), said
    wait_step(run_dir, 12)
    supervisors = [p for p in psutil.process_iter(["cmdline"])
                   if "llmops.backends.local.supervisor" in " ".join(p.info["cmdline"] or [])
                   and str(run_dir) in " ".join(p.info["cmdline"] or [])]
    assert len(supervisors) == 1, supervisors

    first = subprocess.Popen([sys.executable, "-m", "llmops", "cancel", run_dir.name, "--runs-dir", str(runs)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.6)
    second = llmops("cancel", run_dir.name, "--runs-dir", str(runs))
    assert first.wait(timeout=150) == 0 and second.returncode == 0, (first.stderr.read(), second.stderr)
    final = wait_state(run_dir, {"CANCELLED"})
    assert "checkpointed" in final["message"], final


def test_checkpoints_of_another_model_are_bad_input_not_a_crash_to_retry(tmp_path):
    """A checkpoint folder handed over to a run of another shape failed in Megatron's load with a shape
    mismatch, was retried up to restarts.max_restarts, and ended in exit 1 and `next: llmops resume`."""
    runs, ckpts = tmp_path / "runs", tmp_path / "ckpts"
    first = start(write_spec(tmp_path / "a.yaml", tiny_spec("first", steps=2, checkpoint={"dir": str(ckpts)})), runs)
    wait_state(first, {"SUCCEEDED"})
    (ckpts / "llmops-owner.json").unlink()  # handed over, as docs/runs-and-checkpoints.md says
    wider = tiny_spec("wider", steps=4, checkpoint={"dir": str(ckpts)}, restarts={"max_restarts": 2},
                      model={"preset": "tiny", "hidden_size": 128, "ffn_hidden_size": 512})
    res = llmops("run", str(write_spec(tmp_path / "b.yaml", wider)), "--runs-dir", str(runs), env={"COLUMNS": "300"})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "is of another model than this run's (hidden_size: 64 there, 128 here" in res.stdout, res.stdout
    (run,) = [p for p in runs.iterdir() if p.name.startswith("wider-")]
    assert status(run)["stages"]["pretrain"].get("restarts", 0) == 0  # not retried


def test_a_run_whose_status_is_damaged_can_still_be_killed_and_nothing_else_is(tmp_path):
    """A damaged status.json (pids unknown) made a running run impossible to cancel: the trainer went on."""
    from llmops_model.warm import find_workers

    runs = tmp_path / "runs"
    run_dir = start(write_spec(tmp_path / "s.yaml", tiny_spec("damaged", steps=4000)), runs)
    wait_step(run_dir, 2)
    workers = list(find_workers(run_dir).values())
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(run_dir.resolve())])
    try:
        (run_dir / "status.json").write_text('{"state": "RUN')
        res = llmops("cancel", run_dir.name, "--runs-dir", str(runs))
        assert res.returncode == 2 and "cancel --force" in res.stderr, res.stderr
        res = llmops("cancel", "--force", run_dir.name, "--runs-dir", str(runs))
        assert res.returncode == 2 and "killed the" in res.stderr, res.stderr
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive
        left = [p for p in psutil.process_iter(["cmdline"]) if str(run_dir.resolve()) in " ".join(
            p.info["cmdline"] or []) and p.pid != bystander.pid]
        assert not left, left
        assert bystander.poll() is None  # it names the folder, but it is no process of the run
    finally:
        bystander.kill()
