"""Real Megatron-Core training on CPU through the CLI and the local backend (gloo, torchrun).

These runs share two reference runs (module fixtures) so the whole file costs
a few tiny trainings: an uninterrupted TP2xPP2 run, and the same run
preempted with `llmops cancel` and resumed with `llmops resume`.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from llmops.runs.checkpoints import OWNER
from llmops_testing import (
    REPO,
    llmops,
    log_text,
    losses,
    start,
    status,
    tiny_spec,
    wait_state,
    wait_step,
    write_spec,
)

STEPS = 40  # long enough that a cancel (a CLI start-up away) lands mid-run on a loaded machine
# Held-out loss every 2 steps and at the last step, over 3 micro-batches of 2 sequences of 64 tokens.
EVAL = {"eval_interval": 2, "eval_iters": 3}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def reference_and_preempted(workdir: Path) -> dict[str, Path]:
    """An uninterrupted run (checkpoints at 5 and 10) and one cancelled mid-run, then resumed."""
    runs = workdir / "runs"
    ref = tiny_spec("reference", tp=2, pp=2, steps=STEPS, checkpoint={"interval": 5, "keep_last": 2}, train=EVAL)
    cut = tiny_spec("preempted", tp=2, pp=2, steps=STEPS, train=EVAL)
    ref_dir = start(write_spec(workdir / "reference.yaml", ref), runs)
    cut_dir = start(write_spec(workdir / "preempted.yaml", cut), runs)
    wait_step(cut_dir, 2)
    res = llmops("cancel", cut_dir.name, "--runs-dir", str(runs))
    assert res.returncode == 0, res.stderr
    cancelled = status(cut_dir)
    assert "checkpointed" in cancelled.get("message", ""), f"the cancel did not land mid-run: {cancelled}"
    snapshot = workdir / "preempted-checkpoints"
    shutil.copytree(cut_dir / "checkpoints", snapshot)
    (snapshot / OWNER).unlink()  # handed over on purpose to the run that resumes it on another layout
    res = llmops("resume", cut_dir.name, "--detach", "--runs-dir", str(runs))
    assert res.returncode == 0, res.stderr
    wait_state(ref_dir, {"SUCCEEDED"})
    wait_state(cut_dir, {"SUCCEEDED"})
    return {"reference": ref_dir, "preempted": cut_dir, "snapshot": snapshot, "runs": runs,
            "cancelled_state": cancelled}


def test_tiny_example_runs_the_whole_pipeline(tmp_path):
    """The README's main command: prepare -> pretrain -> SFT -> DPO as one run, TP=2 x PP=2 on 4 CPU processes."""
    runs = tmp_path / "runs"
    res = llmops("run", str(REPO / "examples" / "tiny-cpu.yaml"), "--runs-dir", str(runs), cwd=tmp_path,
                 timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_dir = next(runs.iterdir())
    st = status(run_dir)
    assert st["state"] == "SUCCEEDED"
    assert {s: r["state"] for s, r in st["stages"].items()} == dict.fromkeys(
        ("prepare", "pretrain", "sft", "dpo"), "SUCCEEDED")
    # Each training stage's launcher started ahead, while the stage before ended (llmops.backends.local.supervisor).
    assert [st["stages"][s]["launched_ahead"] for s in ("pretrain", "sft", "dpo")] == [True, True, True]
    assert (tmp_path / "data" / "tiny-cpu" / "tokenizer.model").is_file()  # prepared where the spec says
    curve = losses(run_dir)
    assert sorted(curve) == list(range(1, 41))
    first, last = sum(curve[s] for s in (1, 2, 3)) / 3, sum(curve[s] for s in (38, 39, 40)) / 3
    assert first > 6.0, "starts near ln(1024): the tokens come from the prepared vocabulary"
    assert last < first - 0.5, f"loss did not fall: {first:.3f} -> {last:.3f}"
    sft = losses(run_dir, "sft")
    assert sum(sft[s] for s in (38, 39, 40)) / 3 < sum(sft[s] for s in (1, 2, 3)) / 3
    dpo = [json.loads(line) for line in (run_dir / "stages" / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert dpo[0]["accuracy"] == 0.0 and sum(r["accuracy"] for r in dpo[-10:]) / 10 > 0.6
    assert sum(r["margin"] for r in dpo[-10:]) > 0
    for stage, folder in (("pretrain", "checkpoints"), ("sft", "checkpoints-sft"), ("dpo", "checkpoints-dpo")):
        assert (run_dir / folder / "iter_0000040" / "llmops-manifest.json").is_file(), stage
    assert any((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert "40/40" in res.stdout and "dpo (4/4)" in res.stdout  # live progress of every stage
    report = (run_dir / "report.html").read_text()
    assert all(f"<h2>{s}</h2>" in report for s in ("pretrain", "sft", "dpo")) and "<polyline" in report


def held_out(run_dir: Path) -> dict[int, float]:
    """Held-out loss per step from pretrain's eval.jsonl; an evaluation run again after a restart keeps its latest."""
    rows = [json.loads(line) for line in (run_dir / "stages" / "pretrain" / "eval.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_layouts_give_the_same_losses(workdir, reference_and_preempted):
    """Training and held-out losses of TP1xPP1 (on two data-parallel ranks, the held-out micro-batches split
    unevenly), TP2xPP1 and TP1xPP2 match the TP2xPP2 reference's. (The held-out loss at step 2: the weights
    after step 3 depend on the run's length, over which the learning rate decays.)"""
    runs = workdir / "layout-runs"
    dirs = {
        (tp, pp): start(write_spec(workdir / f"l{tp}{pp}.yaml", tiny_spec(f"layout-tp{tp}-pp{pp}", tp=tp, pp=pp,
                                                                          procs=2, steps=3, train=EVAL)), runs)
        for tp, pp in ((1, 1), (2, 1), (1, 2))
    }
    reference, reference_held_out = (f(reference_and_preempted["reference"]) for f in (losses, held_out))
    for layout, run_dir in dirs.items():
        wait_state(run_dir, {"SUCCEEDED"})
        got = losses(run_dir)
        for step in (1, 2, 3):
            assert got[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (layout, step)
        got_held_out = held_out(run_dir)
        assert sorted(got_held_out) == [2, 3], layout  # every 2 steps, and at the last step
        assert got_held_out[2] == pytest.approx(reference_held_out[2], rel=1e-6), layout


def test_held_out_loss_is_measured_on_the_interval(reference_and_preempted):
    run_dir = reference_and_preempted["reference"]
    rows = [json.loads(line) for line in (run_dir / "stages" / "pretrain" / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(2, STEPS + 1, 2))
    assert all(math.isfinite(r["loss"]) and r["loss_tokens"] == 3 * 2 * 64 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.1, "the model learns the chain the held-out stream follows"
    text = log_text(run_dir)
    assert f"[eval {STEPS}/{STEPS}] loss=" in text
    assert text.index(f"[step {STEPS}/{STEPS}]") < text.index(f"[eval {STEPS}/{STEPS}]") < text.index(
        f"saved checkpoint step={STEPS}")


def test_preempted_run_resumes_with_identical_losses(reference_and_preempted):
    cut_dir = reference_and_preempted["preempted"]
    assert reference_and_preempted["cancelled_state"]["state"] == "CANCELLED"
    assert "checkpointed" in reference_and_preempted["cancelled_state"]["message"]
    assert losses(cut_dir) == losses(reference_and_preempted["reference"])  # exactly, on CPU
    assert held_out(cut_dir) == held_out(reference_and_preempted["reference"])  # none lost, none twice
    assert len((cut_dir / "stages" / "pretrain" / "eval.jsonl").read_text().splitlines()) == len(held_out(cut_dir))
    text = log_text(cut_dir)
    assert "preemption signal" in text and "resumed from iter_" in text
    assert (cut_dir / "logs" / "pretrain.restart-0.log").exists()
    assert (cut_dir / "logs" / "pretrain.restart-1.log").exists()  # a restart keeps the earlier log


def test_tp2pp2_checkpoint_resumes_as_tp1pp2(workdir, reference_and_preempted):
    snapshot = reference_and_preempted["snapshot"]
    spec = tiny_spec("relayout", tp=1, pp=2, steps=STEPS, checkpoint={"dir": str(snapshot)})
    run_dir = start(write_spec(workdir / "relayout.yaml", spec), workdir / "relayout-runs")
    wait_state(run_dir, {"SUCCEEDED"})
    assert "saved as tp2-pp2-dp1, now tp1-pp2-dp1" in log_text(run_dir)
    got, reference = losses(run_dir), losses(reference_and_preempted["reference"])
    assert got and min(got) > 1
    for step, loss in got.items():
        assert loss == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


def test_corrupt_newest_checkpoint_is_skipped(workdir, reference_and_preempted):
    ckpts = workdir / "corrupt-checkpoints"
    shutil.copytree(reference_and_preempted["reference"] / "checkpoints", ckpts)
    (ckpts / OWNER).unlink()
    shard = sorted((ckpts / f"iter_{STEPS:07d}").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    spec = tiny_spec("fallback", tp=2, pp=2, steps=STEPS, checkpoint={"dir": str(ckpts), "keep_last": 2})
    run_dir = start(write_spec(workdir / "fallback.yaml", spec), workdir / "fallback-runs")
    wait_state(run_dir, {"SUCCEEDED"})
    text = log_text(run_dir)
    assert f"skipping checkpoint iter_{STEPS:07d}: file {shard.name}" in text and "truncated" in text
    assert f"resumed from iter_{STEPS - 5:07d}" in text
    reference = losses(reference_and_preempted["reference"])
    assert losses(run_dir) == {s: reference[s] for s in range(STEPS - 4, STEPS + 1)}


def test_a_checkpoint_folder_of_another_run_is_refused_with_the_fix(workdir, reference_and_preempted):
    """Two runs in one folder would resume from and prune each other's checkpoints."""
    theirs = reference_and_preempted["reference"] / "checkpoints"
    before = sorted(p.name for p in theirs.iterdir())
    spec = tiny_spec("intruder", tp=2, pp=2, steps=STEPS, checkpoint={"dir": str(theirs)})
    run_dir = start(write_spec(workdir / "intruder.yaml", spec), workdir / "intruder-runs")
    st = wait_state(run_dir, {"FAILED"})
    assert st["exit_code"] == 2 and "belongs to run" in st["message"]
    assert "llmops resume" in log_text(run_dir)  # the fix, on the error's own line in the log
    assert sorted(p.name for p in theirs.iterdir()) == before
