"""Submission from a laptop: the user's own ssh/scp to a login node, here an sshd on loopback.

The test starts sshd on 127.0.0.1 with throwaway keys and an ssh_config of its own (passed as
slurm.ssh_options, so ~/.ssh is untouched); nothing leaves this machine. The "cluster side" run
directory lies in another folder than the local one, so everything the local commands show
came over ssh.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmops_testing import llmops, write_spec
from llmops_testing.slurm import ended_state, events, two_node_spec

pytestmark = pytest.mark.slurm

HOST = "llmops-test-login"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_configs(keys: Path, slurm_conf: str) -> tuple[Path, Path]:
    """Throwaway keys, an sshd_config on a free loopback port, and an ssh_config with the host aliases."""
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "user_key.pub", keys / "authorized_keys")
    port = free_port()
    (keys / "sshd_config").write_text(f"""ListenAddress 127.0.0.1
Port {port}
HostKey {keys / 'host_key'}
AuthorizedKeysFile {keys / 'authorized_keys'}
PidFile {keys / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
SetEnv SLURM_CONF={slurm_conf}
Subsystem sftp internal-sftp
""")
    (keys / "ssh_config").write_text(f"""Host {HOST}
    HostName 127.0.0.1
    Port {port}
    User {getpass.getuser()}
    IdentityFile {keys / 'user_key'}
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking no
    UserKnownHostsFile {keys / 'known_hosts'}
    LogLevel ERROR
Host llmops-test-nowhere
    HostName 127.0.0.1
    Port {free_port()}
    BatchMode yes
""")
    return keys / "sshd_config", keys / "ssh_config"


@pytest.fixture
def login_node(slurm_conf: str, tmp_path: Path):
    """An sshd on loopback that gives logins the cluster's SLURM_CONF; yields the ssh_config to use."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not (os.path.exists(sshd) and shutil.which("ssh") and shutil.which("scp") and shutil.which("ssh-keygen")):
        pytest.skip("OpenSSH server and client are not installed (apt-get install openssh-server openssh-client)")
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    server_config, config = write_configs(keys, slurm_conf)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(server_config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while subprocess.run(["ssh", "-F", str(config), HOST, "true"], check=False,
                             capture_output=True).returncode != 0:
            if proc.poll() is not None or time.time() > deadline:
                detail = proc.stderr.read() if proc.poll() is not None else ""
                pytest.skip(f"could not start sshd on loopback: {detail}")
            time.sleep(0.3)
        yield config
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_two_node_run_submitted_over_ssh_with_status_and_logs(slurm_env, login_node: Path, tmp_path: Path) -> None:
    remote_root = tmp_path / "cluster-runs"
    spec = two_node_spec("tiny-ssh", steps=6, interval=3)
    spec["slurm"] = {"login": HOST, "remote_root": str(remote_root), "ssh_options": ["-F", str(login_node)],
                     "python": sys.executable,
                     # An image on a cluster without pyxis: the job says so and runs in the node's environment.
                     "container": {"image": "nvcr.io#nvidia/pytorch:24.07-py3"}, "container_runtime": "auto"}
    laptop = tmp_path / "laptop-runs"
    res = llmops("submit", str(write_spec(tmp_path / "spec.yaml", spec)), "--runs-dir", str(laptop), timeout=120)
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.strip().splitlines()[-1]
    remote, local = remote_root / run_id, laptop / run_id
    # scp carried the resolved spec and the scripts; the jobs run from the cluster's copy.
    assert (remote / "spec.yaml").read_text() == (local / "spec.yaml").read_text()
    assert (remote / "slurm" / "pretrain.sbatch").is_file()

    res = llmops("logs", run_id, "--follow", "--runs-dir", str(laptop), timeout=240)
    assert res.returncode == 0, res.stderr
    assert [line.split("]")[0] for line in res.stdout.splitlines() if line.startswith("[step ")] == \
        [f"[step {i}/6" for i in range(1, 7)]
    [st] = json.loads(llmops("status", run_id, "--runs-dir", str(laptop), "--json").stdout)
    assert (st["state"], st["backend"], st["restarts"], st["exit_code"]) == ("SUCCEEDED", "slurm", 0, 0)
    assert st["progress"]["step"] == 6 and ended_state(st["job_id"]) == "COMPLETED"
    # Both nodes took part: one job on n1 and n2, one layout over their 4 processes.
    assert any("start nodes=n[1-2]" in e for e in events(local))
    assert "layout tp2-pp2-dp1" in (local / "logs" / "pretrain.restart-0.log").read_text()
    batch_log = next((remote / "logs").glob("slurm-pretrain-*.out")).read_text()
    assert "pyxis is not installed on this cluster; running without the container image" in batch_log
    # The local directory mirrors the cluster's logs and progress, not its checkpoints.
    assert (local / "logs" / "pretrain.restart-0.log").read_bytes() == \
        (remote / "logs" / "pretrain.restart-0.log").read_bytes()
    assert sorted(p.name for p in (remote / "checkpoints").glob("iter_*")) == ["iter_0000003", "iter_0000006"]
    assert not (local / "checkpoints").exists()


def test_an_unreachable_login_node_is_a_clear_error(slurm_env, login_node: Path, tmp_path: Path) -> None:
    spec = two_node_spec("tiny-ssh-nowhere", steps=6)
    spec["slurm"] = {"login": "llmops-test-nowhere", "remote_root": str(tmp_path / "cluster-runs"),
                     "ssh_options": ["-F", str(login_node)]}
    res = llmops("submit", str(write_spec(tmp_path / "spec.yaml", spec)), "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "check that `ssh llmops-test-nowhere` works" in res.stderr
    assert not list((tmp_path / "runs").glob("*")), "nothing was submitted, so no run is left behind"
