"""The optimizer step that never reads the device (model/train/optimizer.py) against Megatron-Core's own step.

Two copies of the same GPT, each with its Megatron optimizer, over real gloo
process groups: one steps with Megatron's ``optimizer.step()``, the other with
:func:`llmops_model.train.optimizer.step` (with torch's fused AdamW, whose CPU
kernel takes the clip as its ``grad_scale`` as the CUDA one does, and with the
multi-tensor AdamW, where the gradients are scaled in a pass of their own). Every step gets the same gradients on
both, large enough that the clip applies on some steps and small enough that
it does not on others. The gradient norms and every parameter must agree.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from llmops.spec.load import parse_spec

    tp, distributed, fused = int(sys.argv[1]), sys.argv[2] == "distributed", sys.argv[3] == "fused"
    out = os.environ["OUT"]
    world = int(os.environ["WORLD_SIZE"])
    spec = parse_spec({"name": "x", "resources": {"cpu": True, "processes_per_node": world},
                       "parallelism": {"tensor": tp, "pipeline": 1}, "model": {"preset": "tiny"},
                       "data": {"synthetic": {}},
                       "train": {"steps": 2, "global_batch_size": 8, "micro_batch_size": 1}})
    from llmops_model import gpt, parallel
    from llmops_model.train import optimizer as optim_step
    layout, device = parallel.setup(spec)
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    def build(state=None):
        module = gpt.build_model(spec, device=device)
        if state is not None:
            module.load_state_dict(state)
        ddp = DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=distributed)
        model = DistributedDataParallel(config=module.config, ddp_config=ddp, module=module)
        opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2, clip_grad=1.0,
                                                     use_distributed_optimizer=distributed), [model])
        for o in getattr(opt, "chained_optimizers", [opt]):  # torch's fused AdamW runs on CPUs too
            for group in o.optimizer.param_groups:
                group["fused"], group["foreach"] = fused, not fused
        return module, model, opt

    ref_module, ref_model, ref_opt = build()
    module, model, opt = build(ref_module.state_dict())
    assert optim_step.applies(opt)
    clipped = 0
    for n, size in enumerate((3.0, 1e-4, 3.0, 1e-4)):  # the clip applies on the large steps only
        for m in (ref_model, model):
            m.zero_grad_buffer()
            g = torch.Generator().manual_seed(100 * n + layout.rank)
            for p in m.parameters():
                p.main_grad.copy_(size * torch.randn(p.main_grad.shape, generator=g))
        ok, ref_norm, _ = ref_opt.step()
        stepped, norm = optim_step.step(opt)
        assert ok and stepped
        assert not any(hasattr(o.optimizer, "grad_scale") for o in getattr(opt, "chained_optimizers", [opt]))
        assert torch.is_tensor(norm) and norm.dim() == 0, norm
        assert abs(norm.item() - ref_norm) <= 1e-6 * ref_norm, (n, norm.item(), ref_norm)
        clipped += ref_norm > 1.0
        for (name, a), b in zip(ref_module.named_parameters(), module.parameters(), strict=True):
            torch.testing.assert_close(b, a, rtol=2e-6, atol=1e-8, msg=lambda m: f"step {n}, {name}: {m}")
    assert clipped == 2, clipped
    # Counting zeros in the gradients is a host read: such an optimizer keeps Megatron's own step.
    for o in getattr(opt, "chained_optimizers", [opt]):
        o.config.log_num_zeros_in_grad = True
    assert not optim_step.applies(opt)
    stepped, norm = optim_step.step(opt)
    assert stepped and isinstance(norm, float), norm
    open(os.path.join(out, f"ok-{layout.rank}"), "w").close()
    dist.barrier()  # leave together: a rank exiting while gloo still serves its peer aborts
    parallel.teardown()
""")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(("tp", "optimizer", "adam"), [(1, "distributed", "fused"), (2, "plain", "foreach")],
                         ids=["dp2-distributed-optimizer-fused-adam", "tp2-optimizer-foreach-adam"])
def test_step_matches_megatron_step(tp, optimizer, adam, tmp_path):
    script = tmp_path / "optim_step.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_port()}",
           str(script), str(tp), optimizer, adam]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": "", "OMP_NUM_THREADS": "1", "OUT": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-5000:]
    assert sorted(p.name for p in tmp_path.glob("ok-*")) == ["ok-0", "ok-1"]  # every rank checked

