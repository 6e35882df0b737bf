"""The CPU compatibility layer, checked in a fresh interpreter (it installs process-wide state)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer stays off when a GPU is present")


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=120, env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_cuda_device_arguments_land_on_cpu():
    out = _run("""
        import torch
        from llmops_model.compat import cpu as cpu_compat
        cpu_compat.activate()
        a = torch.empty(3, device="cuda")
        b = torch.zeros(2, device=torch.cuda.current_device())
        c = torch.ones(2).cuda()
        d = torch.ones(2).to("cuda")
        print(a.device, b.device, c.device, d.device, torch.ones(1).type())
    """)
    assert out.split() == ["cpu", "cpu", "cpu", "cpu", "torch.cuda.FloatTensor"]


def test_rng_tracker_forks_named_streams_and_restores_the_default():
    out = _run("""
        import torch
        from llmops_model.compat import cpu as cpu_compat
        cpu_compat.activate()
        from megatron.core.tensor_parallel import get_cuda_rng_tracker
        tracker = get_cuda_rng_tracker()
        assert type(tracker).__name__ == "CpuRNGStatesTracker"
        torch.manual_seed(0)
        tracker.add("model-parallel-rng", 123)
        before = torch.get_rng_state()
        with tracker.fork():
            first = torch.rand(3)
        assert torch.equal(torch.get_rng_state(), before)  # the default stream is untouched
        with tracker.fork():
            second = torch.rand(3)
        torch.manual_seed(123)
        expected = torch.rand(6)
        print(torch.equal(torch.cat([first, second]), expected))
    """)
    assert out.strip() == "True"


def test_inactive_without_activation():
    out = _run("""
        import torch
        import llmops_model.compat.cpu as c
        print(c.is_active(), torch.ones(1).type())
    """)
    assert out.split() == ["False", "torch.FloatTensor"]
