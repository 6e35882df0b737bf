"""The bodies of the five phases; :func:`llmops.prepare.pipeline.run_phase` checks and marks them.

Each body writes only under temporary names and returns the payload of its
completion marker (its steps' stats and what later phases need to know).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llmops.errors import UserError
from llmops.files import fsync_path
from llmops.prepare import store
from llmops.prepare.progress import Advance
from llmops.prepare.stats import StepStats, Timer, merge_steps
from llmops.prepare.steps.cleaners import Cleaner
from llmops.prepare.steps.dedup import KEPT, deduplicate
from llmops.prepare.steps.filters import QualityFilter
from llmops.prepare.steps.minhash import Signatures, read_exact, read_signatures
from llmops.prepare.steps.readers import Reader
from llmops.prepare.workdir import Plan, WorkDir, temp_tag
from llmops.spec.prepare import PrepareSpec

ENCODE_BATCH = 256


@dataclass
class Context:
    spec: PrepareSpec
    work: WorkDir
    plan: Plan
    progress: Advance
    threads: int = 1


@contextlib.contextmanager
def committed(*paths: Path) -> Iterator[list[Path]]:
    """Temporary names for `paths`, all renamed into place only when the block succeeds, and on disk by then
    (data and renames), so that a marker written next never stands for data a crash of the host lost."""
    tmps = [p.with_name(f".{p.name}.tmp-{temp_tag()}") for p in paths]
    try:
        yield tmps
        for tmp in tmps:
            fsync_path(tmp)
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
        for folder in dict.fromkeys(p.parent for p in paths):
            fsync_path(folder)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def clean(ctx: Context, shard: int) -> dict:
    """Read this shard's units; clean, filter, hash; keep the documents for later phases."""
    spec, work = ctx.spec, ctx.work
    names = [work.path("clean", shard, s) for s in (".arrow", ".exact", ".sig", ".quarantine.jsonl")]
    with committed(*names) as (arrow, exact, sig, quarantine):
        with open(exact, "wb") as fe, open(sig, "wb") as fs, open(quarantine, "wb") as fq:
            def to_quarantine(bad) -> None:
                fq.write((json.dumps(bad.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))

            steps = [Reader(ctx.plan.units, spec.input, to_quarantine, ctx.progress), Cleaner(spec.clean),
                     QualityFilter(spec.filters), Signatures(spec.dedup, fe, fs)]
            writer = store.DocWriter(arrow)
            docs: Iterator = iter(())
            for step in steps:
                docs = step.run(docs, shard, ctx.plan.num_shards)
            for doc in docs:
                writer.add(doc)
            writer.close()
    return {"documents": writer.count, "steps": [s.stats.to_dict() for s in steps]}


def dedup(ctx: Context, shard: int) -> dict:
    """The global reduce: decide which documents of every shard are duplicates."""
    spec, work, n_shards = ctx.spec, ctx.work, ctx.plan.num_shards
    markers = [work.read_marker("clean", i, n_shards) for i in range(n_shards)]
    check_error_rate(spec, markers, work)
    counts = [m["documents"] for m in markers]
    exact = np.concatenate([read_exact(work.path("clean", i, ".exact")) for i in range(n_shards)])
    width = spec.dedup.num_perm if spec.dedup.near else 0
    sigs = (np.concatenate([read_signatures(work.path("clean", i, ".sig"), width) for i in range(n_shards)])
            if width else np.empty((len(exact), 0), dtype=np.uint32))
    stats = StepStats("dedup", docs_in=len(exact), bytes_in=int(exact[:, 1].sum()))
    with Timer(stats):
        decision = deduplicate(exact[:, 0], sigs, spec.dedup, ctx.progress, workers=ctx.threads)
    kept = decision.kind == KEPT
    stats.docs_out, stats.bytes_out = int(kept.sum()), int(exact[kept, 1].sum())
    stats.dropped.update({"exact_duplicate": int((decision.kind == 1).sum()),
                          "near_duplicate": int((decision.kind == 2).sum())})
    stats.totals.update({"exact_clusters": decision.exact_clusters, "near_clusters": decision.near_clusters,
                         "largest_cluster": decision.largest_cluster, "lsh_candidates": decision.candidate_pairs})
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for i in range(n_shards):
        with committed(work.path("dedup", i, ".remove.npy")) as (tmp,):
            with open(tmp, "wb") as f:
                np.save(f, np.flatnonzero(~kept[offsets[i]:offsets[i + 1]]))
    _write_duplicates(work, decision, offsets, n_shards)
    return {"documents": stats.docs_out, "steps": [stats.to_dict()]}


def _write_duplicates(work: WorkDir, decision, offsets: np.ndarray, n_shards: int) -> None:
    """duplicates.jsonl: each dropped document, the kept document it duplicates, how, how similar, and (`via`)
    the dropped document it is an exact copy of when that one was a near duplicate of the kept one."""
    dropped = np.flatnonzero(decision.kind != KEPT)
    ids: list[str] = []
    if len(dropped):
        for i in range(n_shards):
            ids += store.read_ids(work.path("clean", i, ".arrow"))
    with committed(work.root / "dedup" / "duplicates.jsonl") as (tmp,):
        with open(tmp, "w", encoding="utf-8") as f:
            for x in dropped.tolist():
                kind = "exact" if decision.kind[x] == 1 else "near"
                row = {"id": ids[x], "duplicate_of": ids[decision.duplicate_of[x]], "kind": kind,
                       "similarity": round(float(decision.similarity[x]), 4)}
                if decision.via[x] >= 0:
                    row["via"] = ids[decision.via[x]]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def check_error_rate(spec: PrepareSpec, markers: list[dict], work: WorkDir) -> None:
    """Fail when more input records were quarantined than `max_error_rate` allows."""
    read = merge_steps([m["steps"][:1] for m in markers])[0]
    bad = sum(read.dropped.values())
    if read.docs_in and bad / read.docs_in > spec.max_error_rate:
        reasons = ", ".join(f"{k} {v:,}" for k, v in read.dropped.most_common())
        raise UserError(f"{bad:,} of {read.docs_in:,} input records ({100 * bad / read.docs_in:.1f}%) could not be "
                        f"used ({reasons}); prepare.max_error_rate is {100 * spec.max_error_rate:.1f}%. "
                        f"They are listed with reasons in {work.root / 'clean'}/shard-*.quarantine.jsonl",
                        "fix or drop the bad input (the next run sees the change and cleans the input again), "
                        "or raise prepare.max_error_rate to accept it (the cleaned shards are kept); then run "
                        "again")


def tokenizer(ctx: Context, shard: int) -> dict:
    """Train the tokenizer on a sample of the kept documents, or check and copy the given one."""
    from llmops.prepare import tokenizer as tok

    spec, work = ctx.spec, ctx.work
    cfg = spec.tokenizer
    if cfg is None:
        return {"facts": None, "steps": []}
    out = tokenizer_at(ctx)
    stats = StepStats("tokenizer")
    with Timer(stats):
        if spec.pretrained_tokenizer:
            from llmops.prepare import pretrained

            facts = pretrained.install(pretrained.folder(cfg.model), out)
        elif cfg.model is not None:
            facts = tok.install(cfg.model, out)
        else:
            kept_bytes = work.read_marker("dedup", 0, 1)["steps"][0]["bytes_out"]
            if kept_bytes == 0:
                raise UserError("no document is left after cleaning, filtering and deduplication to train the "
                                "tokenizer on", "check the input and prepare.filters (the counts per rule are in "
                                f"{work.root / 'done'}/clean-*.json), or give prepare.tokenizer.model")
            rate = min(1.0, cfg.sample_bytes / max(1, kept_bytes))
            texts = _counting((d for d in kept_documents(ctx) if tok.sampled(d.id, rate)), stats, ctx.progress)
            facts = tok.train(cfg, tok.training_lines(texts, cfg.sample_bytes), out=out, threads=ctx.threads)
    stats.totals.update({"vocab_size": facts.vocab_size})
    return {"facts": asdict(facts), "steps": [stats.to_dict()]}


def _counting(docs: Iterator, stats: StepStats, progress: Advance) -> Iterator[str]:
    """The texts of the sampled documents, counted as the tokenizer step's input."""
    for doc in docs:
        stats.docs_in += 1
        stats.docs_out += 1
        stats.bytes_in += doc.nbytes
        stats.bytes_out += doc.nbytes
        progress(doc.nbytes)
        yield doc.text


def kept_documents(ctx: Context, shards: range | None = None) -> Iterator:
    for i in shards if shards is not None else range(ctx.plan.num_shards):
        remove = np.load(ctx.work.path("dedup", i, ".remove.npy"))
        for _, doc in store.iter_docs(ctx.work.path("clean", i, ".arrow"), remove):
            yield doc


def tokenize(ctx: Context, shard: int) -> dict:
    """Write this shard's kept documents as JSONL and as token ids with an end-of-document token."""
    from llmops.prepare.steps.writer import IndexedWriter, jsonl_suffix, open_jsonl

    spec, work = ctx.spec, ctx.work
    stats = StepStats("tokenize")
    facts = work.read_marker("tokenizer", 0, 1)["facts"]
    jsonl_path = work.path("tokenize", shard, jsonl_suffix(spec.output.compression)) if spec.output.jsonl else None
    writer = IndexedWriter(work.path("tokenize", shard, ""), facts["vocab_size"]) if facts else None
    encoder = _encoder(ctx, facts)
    try:
        with Timer(stats), committed(*([jsonl_path] if jsonl_path else [])) as tmps:
            out = open_jsonl(tmps[0], spec.output.compression) if tmps else None
            batch: list = []
            for doc in kept_documents(ctx, range(shard, shard + 1)):
                batch.append(doc)
                if len(batch) >= ENCODE_BATCH:
                    _write_batch(batch, out, writer, encoder, facts, stats, ctx)
                    batch = []
            _write_batch(batch, out, writer, encoder, facts, stats, ctx)
            if out is not None:
                out.close()
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return {"documents": stats.docs_out, "tokens": stats.totals["tokens"], "steps": [stats.to_dict()]}


def tokenizer_at(ctx: Context) -> Path:
    """Where the tokenizer phase leaves the tokenizer: a folder of a Hugging Face tokenizer's files, or the
    SentencePiece model."""
    return ctx.work.root / ("tokenizer" if ctx.spec.pretrained_tokenizer else "tokenizer.model")


def _encoder(ctx: Context, facts: dict | None):
    if not facts:
        return None
    if ctx.spec.pretrained_tokenizer:
        from llmops.prepare.pretrained import DocumentEncoder

        return DocumentEncoder(tokenizer_at(ctx), threads=ctx.threads)
    from llmops.prepare.tokenizer import load

    return load(tokenizer_at(ctx))


def _write_batch(batch, out, writer, encoder, facts, stats: StepStats, ctx: Context) -> None:
    from llmops.prepare.steps.writer import document_line

    if not batch:
        return
    # `threads` SentencePiece threads: one when the local executor gives each shard a core, more when a
    # cluster task has several CPUs (left alone, SentencePiece starts one thread per core of the machine).
    texts = [d.text for d in batch]
    encoded = encoder.encode(texts, out_type=int, num_threads=ctx.threads) if encoder is not None else None
    for k, doc in enumerate(batch):
        stats.docs_in += 1
        stats.docs_out += 1
        stats.bytes_in += doc.nbytes
        stats.bytes_out += doc.nbytes
        if out is not None:
            out.write(document_line(doc))
        if encoded is not None:
            ids = np.array(encoded[k] + [facts["eos_id"]], dtype=writer.dtype)
            writer.add(ids)
            stats.totals["tokens"] += len(ids)
        ctx.progress(doc.nbytes)
