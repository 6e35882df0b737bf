"""Transformer Engine is pointed at the cuDNN torch came with (llmops_model._same_cudnn_as_torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SHOW = "import os, llmops_model; print(os.environ.get('CUDNN_HOME'), os.environ.get('CUDNN_PATH'))"


def _imported(tmp_path: Path, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("CUDNN_HOME", "CUDNN_PATH")}
    base["PYTHONPATH"] = os.pathsep.join([str(tmp_path), base.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", SHOW], capture_output=True, text=True, timeout=120,
                         env={**base, **env})
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_transformer_engine_is_pointed_at_torchs_own_cudnn(tmp_path):
    """TE loads cuDNN globally and prefers a system copy; torch's pip wheels bundle another (nvidia.cudnn), whose
    version check then fails and turns torch's cuDNN attention off (an H200 lease: cuDNN 9.14 from the CUDA
    toolkit against torch's 9.19, SDPA on a slower kernel). CUDNN_HOME, which TE reads first, names torch's."""
    assert _imported(tmp_path) == "None None"  # no pip cuDNN (this CPU machine): nothing is set
    bundled = tmp_path / "nvidia" / "cudnn"
    (bundled / "lib").mkdir(parents=True)
    (bundled / "lib" / "libcudnn.so.9").write_bytes(b"")
    assert _imported(tmp_path) == f"{bundled} None"
    # whoever set either variable chose: left alone
    assert _imported(tmp_path, CUDNN_PATH="/opt/cudnn") == "None /opt/cudnn"
    assert _imported(tmp_path, CUDNN_HOME="/opt/cudnn") == "/opt/cudnn None"
