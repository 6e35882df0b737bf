"""On a GPU, the fast path (SDPA, fused kernels, compiled layers, CUDA graphs) trains like Megatron's unfused path.

Each configuration trains in its own process (the kernel stand-ins are
installed process-wide) on the same batches from the same initial weights;
the losses must agree within bf16 tolerance at every step.
"""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from llmops_testing import run_one_rank

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SCRIPT = textwrap.dedent("""
    import json, os, sys, tempfile
    from pathlib import Path
    import torch
    from llmops.spec.load import parse_spec
    from llmops_model import parallel
    from llmops_model.train import loop

    case = json.loads(sys.argv[1])
    spec = parse_spec({"name": "fast-path", "resources": {"gpus_per_node": 1},
                       "model": {"preset": "gpt-125m", "seq_length": 512, "attention": case["attention"],
                                 "compile": case["compile"], "dropout": case.get("dropout", 0.0)},
                       "train": {"steps": 100, "global_batch_size": 8, "micro_batch_size": 4,
                                 "lr": case.get("lr", 3e-4), "min_lr": case.get("lr", 3e-4) / 10,
                                 "warmup_steps": 1, "precision": "bf16", "fused_kernels": case["fused"],
                                 "cuda_graphs": case["graphs"], "tensorboard": False}})
    layout, device = parallel.setup(spec)
    t = loop.build(spec, layout=layout, device=device, ckpt_root=Path(tempfile.mkdtemp()))
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(12):
        tok = torch.randint(0, spec.model.vocab_size, (4, 513), generator=g)
        batches.append({"tokens": tok[:, :-1].to(device), "labels": tok[:, 1:].to(device),
                        "loss_mask": torch.ones(4, 512, device=device),
                        "position_ids": torch.arange(512, device=device).expand(4, 512).contiguous()})
    losses, norms = [], []
    for step in range(6):
        # a fresh pair of batches every step (so a replayed graph must read its new inputs), or the same pair
        pair = batches[2 * step:2 * step + 2] if case.get("fresh", True) else batches[:2]
        got = loop.train_step(t, iter(pair)).get()
        losses.append(got["loss"])
        norms.append(got["grad_norm"])
    out = {"losses": losses, "norms": norms, "replays": t.step_graph.replays if t.step_graph else 0}
    if case.get("reshape"):  # shorter sequences than the captured step: must run eagerly, not replay
        short = [{k: v[:, :256].contiguous() for k, v in b.items()} for b in batches[:2]]
        out["short_loss"] = loop.train_step(t, iter(short)).get()["loss"]
        out["after_short"] = {"replays": t.step_graph.replays, "eager_calls": t.step_graph.eager_calls}
        out["back_loss"] = loop.train_step(t, iter(batches[:2])).get()["loss"]  # and the captured shape replays again
        out["after_back"] = t.step_graph.replays
    print(json.dumps(out))
""")


def _train(tmp_path, **case) -> dict:
    return run_one_rank(SCRIPT, case, tmp_path)


def test_fast_path_matches_megatron_unfused_path(tmp_path):
    reference = _train(tmp_path, attention="megatron", fused=False, compile=False, graphs=False, fresh=False)
    fast = _train(tmp_path, attention="sdpa", fused=True, compile=True, graphs=True, fresh=False)
    print(json.dumps({"reference": reference, "fast": fast}))
    assert reference["replays"] == 0 and fast["replays"] == 5  # the first step is eager, then the graph
    # The first step sees identical weights: only kernel rounding differs.
    assert fast["losses"][0] == pytest.approx(reference["losses"][0], rel=2e-3)
    # Later steps compound bf16 rounding through the updates; the curves still agree closely.
    for a, b in zip(fast["losses"], reference["losses"]):
        assert a == pytest.approx(b, rel=1e-2)
    for a, b in zip(fast["norms"], reference["norms"]):
        assert a == pytest.approx(b, rel=5e-2)
    assert fast["losses"][-1] < fast["losses"][0]  # and it learns (the same two batches every step)


def test_cuda_graph_replays_the_eager_step(tmp_path):
    eager = _train(tmp_path, attention="sdpa", fused=True, compile=False, graphs=False)
    graphed = _train(tmp_path, attention="sdpa", fused=True, compile=False, graphs=True, reshape=True)
    print(json.dumps({"eager": eager, "graphed": graphed}))
    assert eager["replays"] == 0 and graphed["replays"] == 5
    assert graphed["after_short"] == {"replays": 5, "eager_calls": 2}
    assert graphed["after_back"] == 6
    assert math.isfinite(graphed["short_loss"]) and math.isfinite(graphed["back_loss"])
    # Same kernels on the same inputs: the replayed steps follow the eager ones to rounding.
    for a, b in zip(graphed["losses"], eager["losses"]):
        assert a == pytest.approx(b, rel=1e-3)
    for a, b in zip(graphed["norms"], eager["norms"]):
        assert a == pytest.approx(b, rel=1e-2)


def test_cuda_graph_draws_new_dropout_masks_on_every_replay(tmp_path):
    # The same batch every step and a learning rate too small to move a bf16 weight: only the
    # dropout masks can change the loss. A graph that replayed its captured masks would repeat it.
    run = _train(tmp_path, attention="sdpa", fused=True, compile=False, graphs=True, dropout=0.1, lr=1e-12,
                 fresh=False)
    print(json.dumps(run))
    assert run["replays"] == 5
    replayed = run["losses"][1:]
    assert len(set(replayed)) == len(replayed), replayed


def test_wgrad_accumulation_is_an_fp32_accumulate():
    from llmops_model.fast.fallbacks import TorchWgradAccumulation, _addmm_out_dtype_works

    if not _addmm_out_dtype_works():
        pytest.skip("this torch has no addmm(out_dtype=float32) on CUDA")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4096, 512, device="cuda", generator=g).bfloat16()
    dy = torch.randn(4096, 256, device="cuda", generator=g).bfloat16()
    main = torch.randn(256, 512, device="cuda", generator=g)
    expected = main + dy.double().t() @ x.double()
    TorchWgradAccumulation.wgrad_gemm_accum_fp32(x, dy, main)
    assert main.dtype == torch.float32
    torch.testing.assert_close(main.double(), expected, rtol=1e-5, atol=1e-3)
