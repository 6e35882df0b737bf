"""Training data: the synthetic source, the data-parallel split, and Megatron's GPTDataset."""

from __future__ import annotations

import numpy as np
import torch

from llmops.spec.load import parse_spec
from llmops_model.parallel import Layout
from llmops_model.train.data import SyntheticSource, batches
from llmops_testing import losses, start, tiny_spec, wait_state, write_spec


def test_synthetic_samples_are_a_function_of_seed_and_index():
    a = SyntheticSource(vocab_size=512, seq_length=16, num_samples=100, seed=7)
    b = SyntheticSource(vocab_size=512, seq_length=16, num_samples=100, seed=7)
    assert torch.equal(a[42]["tokens"], b[42]["tokens"])
    assert not torch.equal(a[42]["tokens"], a[43]["tokens"])
    s = a[5]
    assert torch.equal(s["tokens"][1:], s["labels"][:-1])  # labels are the next tokens
    # Every transition follows the chain, so a model can learn it.
    seq = torch.cat([s["tokens"], s["labels"][-1:]]).numpy()
    assert all(seq[t + 1] in a.table[seq[t]] for t in range(16))


def _layout(dp: int, dp_rank: int) -> Layout:
    return Layout(rank=dp_rank, world=dp, tp=1, pp=1, dp=dp, tp_rank=0, pp_rank=0, dp_rank=dp_rank)


def test_data_parallel_ranks_split_each_global_batch_and_resume_in_place():
    spec = parse_spec(tiny_spec("x", procs=2, train={"global_batch_size": 8, "micro_batch_size": 2}))
    source = SyntheticSource(vocab_size=512, seq_length=64, num_samples=1000, seed=1)

    def first_tokens(layout: Layout, start_step: int, n: int) -> list[int]:
        it = batches(source, spec=spec, layout=layout, start_step=start_step, device=torch.device("cpu"))
        return [int(t) for _ in range(n) for t in next(it)["tokens"][:, 0]]

    expected = lambda i: int(source[i]["tokens"][0])  # noqa: E731
    # Step 0 on DP rank 1 of 2 holds samples 4..7; step 3 on rank 0 holds samples 24..27.
    assert first_tokens(_layout(2, 1), 0, 2) == [expected(i) for i in range(4, 8)]
    assert first_tokens(_layout(2, 0), 3, 2) == [expected(i) for i in range(24, 28)]


def test_training_on_megatron_indexed_dataset(tmp_path, runs_dir):
    """GPTDataset over a .bin/.idx pair written with megatron-core's own builder."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = tmp_path / "corpus"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    rng = np.random.default_rng(0)
    for _ in range(300):
        doc = rng.integers(1, 500, size=int(rng.integers(20, 200)))
        builder.add_document(torch.from_numpy(np.append(doc, 0)), [len(doc) + 1])  # 0 ends a document
    builder.finalize(f"{prefix}.idx")

    spec = tiny_spec("indexed", steps=3, data={"indexed": {"paths": [str(prefix)], "split": "98,2,0",
                                                           "eod_id": 0}})
    run_dir = start(write_spec(tmp_path / "indexed.yaml", spec), runs_dir)
    wait_state(run_dir, {"SUCCEEDED"}, timeout=300)
    got = losses(run_dir)
    assert sorted(got) == [1, 2, 3] and all(5.0 < v < 7.0 for v in got.values())
    assert any((run_dir / "data-cache").rglob("*.npy"))  # Megatron cached its sample index
