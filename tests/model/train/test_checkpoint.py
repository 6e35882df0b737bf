"""Checkpoint completeness: sealing, verification, fallback past broken checkpoints, pruning; and a Llama-style
model's resume that continues exactly."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from llmops_model.train import checkpoint
from llmops_testing import run_one_rank


def _fake_written(root: Path, step: int, files: dict[str, bytes]) -> Path:
    """What dist_checkpointing leaves in a .partial folder before it is sealed."""
    partial = root / f"iter_{step:07d}.partial"
    partial.mkdir(parents=True)
    for name, data in files.items():
        (partial / name).write_bytes(data)
    return partial


def _seal(root: Path, step: int, keep_last: int = 5) -> Path:
    _fake_written(root, step, {"__0_0.distcp": b"x" * (100 + step), "common.pt": b"c", ".metadata": b"m"})
    return checkpoint.commit(root, step, meta={"layout": {"tp": 1, "pp": 1, "dp": 1}}, keep_last=keep_last)


def test_commit_seals_renames_and_updates_tracker(tmp_path):
    path = _seal(tmp_path, 10)
    assert path.name == "iter_0000010" and not (tmp_path / "iter_0000010.partial").exists()
    assert checkpoint.verify(path) is None
    assert (tmp_path / checkpoint.TRACKER).read_text().strip() == "10"
    manifest = json.loads((path / checkpoint.MANIFEST).read_text())
    assert manifest["files"]["__0_0.distcp"] == 110 and manifest["step"] == 10


def test_unsealed_checkpoint_is_never_resumed(tmp_path):
    _seal(tmp_path, 10)
    _fake_written(tmp_path, 20, {"__0_0.distcp": b"half"})  # a save killed mid-write
    found = checkpoint.find_latest(tmp_path)
    assert found.step == 10 and found.path.name == "iter_0000010"


def test_truncated_newest_checkpoint_is_skipped_with_reason(tmp_path):
    _seal(tmp_path, 10)
    newest = _seal(tmp_path, 20)
    shard = newest / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:50])
    found = checkpoint.find_latest(tmp_path)
    assert found.step == 10
    (skipped_path, reason), = found.skipped
    assert skipped_path == newest and "truncated" in reason and "__0_0.distcp" in reason


def test_missing_shard_and_missing_manifest_are_reported(tmp_path):
    a = _seal(tmp_path, 10)
    (a / "common.pt").unlink()
    assert "missing file common.pt" in checkpoint.verify(a)
    b = _seal(tmp_path, 20)
    (b / checkpoint.MANIFEST).unlink()
    assert "no manifest" in checkpoint.verify(b)
    assert checkpoint.find_latest(tmp_path).path is None


def test_prune_keeps_the_newest_complete_ones(tmp_path):
    for step in (10, 20, 30, 40):
        _seal(tmp_path, step, keep_last=2)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [40, 30]


def test_prune_never_deletes_the_checkpoint_just_written(tmp_path):
    """keep_last counts by step: a run that does not resume (checkpoint.resume false), in a folder holding a
    later step of an earlier attempt, must keep what it has just saved."""
    _seal(tmp_path, 50, keep_last=1)
    _seal(tmp_path, 20, keep_last=1)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [50, 20]
    _seal(tmp_path, 30, keep_last=1)  # 20 goes, as keep_last says; the just-written 30 stays
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [50, 30]


def test_sealing_never_replaces_a_checkpoint_llmops_did_not_write(tmp_path):
    """A Megatron-LM checkpoint of the same step (same iter_N name, no manifest) stays as it was."""
    theirs = tmp_path / "iter_0000100" / "mp_rank_00"
    theirs.mkdir(parents=True)
    (theirs / "model_optim_rng.pt").write_bytes(b"their weights")
    with pytest.raises(FileExistsError, match="llmops did not write it"):
        _seal(tmp_path, 100)
    assert (theirs / "model_optim_rng.pt").read_bytes() == b"their weights"


def test_prune_counts_only_complete_checkpoints(tmp_path):
    _seal(tmp_path, 10, keep_last=2)
    broken = _seal(tmp_path, 20, keep_last=2)
    (broken / "common.pt").unlink()
    _seal(tmp_path, 30, keep_last=2)
    # 20 is broken, so keeping two complete ones must keep 10 as well as 30.
    steps = [s for s, _ in checkpoint.list_checkpoints(tmp_path)]
    assert 10 in steps and 30 in steps


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    from pathlib import Path
    import torch
    from llmops.spec.load import parse_spec
    from llmops_model import parallel
    from llmops_model.train import loop
    from llmops_model.train.metrics import StepLogger


    def main():
        case = json.loads(sys.argv[1])
        spec = parse_spec({"name": "resume", "resources": {"cpu": True, "processes_per_node": 1},
                           "model": {"preset": "tiny", "seq_length": 64, "vocab_size": 512, **case["model"]},
                           "train": {"steps": 4, "global_batch_size": 2, "micro_batch_size": 2, "lr": 1e-2,
                                     "warmup_steps": 0, "tensorboard": False, "eval_interval": 0}})
        layout, device = parallel.setup(spec)
        t = loop.build(spec, layout=layout, device=device, ckpt_root=Path(case["ckpt"]))
        logger = StepLogger(spec, Path(tempfile.mkdtemp()), enabled=True, world_size=1, restart=0)
        step = loop.resume(t, logger=logger) if case["resume"] else 0
        tok = torch.randint(0, 512, (2, 65), generator=torch.Generator().manual_seed(0))
        batch = {"tokens": tok[:, :-1], "labels": tok[:, 1:], "loss_mask": torch.ones(2, 64),
                 "position_ids": torch.arange(64).expand(2, 64).contiguous()}
        losses = {}
        while step < 4:
            step += 1
            losses[step] = loop.train_step(t, iter([batch])).get()["loss"]
            if step == 2 and not case["resume"]:
                loop.save_checkpoint(t, step, logger=logger, final=True)
        print(json.dumps(losses))


    if __name__ == "__main__":  # dist_checkpointing's writer starts a process that imports this file
        main()
""")


