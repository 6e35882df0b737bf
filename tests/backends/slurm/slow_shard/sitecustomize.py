"""Test-only: makes one data-preparation shard slow (tests/backends/slurm/test_prepare.py).

Python imports ``sitecustomize`` at start-up from the path, so a test that puts this folder on the jobs'
PYTHONPATH (slurm.env) reaches the shard's process without a hook in llmops itself. Inert unless
``LLMOPS_TEST_SLOW_SHARD=PHASE-SHARD`` is set; then that shard writes its process id to
``$LLMOPS_TEST_SLOW_PID`` and sleeps for ``$LLMOPS_TEST_SLOW_SECONDS`` (120) before it starts its work.
"""

import os

_WANTED = os.environ.get("LLMOPS_TEST_SLOW_SHARD")
if _WANTED:
    import time

    from llmops.prepare import pipeline

    _run_phase = pipeline.run_phase

    def _slow(prepare, *, phase, shard, **kwargs):
        if f"{phase}-{shard}" == _WANTED:
            with open(os.environ["LLMOPS_TEST_SLOW_PID"], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(float(os.environ.get("LLMOPS_TEST_SLOW_SECONDS", "120")))
        return _run_phase(prepare, phase=phase, shard=shard, **kwargs)

    pipeline.run_phase = _slow
