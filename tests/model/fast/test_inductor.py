"""The Inductor heuristics the compiled layers use: layer norms over 2,048-wide rows become persistent reductions."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

INSTALL = textwrap.dedent("""
    import torch
    from torch._inductor.virtualized import V
    from llmops_model.fast import inductor
    assert inductor.install() and inductor.install()  # idempotent
    assert type(V.choices).__name__ == "Choices", type(V.choices)
    assert V.choices.uuid() == f"llmops-persistent-rows-{inductor.ROW_LIMIT}"
    print("ok")
""")

GPU = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code
    from llmops_model.fast import inductor

    config.force_disable_caches = True  # a cached kernel would hide which heuristics compiled it
    x = torch.randn(4096, 2048, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    w, b = torch.ones(2048, device="cuda", dtype=torch.bfloat16), torch.zeros(2048, device="cuda", dtype=torch.bfloat16)

    def norm(x, residual):
        h = x + residual
        return h, F.layer_norm(h, (2048,), w, b)

    def kernels():
        torch._dynamo.reset()
        (h, y), code = run_and_get_code(torch.compile(norm), x, residual)
        torch.testing.assert_close(y, F.layer_norm(x + residual, (2048,), w, b), rtol=2e-2, atol=2e-2)
        return "".join(code)

    before = kernels()
    assert "def triton_red_" in before, "Inductor's own heuristics: a looped reduction (2,048 > 1,024)"
    assert inductor.install()
    after = kernels()
    assert "def triton_per_" in after and "def triton_red_" not in after, after
    print("ok")
""")


def _run(script: str) -> None:
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.strip().endswith("ok")


def test_install_makes_the_choices_this_process_heuristics():
    _run(INSTALL)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_layer_norm_over_2048_wide_rows_compiles_to_a_persistent_reduction():
    _run(GPU)


def test_the_choices_class_pickles_by_reference_in_a_fresh_process():
    """Inductor pickles its config (the choices class in it) for its cache and compile workers; a local class
    failed there with "Can't pickle local object" on every compile."""
    import pickle
    import subprocess
    import sys

    from llmops_model.fast import inductor

    data = pickle.dumps(inductor._choices_class())
    code = ("import pickle, sys; c = pickle.loads(sys.stdin.buffer.read()); "
            "print(c.__module__, c.__qualname__, c().uuid())")
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, check=True).stdout.decode()
    assert out.split() == ["llmops_model.fast.inductor", "Choices", f"llmops-persistent-rows-{inductor.ROW_LIMIT}"]
