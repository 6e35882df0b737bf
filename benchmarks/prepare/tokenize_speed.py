"""Tokenization throughput per core: the prepare pipeline's tokenize phase against plain SentencePiece.

    apt-get install -y python3-doc manpages manpages-dev   # the corpus (see corpus.py)
    python benchmarks/prepare/tokenize_speed.py                  # --size-mb 50; about two minutes

Plain ``SentencePieceProcessor.encode(texts)`` on texts already in memory is
the ceiling: no reading, no writing. The tokenize phase reads the kept
documents back from the shard's Arrow file, encodes them in batches, appends
the end-of-document token and writes them with megatron-core's
IndexedDatasetBuilder. Both run in this one process on one core, the same
32k-piece BPE model (trained by the pipeline on the corpus), the same
documents, megatron-core already imported (as the executor does before it
forks workers); we report the best of --repeat interleaved runs, in tokens per
second of wall time and of CPU time (the development machines are shared).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from corpus import build_throughput_corpus  # a script: its own folder is on sys.path


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def timed(fn) -> tuple[float, float, object]:
    (w0, c0) = clocks()
    result = fn()
    (w1, c1) = clocks()
    return w1 - w0, c1 - c0, result


def prepare(corpus: Path, out: Path):
    """Every phase once, on one core: the kept documents, the trained tokenizer, the tokenize phase's counts."""
    from llmops.prepare.pipeline import PHASES, run_phase
    from llmops.prepare.steps.writer import preload
    from llmops.spec.prepare import PrepareSpec

    shutil.rmtree(out, ignore_errors=True)
    spec = PrepareSpec.model_validate({"input": {"paths": [str(corpus / "*.jsonl")]},
                                       "output": {"dir": str(out), "jsonl": False, "keep_work": True}})
    preload()  # as the executor does before forking workers: megatron-core's import is not tokenization
    timing = {phase: timed(lambda phase=phase: run_phase(spec, phase=phase, shard=0, num_shards=1, threads=1))
              for phase in PHASES}
    print(json.dumps({k: [round(v[0], 2), round(v[1], 2)] for k, v in timing.items()}))
    return spec, timing["tokenize"][2]


def compare(spec, out: Path, repeat: int) -> tuple[dict, int, int]:
    """(name -> [(wall, cpu)], plain tokens, text bytes): plain encode and the tokenize phase, interleaved."""
    import numpy as np

    from llmops.prepare import store
    from llmops.prepare.pipeline import run_phase
    from llmops.prepare.tokenizer import load

    work = out / "work"
    removed = np.load(work / "dedup" / "shard-00000.remove.npy")
    texts = [d.text for _, d in store.iter_docs(work / "clean" / "shard-00000.arrow", removed)]
    sp = load(out / "tokenizer.model")
    runs: dict[str, list[tuple[float, float]]] = {"plain sentencepiece encode": [], "llmops tokenize phase": []}
    for _ in range(repeat):  # interleaved; the best of each counts (the machine is shared)
        w, c, plain = timed(lambda: sum(len(ids) for ids in sp.encode(texts, out_type=int, num_threads=1)))
        runs["plain sentencepiece encode"].append((w, c))
        (work / "done" / "tokenize-00000-of-00001.json").unlink()
        w, c, _ = timed(lambda: run_phase(spec, phase="tokenize", shard=0, num_shards=1))
        runs["llmops tokenize phase"].append((w, c))
    return runs, plain, sum(len(t.encode()) for t in texts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=float, default=50)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/llmops-bench-tokenize"))
    args = p.parse_args()
    from rich.console import Console

    info = build_throughput_corpus(args.workdir / "corpus", size_mb=args.size_mb, files=1)
    out = args.workdir / "out"
    spec, result = prepare(args.workdir / "corpus", out)
    runs, plain, nbytes = compare(spec, out, args.repeat)
    tokens = result["tokens"]
    console = Console()
    console.print(f"corpus {info['bytes'] / 1e6:.0f} MB; tokenized {result['documents']:,} kept documents, "
                  f"{nbytes / 1e6:.1f} MB, {tokens:,} tokens with the end-of-document tokens ({plain:,} without); "
                  f"best of {args.repeat}")
    best = {}
    for (name, times), n in zip(runs.items(), (plain, tokens)):
        w, c = min(t[0] for t in times), min(t[1] for t in times)
        best[name] = (n / w, n / c)
        console.print(f"{name:>27}: {n / w / 1e6:5.2f} M tokens/s wall, {n / c / 1e6:5.2f} M tokens per CPU second, "
                      f"{nbytes / c / 1e6:5.1f} MB per CPU second")
    (pw, pc), (ow, oc) = best.values()
    console.print(f"tokenize phase / plain encode: {oc / pc:.2f} per CPU second, {ow / pw:.2f} per wall second")


if __name__ == "__main__":
    main()
