"""Disk full during a background (async) checkpoint save, on a GPU: the failure surfaces at the next
step, the partial checkpoint is removed, the previous one stays the latest and training goes on.

Async saves run only on GPUs (the checkpoint writer stages CUDA tensors), so
this is the GPU counterpart of the CPU disk-full case in test_local_faults.py.
The disk is a real tmpfs with room for one checkpoint of the test model.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest
import torch

from llmops_testing import llmops, log_text, losses, start, tiny_spec, wait_state, write_spec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

STEPS, INTERVAL = 30, 10


def _spec(name: str, ckpt_dir: Path) -> dict:
    spec = tiny_spec(name, steps=STEPS, checkpoint={"interval": INTERVAL, "keep_last": 5, "async_save": True,
                                                    "dir": str(ckpt_dir)})
    spec["resources"] = {"gpus_per_node": 1}
    spec["train"]["log_interval"] = 1
    return spec


@pytest.fixture
def small_disk(tmp_path: Path):
    """A tmpfs with room for 1.6 checkpoints, sized from a first, uninterrupted run (the reference)."""
    runs = tmp_path / "runs"
    reference = start(write_spec(tmp_path / "ref.yaml", _spec("reference", tmp_path / "ref-ckpt")), runs)
    assert wait_state(reference, {"SUCCEEDED", "FAILED"}, timeout=300)["state"] == "SUCCEEDED", log_text(reference)
    one = sum(f.stat().st_size for f in (tmp_path / "ref-ckpt" / f"iter_{INTERVAL:07d}").rglob("*"))
    mount = tmp_path / "small-disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(one * 1.6) // 4096 * 4}k", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()}); needs root or CAP_SYS_ADMIN")
    yield mount, reference
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_background_save_on_a_full_disk_fails_cleanly_and_training_goes_on(small_disk, tmp_path):
    mount, reference = small_disk
    runs = tmp_path / "runs"
    run = start(write_spec(tmp_path / "full.yaml", _spec("disk-full", mount)), runs)
    final = wait_state(run, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=300)
    text = log_text(run)
    assert final["state"] == "FAILED", final  # the final (synchronous) save cannot be written either
    assert final["stages"]["pretrain"]["restarts"] == 0, text  # not a crash: no blind retry
    assert f"checkpoint step={2 * INTERVAL} could not be written" in text and "training goes on" in text, text
    assert "could not be written: the disk is full: " in text and "Traceback" not in text, text
    assert "step 2: forward and backward captured as a CUDA graph" in text, text  # the defaults' fast path
    # Steps are logged a step late on GPUs (their values are read once the next is queued), yet each step's
    # line still comes before its checkpoint's.
    assert text.index(f"[step {INTERVAL}/") < text.index(f"checkpoint step={INTERVAL} "), text
    # ... and its time is the GPU's, not when the host got round to reading it: the step read early (before
    # its save) and the step after the save take about as long as the others.
    rows = [json.loads(line) for line in (run / "stages" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    times = {r["step"]: r["step_time"] for r in rows if r["restart"] == 0}
    usual = statistics.median(times[s] for s in range(3, INTERVAL))
    for s in (INTERVAL, INTERVAL + 1):
        assert usual / 3 < times[s] < 3 * usual, (s, times)
    assert sorted(p.name for p in mount.iterdir()) == ["iter_0000010", "latest_checkpointed_iteration.txt",
                                                       "llmops-owner.json"]
    assert (mount / "latest_checkpointed_iteration.txt").read_text().strip() == str(INTERVAL)
    assert sorted(losses(run)) == list(range(1, STEPS + 1))  # it trained on to the end
    assert losses(run)[STEPS] == pytest.approx(losses(reference)[STEPS], rel=2e-2)

    subprocess.run(["mount", "-o", "remount,size=256m", str(mount)], check=True)  # space freed
    res = llmops("resume", run.name, "--detach", "--runs-dir", str(runs))
    assert res.returncode == 0, res.stderr
    assert wait_state(run, {"SUCCEEDED", "FAILED"}, timeout=300)["state"] == "SUCCEEDED", log_text(run)
    assert f"resumed from iter_{INTERVAL:07d}" in (run / "logs" / "pretrain.restart-1.log").read_text()
