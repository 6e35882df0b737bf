"""Forked worker processes for the map phases and dedup's LSH, that fail instead of hanging.

`multiprocessing.Pool` waits forever for the task of a worker that died (the
kernel's OOM killer, a crash in a native library): `llmops prepare` would sit
at a frozen progress bar. A `ProcessPoolExecutor` notices the death and breaks;
here that becomes one clear error, and the shards that finished are kept, so
running the command again resumes. The start method is fork (the workers
inherit megatron-core, the progress counter and dedup's signatures); every
worker is started at the first submit, before the executor's own thread.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from llmops.errors import EXIT_FAILED, UserError


class WorkerDied(UserError):
    """A worker process ended without finishing its task: exit 1, the finished shards kept."""

    exit_code = EXIT_FAILED


def start(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` processes, forked now: before the caller starts a thread of its own."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    pool.submit(int).result()  # with fork, the first submit starts every worker
    return pool


def stop(pool: ProcessPoolExecutor) -> None:
    """End the pool now, also workers in the middle of a task (after an error, nothing waits for them)."""
    if hasattr(pool, "terminate_workers"):  # Python 3.14
        pool.terminate_workers()
    else:
        for process in list((pool._processes or {}).values()):
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def unordered(pool: ProcessPoolExecutor, fn: Callable[[Any], Any], args: Iterable[Any], *,
              what: str) -> Iterator[Any]:
    """`fn` over `args` in the pool, results as they finish; a dead worker raises WorkerDied naming `what`."""
    pending = {pool.submit(fn, a) for a in args}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    except BrokenProcessPool:
        raise WorkerDied(
            f"a worker process of {what} died before finishing its part (killed by the system, "
            "often for lack of memory, or crashed in a native library); what finished is kept",
            "run the same command again to go on from there; if it happens again, lower prepare.workers "
            "(or --workers) or give the job more memory") from None
    finally:
        for future in pending:
            future.cancel()


def ordered(workers: int, fn: Callable[[Any], Any], args: list[Any], *, what: str) -> list[Any]:
    """`fn` over `args` in a pool of its own, results in the order of `args`."""
    pool = start(workers)
    try:
        indexed = list(unordered(pool, _indexed, [(fn, i, a) for i, a in enumerate(args)], what=what))
    finally:
        stop(pool)
    return [result for _, result in sorted(indexed, key=lambda pair: pair[0])]


def _indexed(job: tuple[Callable[[Any], Any], int, Any]) -> tuple[int, Any]:
    fn, index, arg = job
    return index, fn(arg)
