"""Training and held-out data: the synthetic source, the data-parallel split, and Megatron's GPTDataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llmops.spec.load import parse_spec
from llmops_model.parallel import Layout
from llmops_model.train.data import HELD_OUT_STREAM, SyntheticSource, batches, build_held_out, build_source
from llmops_model.train.evaluation import HeldOutLoss
from llmops_model.train.metrics import StepLogger
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


def test_held_out_synthetic_samples_follow_the_same_chain_as_training_but_are_others():
    train = SyntheticSource(vocab_size=512, seq_length=16, num_samples=100, seed=7)
    held = SyntheticSource(vocab_size=512, seq_length=16, num_samples=100, seed=7, stream=HELD_OUT_STREAM)
    assert np.array_equal(train.table, held.table)  # the same distribution: its loss falls as training learns it
    assert not any(torch.equal(held[i]["tokens"], train[j]["tokens"]) for i in range(20) for j in range(20))
    s = held[3]
    seq = torch.cat([s["tokens"], s["labels"][-1:]]).numpy()
    assert all(seq[t + 1] in held.table[seq[t]] for t in range(16))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """300 documents in a .bin/.idx pair written with megatron-core's own builder."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = tmp_path_factory.mktemp("indexed") / "corpus"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    rng = np.random.default_rng(0)
    for _ in range(300):
        doc = rng.integers(1, 500, size=int(rng.integers(20, 200)))
        builder.add_document(torch.from_numpy(np.append(doc, 0)), [len(doc) + 1])  # 0 ends a document
    builder.finalize(f"{prefix}.idx")
    return prefix


def test_training_on_megatron_indexed_dataset(tmp_path, runs_dir, corpus):
    """GPTDataset over the corpus; the held-out loss over its validation split, at the default interval (every
    step of a 3-step run)."""
    spec = tiny_spec("indexed", steps=3, train={"eval_interval": None},
                     data={"indexed": {"paths": [str(corpus)], "split": "98,2,0", "eod_id": 0}})
    run_dir = start(write_spec(tmp_path / "indexed.yaml", spec), runs_dir)
    wait_state(run_dir, {"SUCCEEDED"}, timeout=300)
    got = losses(run_dir)
    assert sorted(got) == [1, 2, 3] and all(5.0 < v < 7.0 for v in got.values())
    assert any((run_dir / "data-cache").rglob("*.npy"))  # Megatron cached its sample index
    held = [json.loads(line) for line in (run_dir / "stages" / "pretrain" / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in held] == [1, 2, 3] and all(5.0 < r["loss"] < 7.0 for r in held)
    assert all(r["loss_tokens"] == 8 * 64 for r in held)  # one global batch of held-out sequences, by default


def test_splits_without_documents_are_not_built(tmp_path, corpus, capsys):
    """300 documents leave the test split of '969,30,1' and the validation split of '99.9,0.1,0' empty: the
    training split builds without them (Megatron would loop forever asking an empty split for samples), and a
    run without held-out data says so once and trains without evaluations."""
    cache = str(tmp_path / "cache")
    default = parse_spec(tiny_spec("x", data={"indexed": {"paths": [str(corpus)], "eod_id": 0}}))
    assert len(build_source(default, cache_dir=cache)) >= 4 * 8
    assert len(build_held_out(default, cache_dir=cache, num_samples=8).source) >= 8
    tiny = parse_spec(tiny_spec("x", train={"eval_interval": None},
                                data={"indexed": {"paths": [str(corpus)], "split": "99.9,0.1,0", "eod_id": 0}}))
    logger = StepLogger(tiny, tmp_path, enabled=True, world_size=1, restart=0)
    evaluations = HeldOutLoss(tiny, layout=_layout(1, 0), device=torch.device("cpu"), cache_dir=cache, logger=logger)
    assert not any(evaluations.due(step) for step in range(1, tiny.train.steps + 1))
    assert capsys.readouterr().out == (
        f"[llmops] no held-out loss in this run: the validation split of {corpus} (data.indexed.split '99.9,0.1,0') "
        "holds no documents; training goes on without evaluations (give the split a validation share, or set "
        "train.eval_interval: 0)\n")
