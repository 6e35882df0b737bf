"""The distributed optimizer's checkpoint state (model/train/sharded_state.py) over real gloo process groups.

Megatron-Core's distributed optimizer is built on CPU with small gradient
buckets, so that its buffers hold several padded buckets (the case where
megatron-core 0.16.1's own 'fully_reshardable' save reads the state of
later buckets from shifted offsets). Each case checks the described state
against the ground truth (the saved fp32 'param' of every parameter is the
model's parameter), against Megatron's own description where that one is
right (a single bucket), then saves it with dist_checkpointing and loads it
through Megatron's loader into a different layout.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

BODY = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from llmops.spec.load import parse_spec

    phase, tp, buckets = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    out = os.environ["OUT"]
    world = int(os.environ["WORLD_SIZE"])
    spec = parse_spec({"name": "x", "resources": {"cpu": True, "processes_per_node": world},
                       "parallelism": {"tensor": tp, "pipeline": 1}, "model": {"preset": "tiny"},
                       "data": {"synthetic": {}},
                       "train": {"steps": 2, "global_batch_size": 8, "micro_batch_size": 1}})
    from llmops_model import gpt, parallel
    from llmops_model.train import sharded_state as optim_state
    layout, device = parallel.setup(spec)
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    module = gpt.build_model(spec, device=device)
    # overlap_grad_reduce is what makes Megatron cut the buffer into buckets of bucket_size elements.
    ddp = DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=True,
                                        overlap_grad_reduce=buckets == "many", bucket_size=20000)
    model = DistributedDataParallel(config=module.config, ddp_config=ddp, module=module)
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2, use_distributed_optimizer=True),
                                 [model])
    n_buckets = len(model.buffers[0].buckets)
    assert (n_buckets > 2) == (buckets == "many"), n_buckets

    def step(seed):
        g = torch.Generator().manual_seed(seed + layout.rank)
        for p in model.parameters():
            p.main_grad.copy_(torch.randn(p.main_grad.shape, generator=g))
        assert opt.step()[0]

    def local_states():
        (inner,) = opt.chained_optimizers
        return [{k: v.clone() for k, v in inner._get_main_param_and_optimizer_states(p).items() if k != "step"}
                for p in inner.model_param_group_index_map]

    model_sd = model.module.sharded_state_dict(prefix="")
    live = {(sh.key, sh.global_offset): sh.data for sh in nested_values(model_sd)}
    if phase == "save":
        step(0)
        step(1)
        state, where = optim_state.describe(opt, model_sd)
        assert where == "gpu", where  # the fast path (on CPU tensors here): no host round trip
        tensors = list(nested_values(state["param_state"]))
        assert len(tensors) == 3 * len(list(model.parameters()))
        for sh in tensors:  # ground truth: the fp32 main params are the (fp32, CPU) model params
            if sh.key.startswith("optimizer.state.param."):
                assert torch.equal(sh.data, live[(sh.key[len("optimizer.state.param."):], sh.global_offset)]), sh.key
            assert sh.data.abs().sum() > 0, sh.key  # moments of every parameter were written, none zero-padded
        # the path taken when GPU memory is short (each bucket's gather moved to the host) describes the same
        (inner,) = opt.chained_optimizers
        by_bucket = list(nested_values(optim_state._param_state(inner, model_sd, to_host=True)))
        assert [(a.key, a.global_offset) for a in by_bucket] == [(a.key, a.global_offset) for a in tensors]
        assert all(torch.equal(a.data, b.data) for a, b in zip(by_bucket, tensors, strict=True))
        if buckets == "one":  # Megatron's own description is right with one bucket: same keys, sharding, values
            ref = opt.sharded_state_dict(model_sd, is_loading=False, metadata=optim_state.FORMAT)
            assert sorted(ref) == sorted(state)
            for a, b in zip(tensors, nested_values(ref["param_state"]), strict=True):
                assert (a.key, a.global_shape, a.global_offset, a.axis_fragmentations, a.replica_id, a.dtype) == \\
                       (b.key, b.global_shape, b.global_offset, b.axis_fragmentations, b.replica_id, b.dtype)
                assert torch.equal(a.data, b.data), a.key
        os.makedirs(os.path.join(out, "ckpt"), exist_ok=True)
        dist_checkpointing.save({"model": model_sd, "optimizer": state}, os.path.join(out, "ckpt"))
    else:  # load into this (different) layout through Megatron's own loader, as loop.resume does
        from llmops_model.compat import mcore as mcore_fixes
        mcore_fixes.apply()
        step(7)  # different state than the checkpoint's, which the load must replace entirely
        before = local_states()
        loaded = dist_checkpointing.load(
            {"model": model_sd,
             "optimizer": opt.sharded_state_dict(model_sd, is_loading=True, metadata=optim_state.FORMAT)},
            os.path.join(out, "ckpt"))
        model.module.load_state_dict(loaded["model"])
        opt.load_state_dict(loaded["optimizer"])
        after = local_states()
        (inner,) = opt.chained_optimizers
        for model_param, state, old in zip(inner.model_param_group_index_map, after, before, strict=True):
            # the loaded fp32 main param is the loaded model param, at this rank's slice of it
            (bucket_maps,) = inner.gbuf_ranges[0].values()
            ranges = next(m["param_map"][model_param] for m in bucket_maps if model_param in m["param_map"])["param"]
            assert torch.equal(state["param"], model_param.detach().view(-1)[ranges.start:ranges.end])
            assert not torch.equal(state["exp_avg"], old["exp_avg"])
            assert state["exp_avg_sq"].min() >= 0 and state["exp_avg_sq"].abs().sum() > 0
    open(os.path.join(out, f"{phase}-ok-{layout.rank}"), "w").close()
    dist.barrier()  # leave together: a rank exiting while gloo still serves its peer aborts
    parallel.teardown()
""")
# Under a main guard: the checkpoint writer starts helper processes that re-import the script.
SCRIPT = "import os, sys, torch, torch.distributed as dist\nif __name__ == '__main__':\n" + \
    textwrap.indent(BODY, "    ")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(tmp_path, nproc: int, *args: str) -> None:
    script = tmp_path / "optim_state.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={_port()}",
           str(script), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": "", "OMP_NUM_THREADS": "1", "OUT": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-5000:]
    assert sorted(p.name for p in tmp_path.glob(f"{args[0]}-ok-*")) == \
        sorted(f"{args[0]}-ok-{r}" for r in range(nproc))  # every rank checked


@pytest.mark.parametrize(("save", "load"), [
    ((2, 1, "many"), (2, 2, "many")),   # DP2 with padded buckets (gathered) -> TP2
    ((2, 2, "many"), (2, 1, "one")),    # TP2, DP1 (views of the live state) -> DP2, one bucket
    ((2, 1, "one"), (1, 1, "many")),    # one bucket: equal to Megatron's own description -> one process
], ids=["dp2-buckets-to-tp2", "tp2-to-dp2", "dp2-one-bucket-to-single"])
def test_described_state_is_exact_and_loads_into_another_layout(save, load, tmp_path):
    nproc, tp, buckets = save
    _torchrun(tmp_path, nproc, "save", str(tp), buckets)
    nproc, tp, buckets = load
    _torchrun(tmp_path, nproc, "load", str(tp), buckets)
