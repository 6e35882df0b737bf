"""The prepare pipeline as phases that run as shard i of N: the interface the backends fan out.

Phases, in order::

    clean      map, N shards   read this shard's units; clean; quality filters; exact hash and MinHash
    dedup      reduce, 1 task  global exact + near-duplicate decision over every shard (datasketch LSH)
    tokenizer  1 task          train SentencePiece on a sample of the kept documents (or copy the given model)
    tokenize   map, N shards   write kept documents as JSONL and as token ids (megatron-core builder)
    finalize   1 task          merge shards into <output.dir>; stats.json, metadata.json, quarantine, duplicates

Python::

    from llmops.prepare.pipeline import PHASES, run_phase
    run_phase(spec.prepare, phase="clean", shard=i, num_shards=N)   # each i in 0..N-1, in any order or at once
    run_phase(spec.prepare, phase="dedup")                           # once every clean shard is done
    run_phase(spec.prepare, phase="tokenizer")
    run_phase(spec.prepare, phase="tokenize", shard=i, num_shards=N)
    run_phase(spec.prepare, phase="finalize")

Command line (one Slurm array task or one Kubernetes Indexed Job pod per shard;
``$SLURM_ARRAY_TASK_ID`` or ``$JOB_COMPLETION_INDEX`` as the shard)::

    llmops prepare SPEC --phase clean --shard I --num-shards N
    llmops prepare SPEC --phase dedup
    ...
    llmops prepare SPEC            # every phase on this machine, one process per core

Contract:
- The first clean shard to start fixes the plan (input files and units, and N)
  in ``<workdir>/plan.json``; every later call must use the same N and the same
  prepare config, or it fails with exit code 2 and says what differs (a
  finished dataset of the same input and config is done for any N). Each clean
  shard lists the input again: when a file was added, removed or changed, it
  writes a new plan and every phase runs again on the new input.
- Single-task phases take shard 0 (``num_shards`` may be omitted or repeat N).
- A phase whose inputs are not complete fails with exit code 2 naming the
  missing shards; it never starts on partial data.
- Completion markers: ``<workdir>/done/<phase>-<shard>-of-<N>.json`` (single
  tasks: ``-00000-of-00001``), each naming its plan. A phase finished under
  the current plan is skipped on a re-run;
  outputs are written to temporary names and renamed; the marker is last.
- The work folder defaults to ``<output.dir>/work``: on a cluster it must be
  on a file system every task sees.
- Output, when finalize is done: ``<output.dir>/<name>_text_document.{bin,idx}``
  (Megatron indexed dataset, one document per input document, ending in the
  eod token), ``tokenizer.model`` (or a Hugging Face tokenizer's ``tokenizer.json``
  and ``tokenizer_config.json``), ``metadata.json`` (vocab_size, eod_id,
  pad_id, bos_id, special_tokens, tokenizer_model, paths),
  ``documents.jsonl.zst``, ``stats.json``, ``quarantine.jsonl``,
  ``duplicates.jsonl``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmops.errors import UserError
from llmops.prepare.progress import Advance
from llmops.prepare.workdir import Plan, WorkDir, make_plan, shard_count_error
from llmops.spec.prepare import PrepareSpec

PHASES = ("clean", "dedup", "tokenizer", "tokenize", "finalize")
MAP_PHASES = ("clean", "tokenize")
# What each phase reads: (phase, all map shards?) pairs that must be complete first.
NEEDS = {"clean": [], "dedup": [("clean", True)], "tokenizer": [("dedup", False)],
         "tokenize": [("dedup", False), ("tokenizer", False)], "finalize": [("tokenize", True)]}


def default_workdir(spec: PrepareSpec) -> Path:
    return Path(spec.output.dir) / "work"


def clean_done(spec: PrepareSpec) -> bool:
    """Whether every shard of the clean phase (in the default work folder) has finished: what follows keeps
    fewer cores busy, so a supervisor may start other work beside it."""
    work = WorkDir(default_workdir(spec))
    try:
        plan = Plan(json.loads((work.root / "plan.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return False
    work.plan_id = plan.id
    return not work.missing("clean", plan.num_shards)


def run_phase(config: PrepareSpec, *, phase: str, shard: int = 0, num_shards: int | None = None,
              workdir: str | os.PathLike | None = None, progress: Advance | None = None,
              threads: int = 1, check_input: bool = True) -> dict:
    """Run one shard of one phase, unless its completion marker exists; returns the marker's content.

    `threads` is how many cores this task may use: processes for the dedup
    reduce's LSH bands, threads for tokenizer training and for SentencePiece in
    the tokenize phase (the clean phase uses one). `check_input: False` skips
    listing the input again in a clean shard, for a caller that has just
    checked it (a whole run on one machine). Raises UserError (exit code 2) for
    bad input, a mismatched work folder or missing earlier phases.
    """
    from llmops.prepare import finalize, phases

    if phase not in PHASES:
        raise UserError(f"--phase {phase!r} is not a phase", f"use one of {', '.join(PHASES)}")
    work = WorkDir(workdir or default_workdir(config))
    # Only the clean phase may start a plan (one shard when none is named); later phases read it.
    starting = phase == "clean" and not (work.root / "plan.json").exists()
    ensure_writable(Path(config.output.dir), "prepare.output.dir")
    if starting:
        refuse_foreign_outputs(config)
    ensure_writable(work.root, "the work folder")
    # The clean phase checks the input against the plan (a whole run checked it at its start: `check_input`)
    plan = make_plan(config, work, (num_shards or 1) if starting else num_shards if phase == "clean" else None,
                     check_input=phase == "clean" and check_input)
    allowed = {plan.num_shards} if phase in MAP_PHASES else {plan.num_shards, 1}
    if num_shards is not None and num_shards not in allowed:
        if work.is_done("finalize", 0, 1):
            return {"skipped": True}  # a finished dataset of this input and config, with another shard count
        raise shard_count_error(work, plan.num_shards, num_shards)
    marker_n = plan.num_shards if phase in MAP_PHASES else 1
    if not 0 <= shard < marker_n:
        raise UserError(f"--shard {shard} is outside 0..{marker_n - 1} for phase {phase}",
                        "single-task phases (dedup, tokenizer, finalize) run as shard 0")
    if work.is_done(phase, shard, marker_n):
        return {**work.read_marker(phase, shard, marker_n), "skipped": True}
    _check_needs(phase, work, plan.num_shards)
    work.unmark(phase, shard)  # an earlier plan's, if any: gone before this plan's files replace its shard's
    ctx = phases.Context(config, work, plan, progress or _ignore, threads)
    body = {"clean": phases.clean, "dedup": phases.dedup, "tokenizer": phases.tokenizer,
            "tokenize": phases.tokenize, "finalize": finalize.finalize}[phase]
    payload = body(ctx, shard)
    work.mark_done(phase, shard, marker_n, payload)
    if phase == "finalize" and not config.output.keep_work:
        # After the marker: a finalize stopped before it is done again from the shard files, which must still
        # be there (removed first, a rerun merged nothing and marked empty output complete).
        work.remove_bulk()
    return payload


def _check_needs(phase: str, work: WorkDir, num_shards: int) -> None:
    for before, sharded in NEEDS[phase]:
        n = num_shards if sharded else 1
        missing = work.missing(before, n)
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            which = f"shard(s) {shown} of {n}" if sharded else "its single task"
            raise UserError(f"phase {phase} needs phase {before} to be complete, but {which} have not finished "
                            f"(no marker in {work.root / 'done'})",
                            f"run `llmops prepare SPEC --phase {before}` for those first")


def refuse_foreign_outputs(config: PrepareSpec) -> None:
    """A new preparation replaces an earlier llmops dataset in its output folder, never files it did not write:
    finalize renames its files over whatever has their names."""
    out = Path(config.output.dir)
    try:
        earlier = json.loads((out / "metadata.json").read_text())
        if isinstance(earlier, dict) and {"prefix", "vocab_size", "config"} <= earlier.keys():
            return  # a dataset llmops prepared here: replaced, metadata.json first (finalize)
    except (OSError, ValueError):
        pass
    from llmops.prepare.finalize import output_names

    ours = output_names(config)
    found = sorted(p.name for p in out.iterdir() if p.name in ours) if out.is_dir() else []
    if found:
        raise UserError(f"prepare.output.dir {str(out)!r} already holds {', '.join(found)}, not from a "
                        f"preparation llmops finished there (it has no llmops metadata.json): this one would "
                        f"overwrite them",
                        "choose a new or empty folder for prepare.output.dir, or move those files away (an "
                        "unfinished preparation resumes with its own work folder: --workdir)")


def ensure_writable(folder: Path, what: str) -> None:
    """Create `folder` and prove a file can be written there, or say so in one message."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{what} = {str(folder)!r}: cannot write there ({exc.strerror or exc})",
                        "choose a folder you can write to, or fix its permissions") from None


def _ignore(amount: float) -> None:
    pass
