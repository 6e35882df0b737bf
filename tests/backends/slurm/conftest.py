"""Fixtures for the Slurm tests; helpers live in llmops_testing.slurm.

Tests marked `slurm` need the dev cluster (a real slurmctld and slurmd nodes on this machine):

    cluster/slurm/dev-cluster.sh up

They find it through $SLURM_CONF, or the dev cluster's config in $LLMOPS_SLURM_DEV_DIR
(default /tmp/llmops-slurm-dev), and skip with that instruction when no cluster answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from llmops_testing.slurm import cancel_jobs

DEV_CONF = Path(os.environ.get("LLMOPS_SLURM_DEV_DIR", "/tmp/llmops-slurm-dev")) / "slurm.conf"
UP = "start it with `cluster/slurm/dev-cluster.sh up`"


@pytest.fixture(scope="session")
def slurm_conf() -> str:
    """The config of a Slurm cluster whose nodes answer; skips when there is none."""
    conf = os.environ.get("SLURM_CONF") or (str(DEV_CONF) if DEV_CONF.exists() else "")
    if shutil.which("sbatch") is None:
        pytest.skip(f"the Slurm client commands are not installed: {UP} (it installs slurm-wlm)")
    if not conf:
        pytest.skip(f"no Slurm cluster is configured ($SLURM_CONF unset, no {DEV_CONF}): {UP}")
    res = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], check=False, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "SLURM_CONF": conf})
    usable = [s for s in res.stdout.split() if s.rstrip("*") in ("idle", "mix", "alloc")]
    if res.returncode != 0 or len(usable) < 2:
        pytest.skip(f"the Slurm cluster of {conf} has fewer than 2 usable nodes "
                    f"({res.stderr.strip() or res.stdout.split()}): {UP}")
    return conf


@pytest.fixture
def slurm_env(slurm_conf: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """SLURM_CONF for this test and the llmops processes it starts; cancels the test's jobs afterwards."""
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    yield {"SLURM_CONF": slurm_conf}
    cancel_jobs(tmp_path)
