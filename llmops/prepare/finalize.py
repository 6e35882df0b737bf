"""The last phase: merge the shards' outputs into the output folder, write stats and metadata.

The output folder receives files only here, each renamed into place when
complete, ``metadata.json`` last: a folder with ``metadata.json`` is a
finished dataset.
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
from pathlib import Path

from llmops.prepare.phases import Context, committed, tokenizer_at
from llmops.prepare.stats import merge_steps
from llmops.prepare.steps.writer import concatenate, jsonl_suffix
from llmops.prepare.workdir import remove_stale_temps, write_json
from llmops.spec.prepare import PrepareSpec


def output_names(config: PrepareSpec) -> set[str]:
    """The names finalize may write into output.dir."""
    from llmops.prepare.pretrained import FILES

    prefix = Path(config.prefix).name
    return {f"{prefix}.bin", f"{prefix}.idx", "tokenizer.model", *FILES, "metadata.json", "stats.json",
            "quarantine.jsonl", "duplicates.jsonl", f"documents{jsonl_suffix(config.output.compression)}"}


def finalize(ctx: Context, shard: int) -> dict:
    spec, work, n = ctx.spec, ctx.work, ctx.plan.num_shards
    out = Path(spec.output.dir)
    tok = work.read_marker("tokenizer", 0, 1)
    shards = [work.read_marker("tokenize", i, n) for i in range(n)]
    facts = tok["facts"]
    # A finalize killed between writing and renaming left its temporary files (the whole dataset, for the .bin)
    remove_stale_temps(out, output_names(spec))
    # A metadata.json marks a finished dataset: one from an earlier preparation must not stand over files this
    # one has begun to replace (it is written again last).
    (out / "metadata.json").unlink(missing_ok=True)
    if facts:
        _merge_indexed(ctx, out, facts["vocab_size"])
        _copy_tokenizer(ctx, out)
    if spec.output.jsonl:
        suffix = jsonl_suffix(spec.output.compression)
        _concatenate([work.path("tokenize", i, suffix) for i in range(n)], out / f"documents{suffix}")
    _concatenate([work.path("clean", i, ".quarantine.jsonl") for i in range(n)], out / "quarantine.jsonl")
    _concatenate([work.root / "dedup" / "duplicates.jsonl"], out / "duplicates.jsonl")
    report = _report(ctx, tok, shards)
    write_json(out / "stats.json", report)
    if facts:
        write_json(out / "metadata.json", _metadata(spec, facts, report))
    return {"report": report}


def _merge_indexed(ctx: Context, out: Path, vocab_size: int) -> None:
    from llmops.prepare.steps.writer import IndexedWriter

    writer = IndexedWriter(Path(ctx.spec.prefix), vocab_size)
    # add_index runs gc.collect() per shard, which walks every object torch and megatron
    # created (about half a second each); freezing them first makes each collect cheap.
    gc.freeze()
    try:
        for i in range(ctx.plan.num_shards):
            prefix = ctx.work.path("tokenize", i, "")
            writer.append_dataset(prefix)
            ctx.progress(Path(str(prefix) + ".bin").stat().st_size)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        gc.unfreeze()


def _copy_tokenizer(ctx: Context, out: Path) -> None:
    """The tokenizer into the output folder: the SentencePiece model, or a Hugging Face tokenizer's files
    (the output folder is then a tokenizer folder that transformers' AutoTokenizer loads)."""
    source = tokenizer_at(ctx)
    for path in sorted(source.iterdir()) if source.is_dir() else [source]:
        with committed(out / path.name) as (tmp,):
            shutil.copyfile(path, tmp)


def _concatenate(parts: list[Path], target: Path) -> None:
    with committed(target) as (tmp,):
        with open(tmp, "wb") as f:
            concatenate([p for p in parts if p.exists()], f)


def _report(ctx: Context, tok: dict, shards: list[dict]) -> dict:
    work, n = ctx.work, ctx.plan.num_shards
    clean = [work.read_marker("clean", i, n)["steps"] for i in range(n)]
    dedup = work.read_marker("dedup", 0, 1)["steps"]
    steps = merge_steps(clean + [dedup] + [tok["steps"]] + [s["steps"] for s in shards])
    read = steps[0]
    return {
        "steps": [s.to_dict() for s in steps],
        "input": {"records": read.docs_in, "bytes": read.bytes_in, "units": len(ctx.plan.units),
                  "skipped_files": ctx.plan.data.get("skipped_files", []), "shards": n},
        "quarantined": dict(read.dropped),
        "output": {"documents": sum(s["documents"] for s in shards),
                   "tokens": sum(s.get("tokens", 0) for s in shards)},
    }


def _metadata(spec, facts: dict, report: dict) -> dict:
    """What the pretrain stage and later chat/alignment work need to know about the tokens."""
    return {
        "prefix": spec.prefix,
        "paths": [spec.prefix],
        "tokenizer_model": spec.tokenizer_path,
        "vocab_size": facts["vocab_size"],
        "eod_id": facts["eos_id"],
        "pad_id": facts["pad_id"],
        "bos_id": facts["bos_id"],
        "unk_id": facts["unk_id"],
        "special_tokens": facts["special_tokens"],
        "documents": report["output"]["documents"],
        "tokens": report["output"]["tokens"],
        "python": sys.version.split()[0],
        "config": json.loads(spec.model_dump_json()),
    }
