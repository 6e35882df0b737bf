"""The per-node launcher every backend runs: a preemption notice to it means exit 75."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from llmops.runs.rundir import RunDir
from llmops.spec.load import parse_spec
from llmops_testing import losses, tiny_spec


@pytest.mark.parametrize("notice", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_notice_to_the_launcher_checkpoints_and_exits_75(tmp_path, notice):
    run = RunDir.create(parse_spec(tiny_spec("launch", tp=1, pp=2, steps=5000)), tmp_path / "launch-1")
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


def test_a_notice_before_the_workers_exist_reaches_them_when_they_start(tmp_path):
    """A launcher with no workers yet (standing by here; importing, meeting its peers or forking elsewhere) keeps a
    notice for them: once started they stop at their first step boundary, checkpointed, and it exits 75, where
    it used to start them and train to the end (a cancel in the first seconds of a stage was lost)."""
    import os

    run = RunDir.create(parse_spec(tiny_spec("early", tp=1, pp=2, steps=5000)), tmp_path / "early-1")
    proc = subprocess.Popen([sys.executable, "-m", "llmops_model.launch", "--standalone", "--nnodes", "1",
                             "--nproc-per-node", "2", str(run.path)], env={**os.environ, "LLMOPS_STANDBY": "1"},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        said = []
        for line in proc.stdout:  # its notice handler is in place once it stands by
            said.append(line)
            if line.startswith("[llmops] standing by"):
                break
        assert said and said[-1].startswith("[llmops] standing by"), "".join(said)[-3000:]
        proc.send_signal(signal.SIGTERM)
        proc.stdin.write("go\n")
        proc.stdin.close()
        out = proc.stdout.read()
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:  # the notice was lost: 5000 steps to go
            proc.kill()
    assert proc.returncode == 75, out[-3000:]
    assert json.loads((run.path / "last_exit.json").read_text())["step"] == 1
    assert (run.path / "checkpoints" / "iter_0000001" / "llmops-manifest.json").is_file()
    assert "preemption signal 15: checkpoint at step 1" in out


def test_workers_forked_warm_train_as_fresh_interpreters_do_and_show_as_that_command(tmp_path):
    """CPU runs fork their workers from a forkserver that has imported torch and Megatron (llmops_model.warm);
    GPU runs, and LLMOPS_WARM_START=0, start each in a fresh interpreter. Both train alike."""
    import os

    import psutil

    from llmops_model.warm import find_workers

    got = {}
    for warm in ("1", "0"):
        run = RunDir.create(parse_spec(tiny_spec("warm", tp=1, pp=2, steps=6)), tmp_path / f"warm-{warm}")
        proc = subprocess.Popen([sys.executable, "-m", "llmops_model.launch", "--standalone", "--nnodes", "1",
                                 "--nproc-per-node", "2", str(run.path)], env={**os.environ, "LLMOPS_WARM_START": warm},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        found: dict = {}
        while proc.poll() is None and len(found) < 2:
            found = find_workers(run.path)
            time.sleep(0.1)
        assert sorted(found) == [0, 1], found  # by rank: from its title when forked, else from its environment
        parents = {" ".join(psutil.Process(p.ppid()).cmdline()) for p in found.values()}
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out[-3000:]
        forked = any("multiprocessing.forkserver" in line for line in parents)
        assert forked == (warm == "1"), parents
        got[warm] = losses(run.path)
    assert sorted(got["1"]) == list(range(1, 7)) and got["1"] == got["0"]


# Two agents of a two-node run on this host, as on two nodes: the first hosts the rendezvous store.
_AGENT = """
import json, sys
from llmops_model.launch import run_agent
sys.exit(run_agent(*json.loads(sys.argv[1])))
"""
# Each node's one worker sleeps, then exits with the given code.
_WORKER = "import sys, time; time.sleep(float(sys.argv[1])); sys.exit(int(sys.argv[2]))"


def _two_agents(tmp_path, *, host: tuple[float, int], other: tuple[float, int], grace: float):
    (tmp_path / "agent.py").write_text(_AGENT)
    (tmp_path / "worker.py").write_text(_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for is_host, (sleep, code) in ((1, host), (0, other)):
        torchrun = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                    "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "store-loss", "--max-restarts", "0",
                    "--rdzv-conf", f"is_host={is_host},store_loss_grace={grace}"]
        worker = [str(tmp_path / "worker.py"), str(sleep), str(code)]
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "agent.py"), json.dumps([torchrun, worker])],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return [(p.returncode, out) for p in procs for out, _ in [p.communicate(timeout=120)]]


def test_a_node_whose_workers_checkpoint_after_the_store_host_left_still_exits_75(tmp_path):
    # The store's node stops at once; the other node's workers are still finishing their exit.
    (host_code, host_out), (code, out) = _two_agents(tmp_path, host=(0, 75), other=(6, 75), grace=60)
    assert host_code == 75, host_out[-3000:]
    assert code == 75, out[-3000:]
    assert "rendezvous store (node 0's launcher) is gone" in out, out[-3000:]  # the race really happened


def test_a_node_whose_workers_outlive_the_grace_after_the_store_host_crashed_fails(tmp_path):
    started = time.monotonic()
    (host_code, _), (code, out) = _two_agents(tmp_path, host=(0, 1), other=(600, 0), grace=2)
    assert host_code == 1 and code == 1, out[-3000:]
    assert "[llmops] rendezvous failed (RendezvousConnectionError): the rendezvous store is gone and this node's " \
           "workers still run 2s later: node 0 stopped without them" in out, out[-3000:]
    assert time.monotonic() - started < 100  # torn down after the grace, not after the worker's 600 s
