"""Step readouts (model/train/metrics.py): device scalars read later, in the order and form they were given."""

from __future__ import annotations

import json

import torch

from llmops_model.train.metrics import Readout, StepQueue


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



def test_step_times_run_from_the_previous_steps_end_and_leave_out_saves_between(tmp_path):
    from llmops.spec.load import parse_spec
    from llmops_model.train.metrics import StepLogger

    spec = parse_spec({"name": "x", "resources": {"cpu": True}, "model": {"preset": "tiny"},
                       "train": {"steps": 4, "global_batch_size": 2, "micro_batch_size": 1, "log_interval": 2,
                                 "tensorboard": False}})
    logger = StepLogger(spec, tmp_path, enabled=True, world_size=1, restart=0)
    now = [0.0]
    queue = StepQueue(logger, steps=4, log_interval=2, clock=lambda: now[0])

    def run(step, began, read_at, **values):
        queue.add(step, Readout(**values), lr=step * 1e-3, began=began)
        now[0] = read_at
        queue.read()

    run(1, 0.0, 1.0, loss=torch.tensor(4.0), grad_norm=None)
    run(2, 0.5, 3.0, loss=torch.tensor(3.0), grad_norm=torch.tensor(0.5))  # queued while step 1 ran, as on a GPU
    run(3, 2.5, 4.0, loss=torch.tensor(2.0), grad_norm=None)
    run(4, 6.0, 7.5, loss=None, grad_norm=None)  # queued after a checkpoint save from 4 to 6; no loss on this rank
    rows = [json.loads(line) for line in logger.metrics_path.read_text().splitlines()]
    # the interval's step and the last: from step 1's end (not step 2's queueing), and from after the save
    assert [(r["step"], r["step_time"]) for r in rows] == [(2, 2.0), (4, 1.5)]
    assert (rows[0]["loss"], rows[0]["grad_norm"], rows[0]["lr"]) == (3.0, 0.5, 2e-3)
    assert rows[1]["loss"] != rows[1]["loss"]  # nan
    assert queue.queued == []