def test_a_llama_style_checkpoint_resumes_with_the_losses_of_the_run_that_did_not_stop(tmp_path):
    """Model, optimizer state and the SwiGLU MLP's split weights (a sharded-tensor factory) come back whole (GPT-style
    models resume in the end-to-end tests)."""
    model = {"normalization": "RMSNorm", "position_embedding": "rope", "activation": "swiglu", "num_query_groups": 2}
    def run(resume: bool) -> dict[int, float]:
        out = run_one_rank(RESUME_SCRIPT, {"model": model, "ckpt": str(tmp_path / "ckpt"), "resume": resume},
                           tmp_path, timeout=300)
        return {int(k): v for k, v in out.items()}

    whole, resumed = run(False), run(True)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(whole[step], rel=1e-6), (whole, resumed)


AGREED = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import torch.distributed as dist
    from llmops_model.train import checkpoint

    dist.init_process_group("gloo")
    root = Path(sys.argv[1])
    if dist.get_rank() == 1:  # this node's view of the shared folder lags: it sees no checkpoint yet
        checkpoint.find_latest = lambda root: checkpoint.Found(None, 0, [])
    found = checkpoint.find_latest_agreed(root)
    Path(os.environ["OUT"], f"rank-{dist.get_rank()}.json").write_text(json.dumps(str(found.path)))
    dist.barrier()
    dist.destroy_process_group()
""")


def test_every_rank_resumes_from_the_checkpoint_rank_0_found(tmp_path):
    _seal(tmp_path / "ckpt", 10)
    latest = _seal(tmp_path / "ckpt", 20)
    assert _two_ranks(tmp_path, AGREED, tmp_path / "ckpt") == [str(latest), str(latest)]


def _two_ranks(tmp_path: Path, script: str, *args) -> list:
    """Run `script` on two gloo ranks (torchrun, CPU); what each rank wrote to $OUT/rank-<r>.json."""
    import socket
    import subprocess
    import sys

    path = tmp_path / "two_ranks.py"
    path.write_text(script)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={port}",
                          str(path), *map(str, args)], capture_output=True, text=True, timeout=120,
                         env={"PATH": "", "OMP_NUM_THREADS": "1", "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]


RANK0_WRITE = textwrap.dedent("""
    import errno, json, os, sys
    from pathlib import Path


    def main():  # under a guard: Megatron's writer starts processes that import this file
        import torch
        import torch.distributed as dist

        from llmops_model.compat import cpu

        cpu.activate()
        dist.init_process_group("gloo")
        from megatron.core import parallel_state
        from megatron.core.dist_checkpointing import ShardedTensor

        from llmops_model.train import checkpoint

        root, what, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
        parallel_state.initialize_model_parallel()
        rank = dist.get_rank()

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        if rank == 0 and what == "common.pt":  # the state that is not sharded, written by torch.save
            save = torch.save
            torch.save = lambda obj, f, *a, **k: full() if str(f).endswith("common.pt") else save(obj, f, *a, **k)
        elif rank == 0:
            import megatron.core.dist_checkpointing.serialization as serialization

            serialization.save_config = full  # metadata.json
        queue = None
        if mode == "async":
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            queue = AsyncCallsQueue(persistent=False)
        state = {"w": ShardedTensor.from_rank_offsets("w", torch.arange(4.0) + 4 * rank, (0, rank, 2)), "step": 3}
        try:
            checkpoint.save(root, 10, state=state, meta={}, keep_last=2, async_queue=queue)
            if queue is not None:
                queue.maybe_finalize_async_calls(blocking=True)
            said = "saved"
        except checkpoint.SaveFailed as exc:
            said = f"SaveFailed: {exc}"
        Path(os.environ["OUT"], f"rank-{rank}.json").write_text(json.dumps(said))
        dist.barrier()
        dist.destroy_process_group()


    if __name__ == "__main__":
        main()
""")


@pytest.mark.parametrize("what,mode", [("common.pt", "sync"), ("metadata.json", "async")])
def test_a_failed_write_of_rank_0_alone_fails_the_save_on_every_rank_without_a_hang(tmp_path, what, mode):
    """Megatron writes common.pt and metadata.json on rank 0 alone, between collectives: a full disk there left
    rank 0 out of the collective the others waited in (a hang, then a restart that met the same disk), or raised
    out of the asynchronous save's finalization on rank 0 alone. Every rank now fails the save as one, and
    nothing is left that could be taken for a checkpoint."""
    said = _two_ranks(tmp_path, RANK0_WRITE, tmp_path / "ckpt", what, mode)
    assert said == ["SaveFailed: [Errno 28] No space left on device",
                    "SaveFailed: another rank could not write its shards"], said
    assert list((tmp_path / "ckpt").iterdir()) == []
