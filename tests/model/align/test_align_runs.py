"""SFT and DPO runs through the CLI and the local backend: real Megatron-Core on gloo, real checkpoints.

One module fixture pre-trains a tiny GPT on one process (one step: the start
checkpoint, resharded into every layout below), then starts every alignment run at once so that they share the
two cores: SFT and DPO at TP1PP1 and TP2PP2, a DPO run that is cancelled
(checkpoint after a preemption notice) and resumed, and a run whose data is
too broken to train on. Each spec has only the align stage, so the
entrypoint runs it directly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llmops_testing import llmops, losses, start, status, tiny_spec, wait_state, wait_step, write_spec

DPO_STEPS = 30


def _logs(run_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((run_dir / "logs").glob("*.restart-*.log")))


def _rows(run_dir: Path, name: str = "metrics.jsonl") -> dict[int, dict]:
    (folder,) = (run_dir / "stages").iterdir()  # each run here is a single align stage
    return {r["step"]: r for r in map(json.loads, (folder / name).read_text().splitlines())}


def _align(name: str, assets, start_from: Path, *, tp: int, pp: int, **align) -> dict:
    spec = tiny_spec(name, tp=tp, pp=pp, model={"preset": "tiny", "vocab_size": assets.vocab,
                                                 "seq_length": assets.seq})
    del spec["train"]
    spec["checkpoint"] = {"interval": 100}  # the final save only (and the preemption save)
    spec["align"] = {"tokenizer": str(assets.tokenizer), "start_from": str(start_from), "global_batch_size": 8,
                     "micro_batch_size": 2, **align}
    return spec


def _sft(name, assets, start_from, **kw) -> dict:
    return _align(name, assets, start_from, method="sft", data={"path": str(assets.sft), "valid_fraction": 0.1},
                  steps=6, lr=1e-3, eval_interval=3, **kw)


def _dpo(name, assets, start_from, **kw) -> dict:
    return _align(name, assets, start_from, method="dpo", data={"path": str(assets.dpo), "valid_fraction": 0.125},
                  steps=DPO_STEPS, lr=3e-3, dpo={"beta": 0.1}, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, assets) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("align-runs")
    root = work / "runs"
    pre = tiny_spec("pretrain", steps=1, train={"warmup_steps": 0}, model={"preset": "tiny", "vocab_size": assets.vocab,
                                                            "seq_length": assets.seq},
                    checkpoint={"dir": str(work / "pretrain-checkpoints")})
    wait_state(start(write_spec(work / "pretrain.yaml", pre), root), {"SUCCEEDED"})
    ckpts = work / "pretrain-checkpoints"
    specs = {
        "sft11": _sft("sft-tp1pp1", assets, ckpts, tp=1, pp=1),
        "sft22": _sft("sft-tp2pp2", assets, ckpts, tp=2, pp=2),
        "dpo11": _dpo("dpo-tp1pp1", assets, ckpts, tp=1, pp=1),
        "dpo22": _dpo("dpo-tp2pp2", assets, ckpts, tp=2, pp=2),
        "cut": _dpo("dpo-interrupted", assets, ckpts, tp=1, pp=1),
        "bad": _sft("too-much-bad-data", assets, ckpts, tp=1, pp=1, bad_data={"max_fraction": 0.01}),
    }
    dirs = {key: start(write_spec(work / f"{key}.yaml", spec), root) for key, spec in specs.items()}
    cut = dirs["cut"]
    wait_step(cut, 2)  # 28 steps left: time for the notice to arrive even on a loaded machine
    res = llmops("cancel", cut.name, "--runs-dir", str(root))
    assert res.returncode == 0, res.stderr
    dirs["cut_state"] = status(cut)
    res = llmops("resume", cut.name, "--detach", "--runs-dir", str(root))
    assert res.returncode == 0, res.stderr
    for key in ("sft11", "sft22", "dpo11", "dpo22", "cut"):
        wait_state(dirs[key], {"SUCCEEDED"}, timeout=400)
    wait_state(dirs["bad"], {"FAILED"})
    return dirs


def test_sft_gives_the_same_losses_at_tp1pp1_and_tp2pp2(runs, assets):
    a, b = _rows(runs["sft11"]), _rows(runs["sft22"])
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5), step
        assert b[step]["loss_tokens"] == a[step]["loss_tokens"] > 0  # the same assistant tokens carry the loss
    assert a[6]["loss"] < a[1]["loss"]
    evals_a, evals_b = _rows(runs["sft11"], "eval.jsonl"), _rows(runs["sft22"], "eval.jsonl")
    assert sorted(evals_a) == [3, 6] and evals_b[6]["loss"] == pytest.approx(evals_a[6]["loss"], rel=1e-5)
    assert evals_a[6]["loss"] < evals_a[3]["loss"]  # the held-out loss falls too
    assert "saved as tp1-pp1-dp1, now tp2-pp2-dp1" in _logs(runs["sft22"])  # the start checkpoint, resharded
    assert (runs["sft11"] / "checkpoints-sft" / "iter_0000006" / "llmops-manifest.json").is_file()


def test_sft_run_quarantines_bad_lines_and_trains_on_the_rest(runs, assets):
    stats = json.loads((runs["sft11"] / "align-data-sft" / "stats.json").read_text())
    assert stats["quarantined"] == {reason: 1 for reason in sorted(assets.bad_sft)}
    assert stats["examples"] == assets.sft_good and stats["truncated"] == 1
    quarantined = (runs["sft11"] / "align-data-sft" / "quarantine.jsonl").read_text().splitlines()
    assert len(quarantined) == len(assets.bad_sft)
    assert f"{len(assets.bad_sft)} quarantined (" in _logs(runs["sft11"])


def test_dpo_gives_the_same_losses_at_tp1pp1_and_tp2pp2(runs):
    a, b = _rows(runs["dpo11"]), _rows(runs["dpo22"])
    assert sorted(a) == sorted(b) == list(range(1, DPO_STEPS + 1))
    for step in a:
        for key in ("loss", "margin"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-6), (step, key)


def test_dpo_raises_preference_accuracy_and_margin_on_its_pairs(runs):
    rows = _rows(runs["dpo11"])
    first = rows[1]  # the policy is the reference: every reward is zero
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["accuracy"] == 0 and first["margin"] == pytest.approx(0, abs=1e-6)
    last = [rows[s] for s in range(DPO_STEPS - 4, DPO_STEPS + 1)]
    mean = {k: sum(r[k] for r in last) / len(last) for k in ("loss", "accuracy", "margin")}
    assert mean["accuracy"] >= 0.7 and mean["margin"] >= 0.2 and mean["loss"] <= 0.6, mean
    assert rows[DPO_STEPS]["chosen_reward"] > rows[DPO_STEPS]["rejected_reward"]
    evals = _rows(runs["dpo11"], "eval.jsonl")
    assert sorted(evals) == [DPO_STEPS] and evals[DPO_STEPS]["pairs"] == 4  # the held-out pairs


def test_interrupted_dpo_run_resumes_exactly(runs):
    state = runs["cut_state"]
    assert state["state"] == "CANCELLED" and "checkpointed" in state["message"]
    assert losses(runs["cut"], "dpo") == losses(runs["dpo11"], "dpo")  # exactly, on CPU
    ref, cut = _rows(runs["dpo11"]), _rows(runs["cut"])
    for step in ref:
        assert {k: cut[step][k] for k in ("accuracy", "margin", "grad_norm")} == \
               {k: ref[step][k] for k in ("accuracy", "margin", "grad_norm")}, step
    text = _logs(runs["cut"])
    assert "resumed from iter_" in text
    assert "reference log-probabilities read from reference.npz" in text  # not recomputed on resume


def test_too_much_bad_data_stops_with_the_counts_not_a_traceback(runs, assets):
    text = _logs(runs["bad"])
    assert "align.data: 7 of 168 lines" in text and "more than align.bad_data.max_fraction = 0.01" in text
    assert "quarantine.jsonl" in text and "Traceback" not in text
    assert not (runs["bad"] / "checkpoints-sft").exists()
    # followed from the terminal: the error and its fix are shown, and the exit code is bad input's (it was 1)
    res = llmops("resume", runs["bad"].name, "--runs-dir", str(runs["bad"].parent), env={"COLUMNS": "300"})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error: align.data: 7 of 168 lines" in res.stdout and "Fix: read " in res.stdout, res.stdout
