"""Step readouts (model/metrics.py): device scalars read later, in the order and form they were given."""

from __future__ import annotations

import torch

from llmops_model.metrics import Readout


def test_readout_returns_tensors_floats_and_missing_values_by_name():
    loss = torch.tensor([2.5], dtype=torch.bfloat16)
    norm = torch.tensor(0.75, dtype=torch.float64)
    got = Readout(loss=loss, lr=1e-3, grad_norm=norm, aux=None).get()
    assert list(got) == ["loss", "lr", "grad_norm", "aux"]
    assert got == {"loss": 2.5, "lr": 1e-3, "grad_norm": 0.75, "aux": None}
    assert all(v is None or type(v) is float for v in got.values())


def test_readout_keeps_the_values_of_when_it_was_taken():
    value = torch.tensor([1.0])
    readout = Readout(x=value)
    value.add_(1)  # the step after it overwrites its buffers (a replayed CUDA graph does)
    assert readout.ready() and readout.get() == {"x": 1.0}
