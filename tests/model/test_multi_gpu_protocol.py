"""benchmarks/multi_gpu.py, the multi-GPU protocol, run on CPU processes over gloo.

The protocol is meant for machines with several GPUs; here the same runs (real
`llmops run`, torchrun, Megatron-Core) go through it with the tiny GPT so that
it is known to work before a GPU machine's time is spent on it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from llmops_testing import REPO

SCRIPT = str(REPO / "benchmarks" / "multi_gpu.py")


def _protocol(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, "--cpu", *args], check=False, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_layouts_agree_scale_and_a_checkpoint_moves_between_layouts(tmp_path):
    out = tmp_path / "mgpu"
    res = _protocol("--gpus", "2", "--steps", "6", "--warmup", "2", "--out", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["parity"]) == {"tp2", "pp2"}
    for name, check in summary["parity"].items():
        assert check["ok"] and check["steps"] == "1-6" and check["max_rel"] < 1e-4, (name, check)
    resume = summary["resume"]
    assert resume["ok"] and resume["steps"] == "4-6", resume
    assert "step 3, saved as tp2-pp1-dp1, now tp1-pp2-dp1" in resume["resumed"]
    assert set(summary["scaling"]) == {"dp2", "tp2"} and all(e > 0 for e in summary["scaling"].values())
    results = json.loads((out / "results.json").read_text())
    assert results["dp2"]["global_batch"] == 2 * results["ref"]["global_batch"]  # weak scaling
    assert "scaling efficiency dp2" in res.stdout and "DIFFERS" not in res.stdout

    # A second call with the same folder keeps what ran and only summarizes again.
    again = _protocol("--gpus", "2", "--steps", "6", "--warmup", "2", "--out", str(out), timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("done in an earlier call; kept") == len(results) - 1  # all but _config
    assert json.loads((out / "summary.json").read_text()) == summary


def test_bad_arguments_exit_2_with_the_fix(tmp_path):
    res = _protocol("--gpus", "3", "--steps", "4", "--runs", "ref", "nope", "--out", str(tmp_path))
    assert res.returncode == 2
    assert "--gpus 3: use 2, 4 or 8" in res.stderr
    assert "use at least 12" in res.stderr
    assert "--runs nope: not a run of this protocol" in res.stderr

    (tmp_path / "results.json").write_text(json.dumps({"_config": {"size": "gpt-1.3b"}}))
    res = _protocol("--gpus", "2", "--out", str(tmp_path), timeout=120)
    assert res.returncode == 2 and "holds runs of another configuration" in res.stderr
