"""Training throughput on one GPU: this project's model against the references, in one run.

For each model size it measures, each in a fresh process so that memory and
compilation caches do not leak between them:

* ``llmops``          the project's Megatron-Core GPT (layer spec chosen by ``model.attention: auto``),
                      trained through the project's own trainer (Megatron DDP, distributed optimizer);
* ``llmops-compile``  the same with ``model.compile: true`` (each transformer layer compiled);
* ``megatron-local``  Megatron-Core's local layer spec and fallback kernels unchanged (unfused attention,
                      Megatron's cross entropy, ``train.fused_kernels: false``);
* ``torch``           a plain PyTorch GPT using ``scaled_dot_product_attention``, autocast bf16,
                      fused AdamW;
* ``torch-compile``   the same under ``torch.compile``.

Every implementation runs the same shape, sequence length, micro-batch and
number of micro-batches per optimizer step, and reports tokens/s, TFLOP/s,
MFU against 989 TFLOP/s (dense bf16 H100) with
``6*(12*L*h^2 + V*h) + 12*L*h*s`` FLOPs per token, the causal variant (attention
halved), and peak memory; then each one's ratio to ``torch-compile``.

Usage (one GPU)::

    python benchmarks/train_throughput.py --sizes gpt-350m gpt-1.3b gpt-8b-4l --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SIZES = {
    # name: (preset or shape overrides, micro batch)
    "gpt-350m": ({"preset": "gpt-350m"}, 8),
    "gpt-1.3b": ({"preset": "gpt-1.3b"}, 8),
    # An 8B-class layer (hidden 4096, 32 heads, 4x MLP) with the layer count cut to fit one GPU.
    "gpt-8b-4l": ({"preset": "gpt-6.7b", "num_layers": 4}, 4),
}
IMPLS = ("llmops", "llmops-compile", "megatron-local", "torch", "torch-compile")
PEAK = 989e12
MICROBATCHES = 4


def _spec(size: str, impl: str):
    from llmops.spec import parse_spec

    shape, mbs = SIZES[size]
    model = dict(shape)
    model["attention"] = "megatron" if impl == "megatron-local" else "auto"
    if impl == "llmops-compile":
        model["compile"] = True
    return parse_spec({
        "name": "bench", "resources": {"gpus_per_node": 1}, "model": model,
        "train": {"steps": 1000, "global_batch_size": mbs * MICROBATCHES, "micro_batch_size": mbs,
                  "warmup_steps": 10, "precision": "bf16", "tensorboard": False,
                  "fused_kernels": impl != "megatron-local"},
    })


def _batches(spec, device, n=4):
    import torch

    g = torch.Generator().manual_seed(0)
    s, b, v = spec.model.seq_length, spec.train.micro_batch_size, spec.model.vocab_size
    out = []
    for _ in range(n):
        tokens = torch.randint(0, v, (b, s + 1), generator=g)
        out.append({"tokens": tokens[:, :-1].to(device), "labels": tokens[:, 1:].to(device),
                    "loss_mask": torch.ones(b, s, device=device),
                    "position_ids": torch.arange(s, device=device).expand(b, s).contiguous()})
    return out


def _cycle(items):
    while True:
        yield from items


def run_llmops(spec, steps: int, warmup: int) -> float:
    """Seconds per optimizer step through the project's own trainer."""
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29511"),
                      RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import tempfile
    from pathlib import Path

    from llmops_model import parallel, train

    layout, device = parallel.setup(spec)
    t = train.build(spec, layout=layout, device=device, ckpt_root=Path(tempfile.mkdtemp()))  # never saved to
    stream = _cycle(_batches(spec, device))
    for _ in range(warmup):
        train.train_step(t, stream)
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        train.train_step(t, stream)
    torch.cuda.synchronize()
    return (time.perf_counter() - began) / steps


def run_torch(spec, steps: int, warmup: int, *, compiled: bool) -> float:
    """Seconds per optimizer step for the plain PyTorch reference."""
    import torch

    from plain_gpt import PlainGPT

    m = spec.model
    device = torch.device("cuda")
    model = PlainGPT(layers=m.num_layers, hidden=m.hidden_size, heads=m.num_attention_heads,
                     ffn=m.ffn_hidden_size, vocab=m.padded_vocab_size, seq=m.seq_length).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=True)
    step_fn = torch.compile(model) if compiled else model
    batches = _batches(spec, device)

    def step():
        for b in batches[:MICROBATCHES]:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = step_fn(b["tokens"], b["labels"]) / MICROBATCHES
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - began) / steps


def measure(size: str, impl: str, steps: int, warmup: int) -> dict:
    import torch

    from llmops_model.metrics import flops_per_token

    spec = _spec(size, impl)
    torch.cuda.reset_peak_memory_stats()
    if impl.startswith("torch"):
        sec = run_torch(spec, steps, warmup, compiled=impl == "torch-compile")
    else:
        sec = run_llmops(spec, steps, warmup)
    tokens = spec.train.global_batch_size * spec.model.seq_length / sec
    flops, causal = flops_per_token(spec), flops_per_token(spec, causal=True)
    return {"size": size, "impl": impl, "micro_batch": spec.train.micro_batch_size, "step_s": sec,
            "tokens_per_s": tokens, "tflops": tokens * flops / 1e12, "mfu": tokens * flops / PEAK,
            "mfu_causal": tokens * causal / PEAK, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}


def _child(size: str, impl: str, steps: int, warmup: int) -> dict:
    cmd = [sys.executable, __file__, "--one", size, impl, "--steps", str(steps), "--warmup", str(warmup)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = (res.stderr.strip().splitlines() or ["no output"])[-1]
    return {"size": size, "impl": impl, "error": "out of memory" if "out of memory" in res.stderr else err}


def report(rows: list[dict]) -> str:
    lines = [f"{'size':10} {'impl':15} {'mb':>3} {'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'MFU-c':>6} "
             f"{'mem GiB':>8} {'vs torch-compile':>16}"]
    for size in dict.fromkeys(r["size"] for r in rows):
        ref = next((r for r in rows if r["size"] == size and r["impl"] == "torch-compile" and "error" not in r), None)
        for r in (r for r in rows if r["size"] == size):
            if "error" in r:
                lines.append(f"{size:10} {r['impl']:15} {'':>3} {r['error']}")
                continue
            ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
            lines.append(f"{size:10} {r['impl']:15} {r['micro_batch']:>3} {r['tokens_per_s']:>9.0f} "
                         f"{r['tflops']:>8.1f} {100 * r['mfu']:>5.1f}% {100 * r['mfu_causal']:>5.1f}% "
                         f"{r['peak_mem_gib']:>8.1f} {ratio:>16}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--one", nargs=2, metavar=("SIZE", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.steps, args.warmup)), flush=True)
        return
    rows = []
    for size in args.sizes:
        for impl in args.impls:
            rows.append(_child(size, impl, args.steps, args.warmup))
            print(json.dumps(rows[-1]), flush=True)
    print(report(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
