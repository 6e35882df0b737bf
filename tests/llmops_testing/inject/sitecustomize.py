"""Test-only fault injection: a rank that hangs inside a collective (tests/backends/local/test_faults.py), or
that blocks outside any at a chosen place (tests/backends/local/test_hangs.py; ``LLMOPS_TEST_BLOCK`` below).

Python imports ``sitecustomize`` at start-up from the path, so a test that puts this folder on a run's
PYTHONPATH reaches every process of the run without a hook in llmops itself. It is inert unless
``LLMOPS_TEST_HANG`` or ``LLMOPS_TEST_BLOCK`` is set. ``LLMOPS_TEST_HANG=PHASE@STEP`` acts only in rank 1 of
the first attempt: at its first
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

# ``LLMOPS_TEST_BLOCK=PLACE[@RANK]`` (tests/backends/local/test_hangs.py): the rank (every rank if none is given)
# blocks for good when it reaches PLACE in attempt ``LLMOPS_TEST_BLOCK_ATTEMPT`` (default 0, the first), outside
# any collective, as a read of a stuck file system or a deadlocked thread does. The places are functions, patched
# when their module is imported.
_BLOCK = os.environ.get("LLMOPS_TEST_BLOCK")
_PLACES = {  # PLACE: (module, attribute path)
    "setup": ("llmops_model.parallel", "setup"),  # joining the process group
    "build": ("llmops_model.train.loop", "build"),  # building the model and optimizer
    "load": ("llmops_model.train.checkpoint", "load"),  # loading the checkpoint a restart resumes from
    "data": ("llmops_model.train.data", "build_source"),  # reading the data index
    "eval": ("llmops_model.train.evaluation", "HeldOutLoss.measure"),  # a held-out evaluation
    "teardown": ("llmops_model.parallel", "teardown"),  # leaving the process group after the last step
    "prepare": ("llmops.prepare.executor", "_run_shard"),  # a data-preparation worker's shard
}
if _BLOCK:
    import functools
    import importlib.abc
    import importlib.util
    import sys
    import threading

    _PLACE, _, _RANK = _BLOCK.partition("@")
    _MODULE, _ATTR = _PLACES[_PLACE]

    def _blocking(real):
        @functools.wraps(real)  # pickled by name, as a task sent to a worker pool is
        def blocked(*args, **kwargs):
            rank = os.environ.get("RANK", "0")
            attempt = os.environ.get("LLMOPS_RESTART", "0")
            if attempt == os.environ.get("LLMOPS_TEST_BLOCK_ATTEMPT", "0") and _RANK in ("", rank):
                print(f"[test] rank {rank} blocks in {_PLACE} ({real.__qualname__})", flush=True)
                threading.Event().wait()  # for good
            return real(*args, **kwargs)

        return blocked

    class _PatchOnImport(importlib.abc.MetaPathFinder):
        """Finds nothing itself: hands out the real module's spec, whose loader patches PLACE once it has run."""

        def find_spec(self, name, path=None, target=None):
            if name != _MODULE:
                return None
            sys.meta_path.remove(self)  # once: the real finders answer from here on
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                *owner, attr = _ATTR.split(".")
                holder = getattr(module, owner[0]) if owner else module
                setattr(holder, attr, _blocking(getattr(holder, attr)))

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _PatchOnImport())
