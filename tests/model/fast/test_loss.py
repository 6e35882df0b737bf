"""The two-pass vocabulary-parallel cross entropy against Megatron's, over real gloo process groups (CPU)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, torch, torch.distributed as dist
    from llmops_model.compat import cpu as cpu_compat
    cpu_compat.activate()
    dist.init_process_group("gloo")
    tp = dist.get_world_size()
    from megatron.core import parallel_state, tensor_parallel
    parallel_state.initialize_model_parallel(tp, 1)
    from llmops_model.fast.loss import vocab_parallel_cross_entropy

    rank, group = dist.get_rank(), parallel_state.get_tensor_model_parallel_group()
    s, b, vocab = 7, 3, 64
    g = torch.Generator().manual_seed(0)
    full = torch.randn(s, b, vocab, generator=g) * 4
    target = torch.randint(0, vocab, (s, b), generator=g)
    per = vocab // tp
    # targets on both edges of every rank's vocabulary slice
    target[0, :] = torch.tensor([0, per - 1, vocab - 1])[:b]
    target[1, :] = torch.tensor([per % vocab, vocab - per, (per + 1) % vocab])[:b]
    weights = torch.randn(s, b, generator=g)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-6)):
        mine = full[..., rank * per:(rank + 1) * per].to(dtype).clone().requires_grad_()
        ref = mine.detach().clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(mine, target, group if tp > 1 else None)
        (loss * weights).sum().backward()
        # Megatron's reference takes fp32 logits (the GPT casts them) and changes them in place.
        expected = tensor_parallel.vocab_parallel_cross_entropy(ref.float(), target)
        (expected * weights).sum().backward()
        torch.testing.assert_close(loss, expected, rtol=tol, atol=tol)
        assert mine.grad.dtype == dtype
        torch.testing.assert_close(mine.grad.float(), ref.grad.float(), rtol=tol if dtype == torch.float32 else 1e-2,
                                   atol=tol if dtype == torch.float32 else 1e-3)
    # and against the textbook formula on the whole vocabulary
    textbook = torch.nn.functional.cross_entropy(full.view(-1, vocab), target.view(-1), reduction="none").view(s, b)
    mine = full[..., rank * per:(rank + 1) * per].clone()
    torch.testing.assert_close(vocab_parallel_cross_entropy(mine, target, group if tp > 1 else None), textbook,
                               rtol=1e-5, atol=1e-5)
    open(os.path.join(os.environ["OUT"], f"ok-{rank}"), "w").close()
    # Leave together: a rank that exits while gloo's threads still serve its peer aborts ("terminate called ...").
    dist.barrier()
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
""")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("tp", [1, 2])
def test_cross_entropy_matches_megatron(tp, tmp_path):
    script = tmp_path / "ce.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={tp}", f"--master-port={_port()}",
           str(script)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": "", "OMP_NUM_THREADS": "1", "OUT": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-4000:]
    assert sorted(p.name for p in tmp_path.glob("ok-*")) == [f"ok-{r}" for r in range(tp)]  # every rank checked
