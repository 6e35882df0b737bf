"""What `llmops submit` records from submit.sh's output: the stages' job ids, and nothing a login shell adds.

Over SSH the script runs in the user's login shell, whose profile may print anything; a word of it taken for
a stage or a job id would be asked of squeue (whose error made every stage look ended) and given to scancel.
"""

from __future__ import annotations

import json
import os

from llmops.backends.slurm.backend import _parse_submitted

STAGES = ["prepare", "pretrain", "sft"]


def test_only_the_scripts_own_lines_are_taken() -> None:
    out = "\n".join([
        "Disk quota 1234 of 5000",           # a login profile's notice
        "Welcome to the cluster!",
        "prepare finished",
        "pretrain 4242",
        "pretrain is scheduled on partition gpu",  # a stage name, then words: not the script's line
        "sft 4243 4244",
        "4245",
        "",
    ])
    assert _parse_submitted(out, STAGES) == {"prepare": [], "pretrain": ["4242"], "sft": ["4243", "4244"]}


def test_words_that_are_not_job_ids_never_reach_the_record() -> None:
    assert _parse_submitted("pretrain 12;cluster\nsft finished now\nsft -1", STAGES) == {}


def _submitted_run(tmp_path, stubs):
    """A run as submit leaves it (status RUNNING as job 41, jobs.json naming it), with stand-ins for squeue and
    scancel on PATH that record their arguments."""
    from llmops.runs.rundir import RunDir
    from llmops.spec.load import parse_spec
    from llmops_testing import tiny_spec

    calls = tmp_path / "calls"
    for name in ("squeue", "scancel"):
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n')
        (stubs / name).chmod(0o755)
    run = RunDir.create(parse_spec({**tiny_spec("jobs"), "backend": "slurm"}), tmp_path / "runs" / "jobs-1")
    (run.path / "slurm").mkdir()
    (run.path / "slurm" / "jobs.json").write_text(json.dumps({"stages": {"pretrain": ["41"]}, "submitted_at": 1.0}))
    run.update_status(state="RUNNING", backend="slurm", job_id="41", stage="pretrain")
    return run, calls


def test_a_damaged_or_lost_jobs_record_or_status_still_lets_the_run_be_cancelled(tmp_path, monkeypatch):
    """jobs.json lost: status said RUNNING for ever and cancel sent nothing (then waited 2 minutes); jobs.json of
    another shape: a TypeError traceback in `llmops status` of every run; status.json damaged: the job ran on."""
    from llmops_testing import llmops

    stubs = tmp_path / "stubs"
    stubs.mkdir()
    env = {"PATH": f"{stubs}:{os.environ['PATH']}", "COLUMNS": "250"}
    run, calls = _submitted_run(tmp_path, stubs)
    (run.path / "slurm" / "jobs.json").write_text("[1, 2]")
    every = llmops("status", "--runs-dir", str(run.path.parent), env=env)
    assert every.returncode == 0 and "(last known)" in every.stdout and "jobs.json is damaged" in every.stdout, every
    res = llmops("cancel", str(run.path), env=env, timeout=60)
    assert res.returncode == 2 and "the cancel was sent" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert "scancel --state=RUNNING --signal=TERM 41" in calls.read_text()

    run, calls = _submitted_run(tmp_path / "lost", stubs)
    (run.path / "slurm" / "jobs.json").unlink()
    res = llmops("status", str(run.path), env=env)
    assert res.returncode == 2 and "jobs.json is gone" in res.stderr and "job(s) 41" in res.stderr, res.stderr
    assert llmops("cancel", "--force", str(run.path), env=env, timeout=60).returncode == 2
    assert "scancel --signal=KILL --full 41" in calls.read_text()

    run, calls = _submitted_run(tmp_path / "damaged", stubs)
    (run.path / "status.json").write_text('{"state": ')
    res = llmops("cancel", "--force", str(run.path), env=env, timeout=60)
    assert res.returncode == 2 and "the cancel was sent" in res.stderr and "status.json is damaged" in res.stderr
    assert "scancel --signal=KILL --full 41" in calls.read_text()


def test_a_finished_slurm_run_is_started_again_with_submit_not_run(tmp_path):
    """The advice was `llmops run SPEC`, which trains on this machine (the local backend)."""
    from llmops_testing import llmops

    stubs = tmp_path / "stubs"
    stubs.mkdir()
    run, _ = _submitted_run(tmp_path, stubs)
    run.update_status(state="SUCCEEDED")
    res = llmops("resume", str(run.path), env={"PATH": f"{stubs}:{os.environ['PATH']}", "COLUMNS": "250"})
    assert res.returncode == 2 and f"`llmops submit {run.spec_path}`" in res.stderr, res.stderr


def test_a_controller_that_does_not_answer_is_named_not_a_traceback():
    import pytest

    from llmops.backends.slurm.transport import LocalTransport
    from llmops.errors import UserError

    with pytest.raises(UserError, match="did not answer within 1 s"):
        LocalTransport().run(["sleep", "5"], timeout=1)
