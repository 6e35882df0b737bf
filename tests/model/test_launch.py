"""The per-node launcher every backend runs: a preemption notice to it means exit 75."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from llmops_testing import tiny_spec

from llmops.rundir import RunDir
from llmops.spec import parse_spec


@pytest.mark.parametrize("notice", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_notice_to_the_launcher_checkpoints_and_exits_75(tmp_path, notice):
    run = RunDir.create(parse_spec(tiny_spec("launch", tp=1, pp=2, steps=5000)), tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "llmops_model.launch", "--standalone", "--nnodes", "1",
                             "--nproc-per-node", "2", str(run.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while not (run.path / "stages" / "pretrain" / "progress.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    proc.send_signal(notice)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 75, out[-3000:]
    step = json.loads((run.path / "last_exit.json").read_text())["step"]
    assert (run.path / "checkpoints" / f"iter_{step:07d}" / "llmops-manifest.json").is_file()
    assert f"preemption signal {int(notice)}" in out
