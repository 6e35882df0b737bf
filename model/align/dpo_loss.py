"""The preference losses, on per-sequence log-probabilities (pure torch; no parallel state).

With ``h = (log pi(y_w) - log pi(y_l)) - (log ref(y_w) - log ref(y_l))``:

* sigmoid (DPO, Rafailov et al. 2023, eq. 7), with conservative label
  smoothing ``e`` (Mitchell, 2023): ``-(1 - e) log s(beta h) - e log s(-beta h)``;
* ipo (Azar et al. 2023, eq. 17): ``(h - 1 / (2 beta))^2``, on per-token
  average log-probabilities (the caller averages; see :func:`sequence_logps`).

Rewards are the implicit ones, ``beta (log pi - log ref)``, detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sigmoid(h: torch.Tensor, *, beta: float, label_smoothing: float) -> torch.Tensor:
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def _ipo(h: torch.Tensor, *, beta: float, label_smoothing: float) -> torch.Tensor:
    return (h - 1 / (2 * beta)) ** 2


LOSSES = {"sigmoid": _sigmoid, "ipo": _ipo}


def preference_loss(policy: torch.Tensor, reference: torch.Tensor, *, beta: float, kind: str = "sigmoid",
                    label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and (chosen, rejected) rewards from [pairs, 2] log-probabilities (chosen first)."""
    h = (policy[:, 0] - policy[:, 1]) - (reference[:, 0] - reference[:, 1])
    losses = LOSSES[kind](h, beta=beta, label_smoothing=label_smoothing)
    rewards = beta * (policy - reference).detach()
    return losses, rewards[:, 0], rewards[:, 1]


def sequence_logps(token_nll: torch.Tensor, mask: torch.Tensor, *, average: bool) -> torch.Tensor:
    """Log-probability of each sequence's masked tokens from per-token negative log-likelihoods.

    Summed (DPO's log pi(y|x)) or averaged over the masked tokens (IPO).
    """
    logps = -(token_nll * mask).sum(-1)
    return logps / mask.sum(-1).clamp(min=1) if average else logps
