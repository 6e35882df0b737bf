"""Near-duplicate quality of `llmops prepare` (and of datatrove's MinHash pipeline) at known similarities.

    apt-get install -y python3-doc manpages manpages-dev   # the real documents (see corpus.py)
    pip install -e '.[bench]'                               # for the datatrove comparison
    python benchmarks/prepare/quality.py                    # --pairs 3000; a few minutes on 2 cores

Construction (seeded):
1. Base documents: real documents of 150 to 2,000 words from this machine
   (python3-doc sections, man pages, docstrings), chosen greedily so that no
   two share more than 0.2 word-5-gram Jaccard similarity, checked exactly.
2. For each base document, a variant made by controlled edits: random word
   substitutions, insertions or deletions, or all three, after a paragraph
   reordering in half of the pairs, applied until the exact 5-gram Jaccard
   similarity (lower-cased words, punctuation ignored) falls to a target drawn
   uniformly from [0.3, 0.98]. The exact similarity is recorded per pair.
3. Both documents of every pair go into one shuffled corpus; each system
   deduplicates it with its default settings (llmops: exact + near, cleaning,
   filters and tokenizer off; datatrove: 5-grams, 14 buckets x 8 hashes).

A pair is flagged when its two documents end in one duplicate cluster.
Figures: recall over pairs with J >= 0.8; false-positive rate over pairs with
J < 0.5; precision = flagged pairs with J >= 0.8 over all flagged pairs with J
>= 0.8 or < 0.5 (pairs in between are neither duplicates nor clearly distinct,
and are reported per bin). Documents of different pairs are distinct by
construction, so any cluster joining two pairs counts as false positives.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

from corpus import base_documents  # a script: its own folder is on sys.path

WORD = re.compile(r"\w+")


def shingle_set(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = WORD.findall(text.lower())
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def distinct_bases(docs: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` documents of 150-2,000 words, no two above 0.2 Jaccard (exact, via an inverted index)."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    postings: dict[tuple, list[int]] = defaultdict(list)
    chosen: list[str] = []
    sizes: list[int] = []
    for i in order:
        n_words = len(WORD.findall(docs[i]))
        if not 150 <= n_words <= 2000:
            continue
        s = shingle_set(docs[i])
        overlap = Counter(j for sh in s for j in postings.get(sh, ()))
        if any(c / (len(s) + sizes[j] - c) > 0.2 for j, c in overlap.items()):
            continue
        for sh in s:
            postings[sh].append(len(chosen))
        chosen.append(docs[i])
        sizes.append(len(s))
        if len(chosen) == count:
            break
    return chosen


def edit_ops(text: str, kind: str, rng: random.Random, vocab: list[str]) -> list[tuple]:
    """A random sequence of word edits of the given kind, to apply as a prefix of any length."""
    n = len(text.split(" "))
    kinds = ["substitute", "insert", "delete"] if kind == "mixed" else [kind]
    return [(rng.choice(kinds), rng.random(), rng.choice(vocab)) for _ in range(n)]


def apply(text: str, ops: list[tuple]) -> str:
    words = text.split(" ")
    for op, where, word in ops:
        i = min(int(where * len(words)), len(words) - 1)
        if op == "substitute":
            words[i] = word
        elif op == "insert":
            words.insert(i, word)
        elif len(words) > 10:
            del words[i]
    return " ".join(words)


def reorder(text: str, rng: random.Random) -> str:
    paras = text.split("\n\n")
    if len(paras) > 1:
        i, j = rng.sample(range(len(paras)), 2)
        paras[i], paras[j] = paras[j], paras[i]
    return "\n\n".join(paras)


def make_variant(base: str, target: float, rng: random.Random, vocab: list[str]) -> tuple[str, float, str]:
    """The shortest prefix of random edits that takes Jaccard similarity to `target` or just below it."""
    kind = rng.choice(["substitute", "insert", "delete", "mixed"])
    start = reorder(base, rng) if rng.random() < 0.5 else base
    label = kind + ("+reorder" if start is not base else "")
    ops, ref = edit_ops(start, kind, rng, vocab), shingle_set(base)
    lo, hi = 0, len(ops)
    while lo < hi:  # similarity falls (almost always) as more edits apply
        mid = (lo + hi) // 2
        if jaccard(ref, shingle_set(apply(start, ops[:mid]))) <= target:
            hi = mid
        else:
            lo = mid + 1
    variant = apply(start, ops[:lo])
    return variant, jaccard(ref, shingle_set(variant)), label


def build_pairs(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    bases = distinct_bases(base_documents(), count, rng)
    vocab = sorted({w for d in bases[:500] for w in re.findall(r"[A-Za-z]{3,}", d)})
    pairs = []
    for k, base in enumerate(bases):
        variant, j, kind = make_variant(base, rng.uniform(0.3, 0.98), rng, vocab)
        pairs.append({"pair": k, "a": base, "b": variant, "jaccard": j, "kind": kind})
    return pairs


def write_corpus(pairs: list[dict], folder: Path, seed: int) -> None:
    records = [{"id": f"p{p['pair']}-{side}", "text": p[side]} for p in pairs for side in ("a", "b")]
    random.Random(seed).shuffle(records)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(4):
        with open(folder / f"part-{k}.jsonl", "w", encoding="utf-8") as f:
            for r in records[k::4]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def llmops_clusters(corpus: Path, out: Path, workers: int) -> dict[str, str]:
    """Document id -> cluster (the id of the kept document) for every document llmops removed or kept."""
    from rich.console import Console

    from llmops.prepare.executor import run_all
    from llmops.prepare.progress import Display
    from llmops.spec.prepare import PrepareSpec

    spec = PrepareSpec.model_validate({
        "input": {"paths": [str(corpus / "*.jsonl")]}, "output": {"dir": str(out), "compression": "none"},
        "clean": {"unicode_nfc": False, "remove_control_chars": False, "normalize_whitespace": False},
        "filters": {"enabled": False}, "tokenizer": None, "workers": workers})
    run_all(spec, display=Display(Console(stderr=True), interval=60))
    parent = {}
    for line in (out / "duplicates.jsonl").read_text().splitlines():
        d = json.loads(line)
        parent[d["id"]] = d["duplicate_of"]

    def root(x: str) -> str:
        while x in parent:
            x = parent[x]
        return x
    return {x: root(x) for x in parent} | {r: r for r in set(map(root, parent))}


def datatrove_clusters(corpus: Path, out: Path, workers: int) -> dict[str, str]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg, files = MinhashConfig(), len(list(corpus.glob("*.jsonl")))
    reader = lambda: JsonlReader(str(corpus), glob_pattern="*.jsonl")  # noqa: E731
    stages = [
        ([reader(), MinhashDedupSignature(str(out / "sigs"), config=cfg)], files),
        ([MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"), config=cfg)], cfg.num_buckets),
        ([MinhashDedupCluster(str(out / "buckets"), str(out / "remove"), config=cfg, save_cluster_id=True)], 1),
        ([reader(), MinhashDedupFilter(str(out / "remove"), load_cluster_ids=True,
                                       exclusion_writer=JsonlWriter(str(out / "removed"), compression=None)),
          JsonlWriter(str(out / "kept"), compression=None)], files),
    ]
    for k, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, start_method="fork",
                              logging_dir=str(out / "logs" / str(k))).run()
    clusters = {}
    for f in sorted((out / "kept").glob("*.jsonl")) + sorted((out / "removed").glob("*.jsonl")):
        for line in open(f, encoding="utf-8"):
            d = json.loads(line)
            cid = d["metadata"].get("minhash_cluster_id", -1)
            if cid != -1:
                clusters[d["id"]] = f"c{cid}"
    return clusters


def score(pairs: list[dict], clusters: dict[str, str]) -> dict:
    by_pair = {p["pair"]: p for p in pairs}
    flagged = {p["pair"] for p in pairs if clusters.get(f"p{p['pair']}-a", "A") == clusters.get(f"p{p['pair']}-b", "B")}
    members: dict[str, list[str]] = defaultdict(list)
    for doc, c in clusters.items():
        members[c].append(doc)
    cross = 0  # flagged pairs of documents from different constructed pairs: distinct by construction
    for docs in members.values():
        fams = Counter(d.split("-")[0] for d in docs)
        cross += (len(docs) * (len(docs) - 1) - sum(v * (v - 1) for v in fams.values())) // 2
    pos = [k for k, p in by_pair.items() if p["jaccard"] >= 0.8]
    neg = [k for k, p in by_pair.items() if p["jaccard"] < 0.5]
    tp, fp = sum(k in flagged for k in pos), sum(k in flagged for k in neg) + cross
    bins = {}
    for lo in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        ks = [k for k, p in by_pair.items() if lo <= p["jaccard"] < lo + 0.1]
        bins[f"{lo:.1f}-{lo + 0.1:.1f}"] = f"{sum(k in flagged for k in ks)}/{len(ks)}"
    fp_rate = sum(k in flagged for k in neg) / len(neg)
    return {"recall_J>=0.8": round(tp / len(pos), 4), "fp_rate_J<0.5": round(fp_rate, 4),
            "precision": round(tp / max(1, tp + fp), 4), "cross_pair_false_positives": cross,
            "flagged_by_similarity": bins, "pairs": {"J>=0.8": len(pos), "J<0.5": len(neg), "all": len(pairs)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/llmops-bench-quality"))
    p.add_argument("--skip-datatrove", action="store_true")
    args = p.parse_args()
    import shutil

    shutil.rmtree(args.workdir, ignore_errors=True)
    start = time.perf_counter()
    pairs = build_pairs(args.pairs, args.seed)
    write_corpus(pairs, args.workdir / "corpus", args.seed)
    kinds = Counter(p["kind"].split("+")[0] for p in pairs)
    print(f"{len(pairs)} pairs of real documents ({dict(kinds)}), built in {time.perf_counter() - start:.0f} s")
    systems = {"llmops": llmops_clusters}
    if not args.skip_datatrove:
        systems["datatrove"] = datatrove_clusters
    for name, run in systems.items():
        start = time.perf_counter()
        clusters = run(args.workdir / "corpus", args.workdir / name, args.workers)
        result = score(pairs, clusters)
        print(f"{name}: {json.dumps(result)}  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
