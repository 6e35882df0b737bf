"""Transformer Engine is pointed at the cuDNN torch came with (llmops_model._same_cudnn_as_torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


PROBE = """
import json, sys

class Hide:  # as where Transformer Engine is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "transformer_engine":
            raise ModuleNotFoundError(name, name=name)

if sys.argv[1] == "hidden":
    sys.meta_path.insert(0, Hide())
import llmops_model  # noqa: F401  (first, as in training: it points TE at torch's cuDNN)
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:
    import transformer_engine.pytorch  # noqa: F401
    te = True
except ImportError:
    te = False
try:
    version = torch.backends.cudnn.version()
except RuntimeError as e:  # "cuDNN version incompatibility: PyTorch was compiled against ..."
    version = str(e)
q = torch.randn(2, 16, 2048, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # GPT-1.3B's heads
try:
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    cudnn_sdpa = True
except RuntimeError as e:
    cudnn_sdpa = str(e).splitlines()[0]
with open("/proc/self/maps") as maps:
    libs = sorted({line.split()[-1] for line in maps if "/libcudnn" in line})
print(json.dumps({"te": te, "version": version, "cudnn_sdpa": cudnn_sdpa, "libs": libs}))
"""


def _probe(mode: str) -> dict:
    import json

    res = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _te_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformer_engine") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _te_importable(),
                    reason="needs a CUDA GPU and Transformer Engine")
def test_with_transformer_engine_importable_torch_keeps_its_cudnn_attention():
    """The fast path's attention is torch's SDPA on cuDNN's kernels. With TE importable (what the GPU image
    gives), the process must load the same cuDNN, pass torch's version check and keep cuDNN attention, as
    without TE: a lease measured the fast path 7% slower on flash kernels when it did not."""
    without, with_te = _probe("hidden"), _probe("importable")
    assert not without["te"] and with_te["te"]
    assert without["cudnn_sdpa"] is True, without  # else this GPU or torch has no cuDNN attention at all
    assert with_te["version"] == without["version"], (with_te, without)
    assert with_te["cudnn_sdpa"] is True, with_te
    folders = {lib.rsplit("/", 1)[0] for lib in with_te["libs"]}
    assert folders == {lib.rsplit("/", 1)[0] for lib in without["libs"]}, (with_te["libs"], without["libs"])
