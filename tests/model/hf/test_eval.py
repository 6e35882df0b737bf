"""`llmops eval` with the real lm-evaluation-harness and transformers, offline.

A module fixture trains one tiny run (pre-training and SFT, 2 steps each). lm-eval lives in an environment
of its own (it pins python-dateutil below the Kubernetes client's minimum), found through $LLMOPS_LM_EVAL;
the tests that run it skip without it (.ci/run installs it). The task is the repository's own
examples/eval/stdlib_docstrings.yaml, so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from llmops_testing import REPO, llmops, start, tiny_spec, wait_state, write_spec

pytest.importorskip("transformers", reason="the hf extra: pip install 'llmops[hf]'")

TASK = str(REPO / "examples" / "eval" / "stdlib_docstrings.yaml")


def _harness() -> Path | None:
    from llmops.errors import UserError
    from llmops_model.hf.evaluation import find_harness

    try:
        return find_harness()
    except UserError:
        return None


needs_lm_eval = pytest.mark.skipif(_harness() is None, reason="needs lm-eval in an environment of its own: set "
                                   "$LLMOPS_LM_EVAL to its lm-eval command (.ci/run installs one)")


@pytest.fixture(scope="module")
def run(tmp_path_factory, assets) -> Path:
    work = tmp_path_factory.mktemp("eval-run")
    spec = tiny_spec("eval-gpt", steps=2, train={"warmup_steps": 0},
                     model={"preset": "tiny", "vocab_size": assets.vocab, "seq_length": assets.seq},
                     tracking={"mlflow": {"uri": f"file:{work / 'mlruns'}", "experiment": "eval"}})
    spec["align"] = {"method": "sft", "tokenizer": str(assets.tokenizer), "data": {"path": str(assets.sft)},
                     "steps": 2, "global_batch_size": 8, "micro_batch_size": 2, "lr": 1e-3,
                     "bad_data": {"max_fraction": 0.2}}
    path = start(write_spec(work / "spec.yaml", spec), work / "runs")
    wait_state(path, {"SUCCEEDED"}, timeout=400)
    return path


def _eval(target: str, *args: str, tmp: Path, env: dict[str, str] | None = None):
    """`llmops eval` offline, its temporary files under `tmp`/scratch (checked for leftovers)."""
    scratch = tmp / "scratch"
    scratch.mkdir(exist_ok=True)
    return llmops(*(a for a in args if a == "--verbose"), "eval", target, *(a for a in args if a != "--verbose"),
                  timeout=600, env={"TMPDIR": str(scratch), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                    **(env or {})})


def _left_behind(tmp: Path) -> list[str]:
    return [p.name for p in (tmp / "scratch").glob("llmops-eval-*")]


def _score(results: dict, metric: str) -> float:
    return results["results"]["stdlib_docstrings"][f"{metric},none"]


@needs_lm_eval
def test_a_run_and_its_export_score_the_same_and_the_runs_scores_reach_its_report(run, tmp_path):
    res = _eval(run.name, "--tasks", TASK, "--limit", "40", "--num-fewshot", "1", "--runs-dir", str(run.parent),
                tmp=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "tasks: stdlib_docstrings (300 questions); at most 40 each" in res.stderr
    assert "loading eval-gpt" in res.stderr and "results: " in res.stderr  # exported, then evaluated
    assert "fatal:" not in res.stderr and "WARNING" not in res.stderr  # lm-eval's notices only with --verbose
    (saved,) = (run / "evals").glob("sft-step2-*.json")
    results = json.loads(saved.read_text())
    assert results["llmops"]["stage"] == "sft" and results["llmops"]["step"] == 2
    assert results["n-shot"]["stdlib_docstrings"] == 1
    assert results["n-samples"]["stdlib_docstrings"]["effective"] == 40
    for metric in ("acc", "acc_norm"):
        assert 0.0 <= _score(results, metric) <= 1.0
        assert f"{_score(results, metric):.4f}" in res.stdout
    assert _left_behind(tmp_path) == []

    # The scores joined the run's tracking run (MLflow, a file store here) at the checkpoint's step, with the
    # results file, and left its status as training left it.
    assert "sent to mlflow: 2 scores as sft/lm_eval/... at step 2" in res.stderr
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(f"file:{run.parent.parent / 'mlruns'}")
    (tracked,) = client.search_runs([client.get_experiment_by_name("eval").experiment_id])
    assert tracked.info.status == "FINISHED"
    for metric in ("acc", "acc_norm"):
        (point,) = client.get_metric_history(tracked.info.run_id, f"sft/lm_eval/stdlib_docstrings/{metric}")
        assert point.step == 2 and point.value == pytest.approx(_score(results, metric))
    assert saved.name in [f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(tracked.info.run_id, "sft")]

    report = llmops("report", run.name, "--runs-dir", str(run.parent))
    assert report.returncode == 0, report.stderr
    assert "evaluations" in report.stdout and "stdlib_docstrings" in report.stdout
    page = (run / "report.html").read_text()
    assert "<h2>Evaluations</h2>" in page and saved.name in page and f"{_score(results, 'acc'):.4f}" in page

    # The exported folder, evaluated as a Hugging Face model, is the model the run's evaluation scored (the task
    # given this time as the folder that holds it).
    folder = tmp_path / "hf"
    assert llmops("export", run.name, "--out", str(folder), "--runs-dir", str(run.parent)).returncode == 0
    res = _eval(str(folder), "--verbose", "--tasks", str(Path(TASK).parent), "--limit", "40", "--num-fewshot", "1",
                "--out", str(tmp_path / "scores.json"), tmp=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "INFO" in res.stderr  # --verbose: lm-eval's own log lines
    again = json.loads((tmp_path / "scores.json").read_text())
    assert again["llmops"]["model"] == str(folder) and again["llmops"]["run"] is None
    for metric in ("acc", "acc_norm"):
        assert _score(again, metric) == pytest.approx(_score(results, metric), abs=1e-6)
    assert list((run / "evals").iterdir()) == [saved]  # a folder's scores are not the run's
    assert _left_behind(tmp_path) == []

    # A vocabulary the weights do not have is refused before lm-eval starts (it was lm-eval's exit 1), as are
    # weights whose headers do not read (test_export.py).
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 64}))
    res = _eval(str(folder), "--tasks", TASK, "--limit", "4", "--out", str(tmp_path / "none.json"), tmp=tmp_path)
    assert res.returncode == 2 and "but its token embedding is" in res.stderr, res.stderr
    # lm-eval failing after it started (an MLP width the weights do not have): exit 1 with the end of what it said.
    key = "intermediate_size" if "intermediate_size" in config else "n_inner"
    wider = (config.get(key) or 4 * config.get("n_embd", 0)) + 64
    (folder / "config.json").write_text(json.dumps({**config, key: wider}))
    res = _eval(str(folder), "--tasks", TASK, "--limit", "4", "--out", str(tmp_path / "none.json"), tmp=tmp_path)
    assert res.returncode == 1, res.stderr
    assert "lm-eval stopped (exit 1) before it was done" in res.stderr and "mismatch" in res.stderr.lower()
    assert not (tmp_path / "none.json").exists() and _left_behind(tmp_path) == []


@needs_lm_eval
def test_bad_input_is_exit_2_with_the_fix_before_anything_is_exported(run, tmp_path):
    before = sorted((run / "evals").glob("*")) if (run / "evals").exists() else []
    common = ("--runs-dir", str(run.parent))

    not_a_task = tmp_path / "notes" / "notes.yaml"
    not_a_task.parent.mkdir()
    not_a_task.write_text("description: a YAML file, but no task in it\n")
    for args, said in [
        (("--tasks", str(not_a_task)), "is not an lm-eval task: it has no `task:` or `group:` key"),
        (("--tasks", str(not_a_task.parent)), "the folder holds no lm-eval task"),
        (("--tasks", "stdlib_docstringz"), "lm-eval has no task, group or tag of that name"),
        (("--tasks", TASK, "--num-fewshot", "21"), "task stdlib_docstrings has 20 solved example(s)"),
    ]:
        res = _eval(run.name, *args, *common, tmp=tmp_path)
        assert res.returncode == 2, res.stderr
        assert said in res.stderr and "Fix:" in res.stderr and "Traceback" not in res.stderr
        assert "loading eval-gpt" not in res.stderr  # refused before the checkpoint was exported

    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "taken.json").write_text("{}")
    for target, args, said in [
        (run.name, ("--tasks", "examples/eval/missing.yaml"), "no such file or folder"),
        (run.name, ("--tasks", str(REPO / "README.md")), "not an lm-eval task YAML file"),
        (str(empty), ("--tasks", TASK), "is not a run, a checkpoint or a Hugging Face model folder"),
        (run.name, ("--tasks", TASK, "--stage", "sft", "--step", "999"), "no checkpoint at that step"),
        (run.name, ("--tasks", TASK, "--out", str(tmp_path / "taken.json")), "already exists"),
        (run.name, ("--tasks", TASK, "--device", "tpu"), "is not auto, cpu or cuda"),
    ]:
        res = _eval(target, *args, *common, tmp=tmp_path)
        assert res.returncode == 2, res.stderr
        assert said in res.stderr and "Fix:" in res.stderr
    after = sorted((run / "evals").glob("*")) if (run / "evals").exists() else []
    assert after == before and _left_behind(tmp_path) == []
    assert (tmp_path / "taken.json").read_text() == "{}"


def test_without_lm_eval_the_command_says_how_to_install_it(tmp_path):
    if _harness() == Path(sys.executable):
        pytest.skip("lm-eval is installed in llmops's own environment here")
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "hf"  # a folder that passes llmops's own checks: lm-eval is what is missing
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, folder / "model.safetensors")
    bare = {"LLMOPS_LM_EVAL": "", "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                          if not (Path(p) / "lm-eval").exists())}
    res = _eval(str(folder), "--tasks", TASK, tmp=tmp_path, env=bare)
    assert res.returncode == 2, res.stderr
    assert "needs lm-evaluation-harness" in res.stderr and "pip install 'lm-eval[hf]==0.4.13'" in res.stderr

    nowhere = str(tmp_path / "nowhere" / "lm-eval")
    res = _eval(str(folder), "--tasks", TASK, tmp=tmp_path, env={"LLMOPS_LM_EVAL": nowhere})
    assert res.returncode == 2 and "$LLMOPS_LM_EVAL is" in res.stderr and "Fix:" in res.stderr

def test_the_shipped_task_is_four_way_with_one_right_name_each():
    from llmops.prepare import align_corpus

    rows = [json.loads(line) for line in (REPO / "examples" / "eval" / "stdlib_docstrings.jsonl").read_text()
            .splitlines()]
    assert [r["split"] for r in rows].count("test") == 300 and [r["split"] for r in rows].count("validation") == 20
    assert all(len(set(r["choices"])) == 4 and 0 <= r["answer"] < 4 for r in rows)
    assert {r["answer"] for r in rows} == {0, 1, 2, 3}
    assert len({r["summary"] for r in rows}) == len(rows)
    made = align_corpus.choice_records(40, seed=3, max_chars=120)
    assert made == align_corpus.choice_records(40, seed=3, max_chars=120)
    pool = align_corpus.entries(120)
    by_summary, by_name = {e.summary: e for e in pool}, {e.name: e for e in pool}
    for r in made:  # the right name is the one the sentence documents; the others are of its kind, elsewhere
        right = by_summary[r["summary"]]
        assert r["choices"][r["answer"]] == right.name
        others = [by_name[n] for n in r["choices"] if n != right.name]
        assert all(o.kind == right.kind and o.module != right.module for o in others)
