"""Training batches: Megatron's GPTDataset over indexed datasets, or a synthetic source.

Both sources are addressed by a global sample index, so the batch for a step
is a pure function of (seed, step): resuming needs only the number of samples
consumed, and every parallel layout sees the same global batch. The held-out
data of the pre-training evaluations (:func:`build_held_out`) is addressed the
same way: the validation split of the indexed datasets, or another stream of
the synthetic chain.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from llmops.spec.run import RunSpec
from llmops_model.parallel import Layout


class SampleSource(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> dict[str, torch.Tensor]: ...


class SyntheticSource:
    """Token sequences from a fixed sparse bigram chain: random-looking, but learnable.

    Uniform random tokens would pin the loss at ln(vocab) and hide whether the
    model learns at all; a chain with a few likely successors per token gives a
    loss that falls from ln(vocab) towards ln(successors) when training works.
    """

    SUCCESSORS = 4

    def __init__(self, *, vocab_size: int, seq_length: int, num_samples: int, seed: int, stream: int | None = None):
        """`stream` None: the training samples; a number: another stream of samples from the same chain (the
        held-out data), seeded apart from the training samples."""
        self.vocab_size, self.seq_length, self.num_samples, self.seed = vocab_size, seq_length, num_samples, seed
        # A spawn key keeps the streams apart: entropy words alone would not ((7, 1, 0) seeds as (7, 1) does).
        self.spawn_key = () if stream is None else (stream,)
        rng = np.random.default_rng(seed)
        self.table = rng.integers(0, vocab_size, size=(vocab_size, self.SUCCESSORS))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(np.random.SeedSequence((self.seed, index), spawn_key=self.spawn_key))
        picks = rng.integers(0, self.SUCCESSORS, size=self.seq_length)
        seq = np.empty(self.seq_length + 1, dtype=np.int64)
        seq[0] = rng.integers(0, self.vocab_size)
        for t in range(self.seq_length):
            seq[t + 1] = self.table[seq[t], picks[t]]
        text = torch.from_numpy(seq)
        return {
            "tokens": text[:-1].clone(),
            "labels": text[1:].clone(),
            "loss_mask": torch.ones(self.seq_length, dtype=torch.float32),
            "position_ids": torch.arange(self.seq_length, dtype=torch.int64),
        }


class _TokenIds:
    """The few tokenizer facts GPTDataset reads (end-of-document and padding ids)."""

    def __init__(self, *, vocab_size: int, eod: int):
        self.vocab_size, self.eod, self.pad = vocab_size, eod, eod
        self.unique_identifiers = OrderedDict(cls="llmops-token-ids", vocab_size=vocab_size, eod=eod)


def build_source(spec: RunSpec, *, cache_dir: str) -> SampleSource:
    """The training split of the spec's data, sized for every step of the run."""
    m, tr = spec.model, spec.train
    if spec.data.synthetic is not None:
        return SyntheticSource(vocab_size=m.vocab_size, seq_length=m.seq_length,
                               num_samples=spec.data.synthetic.num_samples, seed=tr.seed)
    return _build_gpt_dataset(spec, cache_dir=cache_dir, split=TRAIN, num_samples=tr.steps * tr.global_batch_size)


@dataclass
class HeldOut:
    """The held-out data of a pre-training run, or why there is none (`source` None)."""

    source: SampleSource | None
    missing: str = ""


def build_held_out(spec: RunSpec, *, cache_dir: str, num_samples: int) -> HeldOut:
    """Collective: data the model never trains on, `num_samples` sequences of it.

    Indexed data: the validation split of the same blend, through the same
    Megatron machinery as the training split. Synthetic data: another stream of
    samples from the same chain (the same distribution, other sequences).
    """
    m, tr = spec.model, spec.train
    if spec.data.synthetic is not None:
        return HeldOut(SyntheticSource(vocab_size=m.vocab_size, seq_length=m.seq_length, num_samples=num_samples,
                                       seed=tr.seed, stream=HELD_OUT_STREAM))
    ix = spec.data.indexed
    empty = [path for path in ix.paths if _split_documents(spec, path, VALID) == 0]
    if empty:
        return HeldOut(None, f"the validation split of {', '.join(empty)} (data.indexed.split '{ix.split}') "
                             f"holds no documents")
    return HeldOut(_build_gpt_dataset(spec, cache_dir=cache_dir, split=VALID, num_samples=num_samples))


TRAIN, VALID = 0, 1  # megatron.core.datasets.utils.Split's train and valid
HELD_OUT_STREAM = 1
"""The synthetic source's stream of held-out samples (training samples are stream None)."""


def _gpt_config(spec: RunSpec, *, cache_dir: str):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    ix = spec.data.indexed
    return GPTDatasetConfig(
        random_seed=spec.train.seed,
        sequence_length=spec.model.seq_length,
        blend=(list(ix.paths), list(ix.weights) if ix.weights else None),
        split=ix.split,
        path_to_cache=cache_dir,
        tokenizer=_TokenIds(vocab_size=spec.model.vocab_size, eod=ix.eod_id),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )


def _split_documents(spec: RunSpec, path: str, split: int) -> int:
    """How many documents of the dataset at `path` fall in `split`, counted as Megatron's builder counts them."""
    from megatron.core.datasets.gpt_dataset import GPTDataset

    config = _gpt_config(spec, cache_dir="")
    bounds = config.split_matrix[split]
    if bounds is None:
        return 0
    n = GPTDataset.numel_low_level_dataset(GPTDataset.build_low_level_dataset(path, config))
    return int(round(bounds[1] * n)) - int(round(bounds[0] * n))


def _build_gpt_dataset(spec: RunSpec, *, cache_dir: str, split: int, num_samples: int) -> SampleSource:
    import torch.distributed as dist
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    config = _gpt_config(spec, cache_dir=cache_dir)
    # Build this split only: Megatron builds every split its matrix names, and one of no documents asked for
    # samples never finishes (GPTDataset._get_num_epochs adds empty epochs until they hold the tokens asked for).
    config.split_matrix = [bounds if i == split else None for i, bounds in enumerate(config.split_matrix)]
    sizes = [num_samples if i == split else None for i in range(len(config.split_matrix))]
    # Rank 0 builds and caches the sample index; the others wait and read the cache.
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        built = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        built = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    return built[split]


LM_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def batches(source: SampleSource, *, spec: RunSpec, layout: Layout, start_step: int,
            device: torch.device, keys: tuple[str, ...] = LM_KEYS) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's micro-batches, step after step, from `start_step` on.

    Global batch `s` is samples [s*G, (s+1)*G); data-parallel rank `r` takes
    the contiguous block [r*G/dp, (r+1)*G/dp) of it, in micro-batches.
    """
    g, mbs, dp = spec.train.global_batch_size, spec.train.micro_batch_size, layout.dp
    per_rank = g // dp
    step = start_step
    while True:
        base = step * g + layout.dp_rank * per_rank
        for first in range(base, base + per_rank, mbs):
            samples = [source[(i) % len(source)] for i in range(first, first + mbs)]
            batch = {k: torch.stack([s[k] for s in samples]) for k in keys}
            if device.type == "cuda":
                # From pinned memory the copy is queued behind the GPU's work; from pageable memory the
                # host may wait for the stream to drain first.
                batch = {k: v.pin_memory() for k, v in batch.items()}
            yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        step += 1
