"""Training samples for SFT (packed or padded conversations) and DPO (chosen/rejected pairs).

Both sources are addressed by a global sample index, like the pre-training
sources, so the batch of a step is a function of (seed, step) and resuming
needs only the step: index ``i`` is item ``i mod n`` of epoch ``i // n``'s
seeded permutation. :func:`llmops_model.train.data.batches` splits them over
data-parallel ranks.

Packing puts whole conversations one after another into a sequence; each
gets its own segment id and positions counted from zero, and
:func:`blocked_attention` turns segment ids into a block-diagonal causal
mask so that no token attends to another conversation. Transformer Engine's
attention takes no such mask: :func:`packed_sequences` gives it the same
boundaries as THD ``packed_seq_params`` (cumulative sequence lengths).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from llmops_model.align.examples import Examples

SFT_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids")
DPO_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "ref_logps", "index")


def pack(lengths: np.ndarray, *, capacity: int, packing: bool) -> list[list[int]]:
    """Consecutive items grouped into sequences of at most `capacity` tokens (next-fit), or one per sequence."""
    if not packing:
        return [[i] for i in range(len(lengths))]
    bins: list[list[int]] = []
    used = capacity + 1
    for i, n in enumerate(lengths):
        if used + n > capacity:
            bins.append([])
            used = 0
        bins[-1].append(i)
        used += int(n)
    return bins


def blocked_attention(segment_ids: torch.Tensor) -> torch.Tensor:
    """[b, s] segment ids -> [b, 1, s, s] boolean mask, True where attention is blocked (Megatron's convention):
    a token sees earlier tokens of its own segment only."""
    s = segment_ids.shape[-1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    return ~(same & causal)[:, None]


def packed_sequences(segment_ids: torch.Tensor):
    """[b, s] segment ids -> Megatron's THD `PackedSeqParams` for the b rows laid end to end as one row of
    b * s tokens: every run of one segment id in a row is a sequence of its own (the padding included), so
    each conversation attends causally within itself, as :func:`blocked_attention` says, and RoPE restarts
    at each one. One sync to the host (the longest sequence)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    b, s = segment_ids.shape
    rows = torch.arange(b, device=segment_ids.device)[:, None] * (int(segment_ids.max()) + 1)
    flat = (segment_ids + rows).flatten()  # ids unique across rows: a row's end is a boundary too
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    cu = torch.cat([starts.nonzero().flatten(), flat.new_tensor([b * s])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                           max_seqlen_kv=longest)


class _Epochs:
    """Maps a global sample index to an item, reshuffling every epoch with a seeded permutation.

    Sized, like Megatron's GPTDataset, for every sample the stage consumes
    (`needed`), so indices are never wrapped and each epoch is shuffled anew.
    """

    def __init__(self, n: int, seed: int, needed: int):
        self.n, self.seed = n, seed
        self.size = max(1, -(-needed // n)) * n if n else 0
        self._epoch, self._perm = -1, None

    def item(self, index: int) -> int:
        epoch = index // self.n
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng((self.seed, epoch)).permutation(self.n)
        return int(self._perm[index % self.n])


class SFTSource:
    """Sequences of seq_length tokens: one conversation padded, or several packed."""

    def __init__(self, ex: Examples, *, seq_length: int, packing: bool, pad_id: int, seed: int, needed: int = 0):
        self.ex, self.seq_length, self.pad_id = ex, seq_length, pad_id
        order = np.random.default_rng((seed, 0x5F7)).permutation(len(ex["ids"]))
        groups = pack(ex["ids"].lengths()[order] - 1, capacity=seq_length, packing=packing)
        self.sequences = [[int(order[i]) for i in g] for g in groups]
        self.count = len(self.sequences)
        self.epochs = _Epochs(self.count, seed, needed)

    def __len__(self) -> int:
        return self.epochs.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.item(self.epochs.item(index))

    def item(self, k: int) -> dict[str, torch.Tensor]:
        """Sequence `k` in storage order (no shuffling), as the model reads it."""
        s = self.seq_length
        tokens, labels = np.full(s, self.pad_id, np.int64), np.full(s, self.pad_id, np.int64)
        loss_mask, positions = np.zeros(s, np.float32), np.arange(s, dtype=np.int64)
        segments = np.full(s, len(self.sequences[k]), np.int64)  # padding is a segment of its own
        at = 0
        for seg, i in enumerate(self.sequences[k]):
            ids, trained = self.ex["ids"][i], self.ex["trained"][i]
            n = len(ids) - 1
            tokens[at: at + n], labels[at: at + n] = ids[:-1], ids[1:]
            loss_mask[at: at + n] = trained[1:]
            positions[at: at + n], segments[at: at + n] = np.arange(n), seg
            at += n
        positions[at:] = np.arange(s - at)
        return {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
                "loss_mask": torch.from_numpy(loss_mask), "position_ids": torch.from_numpy(positions),
                "segment_ids": torch.from_numpy(segments)}

    def filler(self) -> dict[str, torch.Tensor]:
        """A sequence that carries no loss: fills the last micro-batches of a sweep."""
        out = self.item(0)
        out["loss_mask"] = torch.zeros_like(out["loss_mask"])
        return out


class DPOSource:
    """Pairs as [2, seq_length] rows (chosen, rejected) with the response tokens masked for scoring.

    `reference` holds the frozen starting model's summed log-probabilities,
    [pairs, 2], once they are known (see :mod:`llmops_model.align.reference`).
    """

    def __init__(self, ex: Examples, *, seq_length: int, pad_id: int, eod_id: int, seed: int, needed: int = 0):
        self.ex, self.seq_length, self.pad_id, self.eod_id = ex, seq_length, pad_id, eod_id
        self.reference: np.ndarray | None = None
        self.count = len(ex["prompt"])
        self.epochs = _Epochs(self.count, seed, needed)

    def __len__(self) -> int:
        return self.epochs.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.item(self.epochs.item(index))

    def item(self, i: int, *, padding: bool = False) -> dict[str, torch.Tensor]:
        """Pair `i` in storage order; with `padding`, a copy marked index -1 that counts for nothing."""
        prompt = self.ex["prompt"][i]
        rows = [self._row(prompt, self.ex[k][i]) for k in ("chosen", "rejected")]
        out = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        ref = self.reference[i] if self.reference is not None else np.zeros(2)
        out["ref_logps"] = torch.tensor(ref, dtype=torch.float64)
        out["index"] = torch.tensor([-1 if padding else i], dtype=torch.int64)
        return out

    def filler(self) -> dict[str, torch.Tensor]:
        return self.item(0, padding=True)

    def _row(self, prompt: np.ndarray, response: np.ndarray) -> dict[str, torch.Tensor]:
        s = self.seq_length
        seq = np.concatenate([prompt, response, [self.eod_id]]).astype(np.int64)
        tokens, labels = np.full(s, self.pad_id, np.int64), np.full(s, self.pad_id, np.int64)
        tokens[: len(seq) - 1], labels[: len(seq) - 1] = seq[:-1], seq[1:]
        mask = np.zeros(s, np.float32)
        mask[len(prompt) - 1: len(prompt) - 1 + len(response)] = 1.0  # positions whose label is a response token
        return {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
                "loss_mask": torch.from_numpy(mask), "position_ids": torch.arange(s, dtype=torch.int64)}


def sweep(source: SFTSource | DPOSource, *, micro_batch_size: int, dp: int, dp_rank: int, device: torch.device,
          keys: tuple[str, ...]) -> tuple[int, Iterator[dict[str, torch.Tensor]]]:
    """Every item of `source` once, in storage order, split over data-parallel ranks, for forward-only passes.

    Returns (micro-batches per rank, this rank's iterator). Ranks get equal
    counts; the last micro-batches are made up with `source.filler()`.
    """
    n = source.count
    per_rank = -(-n // (dp * micro_batch_size)) * micro_batch_size
    mine = range(dp_rank * per_rank, (dp_rank + 1) * per_rank)

    def batches():
        for first in range(mine.start, mine.stop, micro_batch_size):
            items = [source.item(i) if i < n else source.filler() for i in range(first, first + micro_batch_size)]
            yield {k: torch.stack([it[k] for it in items]).to(device) for k in keys}

    return per_rank // micro_batch_size, batches()
