"""Training batches: Megatron's GPTDataset over indexed datasets, or a synthetic source.

Both sources are addressed by a global sample index, so the batch for a step
is a pure function of (seed, step): resuming needs only the number of samples
consumed, and every parallel layout sees the same global batch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
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

    def __init__(self, *, vocab_size: int, seq_length: int, num_samples: int, seed: int):
        self.vocab_size, self.seq_length, self.num_samples, self.seed = vocab_size, seq_length, num_samples, seed
        rng = np.random.default_rng(seed)
        self.table = rng.integers(0, vocab_size, size=(vocab_size, self.SUCCESSORS))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
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
    return _build_gpt_dataset(spec, cache_dir=cache_dir)


def _build_gpt_dataset(spec: RunSpec, *, cache_dir: str) -> SampleSource:
    import torch.distributed as dist
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    ix = spec.data.indexed
    config = GPTDatasetConfig(
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
    train_samples = spec.train.steps * spec.train.global_batch_size
    # Rank 0 builds and caches the sample index; the others wait and read the cache.
    rank = dist.get_rank() if dist.is_initialized() else 0
    builder = BlendedMegatronDatasetBuilder(GPTDataset, [train_samples, 0, 0], lambda: rank == 0, config)
    if rank == 0:
        train, _, _ = builder.build()
    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        builder = BlendedMegatronDatasetBuilder(GPTDataset, [train_samples, 0, 0], lambda: True, config)
        train, _, _ = builder.build()
    return train


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
