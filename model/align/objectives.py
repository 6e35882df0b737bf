"""What one alignment micro-batch computes: Megatron forward steps and loss functions for SFT and DPO.

Both return Megatron's three-part loss, (sum, count, metrics), and the
trainer is built with ``calculate_per_token_loss``: gradients are divided by
the count over the whole global batch (assistant tokens for SFT, pairs for
DPO), so every token or pair weighs the same whatever the packing, the
micro-batch split or the data-parallel size. Metrics are sums too, reduced
over micro-batches and data-parallel ranks by :func:`reduce_sums`.

The model's per-token losses come from ``GPTModel(..., labels=...)``, which
computes the cross entropy vocab-parallel, so they are correct under tensor
parallelism; only the last pipeline stage sees them.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from llmops.spec.align import AlignSpec
from llmops_model.align.dpo_loss import preference_loss, sequence_logps
from llmops_model.align.sources import DPO_KEYS, SFT_KEYS, blocked_attention, packed_sequences


class SFT:
    """Next-token loss on the assistant's tokens; packed sequences attend within their own conversation."""

    keys = SFT_KEYS
    rows = 1
    """Model rows per sample."""

    def __init__(self, *, packed: bool, thd: bool = False):
        """`thd`: packed sequences go to the attention as THD packed_seq_params (Transformer Engine's), not as
        a block mask."""
        self.packed, self.thd = packed, thd and packed

    def shape(self, micro_batch_size: int, seq_length: int) -> dict[str, int]:
        """A micro-batch as the schedule passes it between pipeline stages: THD lays its rows end to end."""
        if self.thd:
            return {"rows": 1, "seq_length": micro_batch_size * seq_length}
        return {"rows": micro_batch_size, "seq_length": seq_length}

    def forward_step(self, data_iterator, model):
        b = next(data_iterator)
        if self.thd:  # the micro-batch's rows end to end as one row, the boundaries in packed_seq_params
            shape = b["tokens"].shape
            output = model(b["tokens"].reshape(1, -1), b["position_ids"].reshape(1, -1), None,
                           labels=b["labels"].reshape(1, -1), packed_seq_params=packed_sequences(b["segment_ids"]))
            if parallel_state.is_pipeline_last_stage():  # per-token losses; earlier stages pass hidden states on
                output = output.reshape(shape)
            return output, partial(self.loss, b["loss_mask"])
        mask = blocked_attention(b["segment_ids"]) if self.packed else None  # None: the causal fast path
        output = model(b["tokens"], b["position_ids"], mask, labels=b["labels"])
        return output, partial(self.loss, b["loss_mask"])

    @staticmethod
    def loss(loss_mask: torch.Tensor, output: torch.Tensor):
        mask = loss_mask.float()
        total = (output.float() * mask).sum()
        count = mask.sum()
        return total, count.to(torch.int), {"loss": total.detach().clone(), "count": count.detach()}

    @staticmethod
    def summarize(sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss"] / max(sums["count"], 1.0), "loss_tokens": sums["count"]}


class DPO:
    """The preference loss on (chosen, rejected) rows of one micro-batch, against stored reference log-probs."""

    keys = DPO_KEYS
    rows = 2

    def __init__(self, options):
        self.beta, self.kind, self.smoothing = options.beta, options.loss, options.label_smoothing
        self.average = options.loss == "ipo"

    def shape(self, micro_batch_size: int, seq_length: int) -> dict[str, int]:
        """Both responses of each pair travel in the micro-batch."""
        return {"rows": 2 * micro_batch_size, "seq_length": seq_length}

    def forward_step(self, data_iterator, model):
        b = next(data_iterator)
        flat = {k: b[k].flatten(0, 1) for k in ("tokens", "labels", "position_ids")}  # [p, 2, s] -> [2p, s]
        output = model(flat["tokens"], flat["position_ids"], None, labels=flat["labels"])
        return output, partial(self.loss, b)

    def loss(self, b: dict[str, torch.Tensor], output: torch.Tensor):
        mask = b["loss_mask"].float()
        policy = sequence_logps(output.float().view(mask.shape), mask, average=self.average)
        reference = b["ref_logps"].float()  # summed over the response tokens (see llmops_model.align.reference)
        if self.average:
            reference = reference / mask.sum(-1).clamp(min=1)
        losses, chosen, rejected = preference_loss(policy, reference, beta=self.beta, kind=self.kind,
                                                   label_smoothing=self.smoothing)
        valid = (b["index"].view(-1) >= 0).float()
        total = (losses * valid).sum()
        metrics = {
            "loss": total.detach().clone(), "count": valid.sum(),
            "chosen_reward": (chosen * valid).sum(), "rejected_reward": (rejected * valid).sum(),
            "accuracy": ((chosen > rejected).float() * valid).sum(),
            "policy_prefers": ((policy[:, 0] > policy[:, 1]).float() * valid).sum(),
            "reference_prefers": ((reference[:, 0] > reference[:, 1]).float() * valid).sum(),
        }
        return total, valid.sum().to(torch.int), metrics

    def reference_step(self, data_iterator, model):
        """Forward only: the summed log-probabilities of each pair's responses, with the pair's index."""
        b = next(data_iterator)
        flat = {k: b[k].flatten(0, 1) for k in ("tokens", "labels", "position_ids")}
        output = model(flat["tokens"], flat["position_ids"], None, labels=flat["labels"])

        def collect(output: torch.Tensor):
            mask = b["loss_mask"].float()
            logps = sequence_logps(output.float().view(mask.shape), mask, average=False)
            return logps.sum(), torch.tensor(0, dtype=torch.int), {"logps": logps.detach(), "index": b["index"]}

        return output, collect

    @staticmethod
    def summarize(sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["count"], 1.0)
        out = {k: sums[k] / n for k in ("loss", "chosen_reward", "rejected_reward", "accuracy",
                                         "policy_prefers", "reference_prefers")}
        out["margin"] = out["chosen_reward"] - out["rejected_reward"]
        out["pairs"] = sums["count"]
        return out


def objective(a: AlignSpec, *, attention: str = "sdpa") -> SFT | DPO:
    """The stage's objective; `attention` is the resolved model.attention (te takes packing as THD)."""
    return SFT(packed=a.sft.packing, thd=attention == "te") if a.method == "sft" else DPO(a.dpo)


def reduce_sums(outputs: list[dict]) -> dict[str, float] | None:
    """Sum the loss functions' scalar metrics over micro-batches and data-parallel ranks (last stage only)."""
    if not parallel_state.is_pipeline_last_stage() or not outputs:
        return None
    names = sorted(outputs[0])
    sums = torch.stack([torch.stack([o[k].double().reshape(()) for o in outputs]).sum() for k in names])
    dist.all_reduce(sums, group=parallel_state.get_data_parallel_group())
    return dict(zip(names, sums.tolist()))
