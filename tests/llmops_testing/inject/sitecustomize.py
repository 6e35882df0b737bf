"""Test-only fault injection: a rank that hangs inside a collective (tests/backends/local/test_faults.py).

Python imports ``sitecustomize`` at start-up from the path, so a test that puts this folder on a run's
PYTHONPATH reaches every process of the run without a hook in llmops itself. It is inert unless
``LLMOPS_TEST_HANG=PHASE@STEP`` is set, and then acts only in rank 1 of the first attempt: at its first
collective once its own heartbeat says it is in PHASE ("step" or "checkpoint") at STEP or later, it posts a
receive from rank 0 that rank 0 never sends, so it blocks inside gloo for good while rank 0 blocks in the
collective rank 1 never joins: a collective hang, with no exit and no error.
"""

import os

_WANTED = os.environ.get("LLMOPS_TEST_HANG")
# A worker started as a command has its RANK here; a warm-started one is forked from the forkserver, which has
# none yet (llmops_model.warm), so there the collectives are wrapped and the rank is checked when they run.
_FORKSERVER = bool(os.environ.get("LLMOPS_WARM_RUN_DIR"))
if _WANTED and (os.environ.get("RANK") == "1" or _FORKSERVER) and os.environ.get("LLMOPS_RESTART", "0") == "0":
    import json
    from pathlib import Path

    import torch
    import torch.distributed as dist

    _PHASE, _STEP = _WANTED.split("@")

    def _due() -> bool:
        if os.environ.get("RANK") != "1":
            return False
        try:
            beat = json.loads((Path(os.environ["LLMOPS_HEARTBEATS"]) / "rank-1.json").read_text())
        except (KeyError, OSError, ValueError):
            return False
        return beat["phase"] == _PHASE and beat["step"] >= int(_STEP)

    def _hanging(real):
        def collective(*args, **kwargs):
            if _due():
                print(f"[test] rank 1 hangs in a receive before {real.__name__} ({_WANTED})", flush=True)
                dist.recv(torch.empty(1), src=0)  # never sent
            return real(*args, **kwargs)

        return collective

    for _name in ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
                  "broadcast_object_list", "reduce_scatter_tensor", "barrier", "gather_object"):
        setattr(dist, _name, _hanging(getattr(dist, _name)))
