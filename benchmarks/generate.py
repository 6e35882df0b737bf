"""How fast `llmops generate` writes: tokens per second at batch 1 and batch 32, 64 new tokens each.

    python benchmarks/generate.py --preset gpt-1.3b            # a GPU: bf16, GPT-2 architecture
    python benchmarks/generate.py --preset llama-3.2-1b        # the Llama architecture
    python benchmarks/generate.py --preset tiny --batches 1    # a CPU
    python benchmarks/generate.py --run RUN --runs-dir DIR     # a trained run's latest checkpoint

The model is what `llmops generate` runs: a transformers folder written by
`llmops export` from a run's checkpoint (``--run``), or, for a preset, a
folder of that shape with random weights and a SentencePiece tokenizer
trained on the built-in docstring corpus. The end-of-sequence ids are
dropped so every completion is exactly `--new-tokens` long; each batch size
is timed after a warm-up call, best of `--repeats`, from the first token of
the prompt to the last new token (prefill included), which is what a user
waits for.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "Return a new list containing all items from the iterable in ascending order."


def preset_folder(preset: str, folder: Path, *, dtype: torch.dtype) -> Path:
    """A transformers folder of the preset's shape with random weights, and a tokenizer that fits it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmops.prepare import align_corpus
    from llmops.prepare.tokenizer import train
    from llmops.spec.load import parse_spec
    from llmops.spec.prepare import TokenizerSpec
    from llmops.spec.presets import PRESETS
    from llmops_model.hf import convert, tokenizer

    spec = parse_spec({"name": "bench", "resources": {"gpus_per_node": 1},
                       "train": {"steps": 1, "global_batch_size": 1, "micro_batch_size": 1},
                       "model": {"preset": preset, "seq_length": max(PRESETS[preset]["seq_length"], 512)}})
    sp = folder / "tokenizer.model"
    texts = [f"{e.summary}\n{e.name}" for e in align_corpus.entries(2000)]
    train(TokenizerSpec(vocab_size=min(4096, spec.model.vocab_size), byte_fallback=True), iter(texts), out=sp,
          threads=4)
    tok = tokenizer.build(sp, vocab_size=spec.model.padded_vocab_size, template=None,
                          max_length=spec.model.seq_length)
    cfg = convert.config(spec, eos_ids=[tok.eos_token_id], bos_id=tok.bos_token_id, pad_id=tok.pad_token_id,
                         dtype=dtype)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=dtype)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def run_folder(run: str, runs_dir: Path, folder: Path) -> Path:
    from llmops.runs.models import resolve
    from llmops_model.hf import export

    export.write(resolve(run, runs_root=runs_dir), folder, dtype=torch.float32, info=print)
    return folder


def measure(folder: Path, *, batches: list[int], new_tokens: int, repeats: int, compile: bool) -> list[dict]:
    from llmops_model.hf.generate import Generator, Sampling, pick_device

    device = pick_device("auto")
    gen = Generator.load(folder, device=device, compile=compile)
    gen.model.generation_config.eos_token_id = None  # every completion runs to new_tokens
    sampling = Sampling(max_new_tokens=new_tokens)
    ids = gen.encode(PROMPT)
    rows = []
    for batch in batches:
        prompts = [ids] * batch
        gen.complete(prompts, sampling)  # warm-up: kernels, caches, allocator
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            done = gen.complete(prompts, sampling)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
            assert all(c.tokens == new_tokens for c in done), [c.tokens for c in done]
        best = min(times)
        rows.append({"batch": batch, "compiled": compile, "new_tokens": new_tokens, "prompt_tokens": len(ids),
                     "seconds": round(best, 4),
                     "tokens_per_s": round(batch * new_tokens / best, 1),
                     "per_sequence_tokens_per_s": round(new_tokens / best, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt-1.3b")
    p.add_argument("--run", help="a trained run instead of a preset")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--batches", default="1,32")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also with a static KV cache and a compiled step")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args()
    from llmops_model.compat import mcore

    mcore.quiet_known_warnings()
    mcore.hide_wandb()
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    with tempfile.TemporaryDirectory(prefix="llmops-bench-generate-") as tmp:
        folder = run_folder(args.run, args.runs_dir, Path(tmp)) if args.run else \
            preset_folder(args.preset, Path(tmp), dtype=dtype)
        batches = [int(b) for b in args.batches.split(",")]
        rows = [row for compiled in ([False, True] if args.compile else [False])
                for row in measure(folder, batches=batches, new_tokens=args.new_tokens, repeats=args.repeats,
                                   compile=compiled)]
    what = {"model": args.run or args.preset, "device": torch.cuda.get_device_name() if torch.cuda.is_available()
            else "cpu", "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
            "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(what, indent=1) + "\n")
    print(json.dumps(what))


if __name__ == "__main__":
    main()
