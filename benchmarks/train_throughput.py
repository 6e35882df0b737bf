"""Training throughput on one GPU: this project's model against the references, in one run.

For each model size it measures, each in a fresh process so that memory and
compilation caches do not leak between them:

* ``llmops``          the project's Megatron-Core GPT with its defaults (the layers chosen by
                      ``model.attention: auto``, fused kernels, each step's forward and backward
                      replayed from a CUDA graph, compiled layers), trained through the project's own
                      trainer (Megatron DDP, distributed optimizer);
* ``llmops-no-te``    the same in a process where Transformer Engine cannot be imported (is the fast
                      path slowed down by TE merely being installed?);
* ``llmops-no-compile`` the same with ``model.compile: false``;
* ``llmops-eager``    the same without CUDA graphs (``train.cuda_graphs: false``, so the layers are not
                      compiled either): every kernel launched from Python;
* ``llmops-te``       Transformer Engine's layers in bf16 (``model.attention: te``), eager, through the
                      project's trainer;
* ``llmops-fp8-<recipe>`` the same with ``train.precision: fp8`` and that ``train.fp8_recipe``;
* ``llmops-fp8``      the project's defaults with ``train.precision: fp8``: the recipe ``auto`` picks for this
                      GPU, steps replayed from the CUDA graph where the recipe allows (``llmops_model.fp8``);
* ``megatron-local``  Megatron-Core's local layer spec and fallback kernels unchanged (unfused attention,
                      Megatron's cross entropy, ``train.fused_kernels: false``);
* ``torch``           a plain PyTorch model of the same architecture (GPT- or Llama-style) using
                      ``scaled_dot_product_attention``, autocast bf16, fused AdamW;
* ``torch-compile``   the same under ``torch.compile``.

Every implementation runs the same shape, sequence length, micro-batch and
number of micro-batches per optimizer step, and reports tokens/s, TFLOP/s,
MFU against 989 TFLOP/s (dense bf16 H100) with FLOPs per token counted from
the real shapes, ``6*(L*layer_weights + V*h) + 12*L*h*s`` (``layer_weights``
is ``12*h^2`` for GPT-style layers), the causal variant (attention halved),
and peak memory; then each one's ratio to ``torch-compile``. FP8 rows count
the same FLOPs (their MFU is against the bf16 peak).

Usage (one GPU)::

    python benchmarks/train_throughput.py --sizes gpt-350m gpt-1.3b gpt-8b-4l --out results.json
    python benchmarks/train_throughput.py --sizes gpt-1.3b llama-1b gpt-8b-4l \
        --impls torch-compile llmops llmops-no-te llmops-te llmops-fp8 llmops-fp8-delayed   # issue 23's table
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
    # Llama 3.2 1B's shape (GQA 32/8, SwiGLU, RMSNorm, RoPE, 128k vocabulary, tied embeddings) at sequence 2048.
    "llama-1b": ({"preset": "llama-3.2-1b", "seq_length": 2048}, 8),
}
FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
IMPLS = ("llmops", "llmops-no-te", "llmops-no-compile", "llmops-eager", "llmops-te", "llmops-fp8",
         *(f"llmops-fp8-{r}" for r in FP8_RECIPES), "megatron-local", "torch", "torch-compile")
GRAPHED = ("llmops", "llmops-no-te", "llmops-no-compile", "llmops-fp8")
PEAK = 989e12
MICROBATCHES = 4


def _spec(size: str, impl: str):
    from llmops.spec.load import parse_spec

    shape, mbs = SIZES[size]
    model = dict(shape)
    model["attention"] = {"megatron-local": "megatron", "llmops-te": "te"}.get(impl, "auto")
    if impl == "llmops-no-compile":
        model["compile"] = False
    fp8 = impl.removeprefix("llmops-fp8").removeprefix("-") or "auto" if impl.startswith("llmops-fp8") else None
    return parse_spec({
        "name": "bench", "resources": {"gpus_per_node": 1}, "model": model,
        "train": {"steps": 1000, "global_batch_size": mbs * MICROBATCHES, "micro_batch_size": mbs,
                  "warmup_steps": 10, "tensorboard": False, "eval_interval": 0,
                  "fused_kernels": impl != "megatron-local",
                  "cuda_graphs": impl in GRAPHED,
                  **({"precision": "fp8", "fp8_recipe": fp8} if fp8 else {"precision": "bf16"})},
    })


class _HideTransformerEngine:
    """An import hook under which `import transformer_engine` fails, as where it is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "transformer_engine" or name.startswith("transformer_engine."):
            raise ModuleNotFoundError(f"{name} hidden by the benchmark (llmops-no-te)", name=name)
        return None


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


def llmops_step(spec):
    """One optimizer step through the project's own trainer."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29511"),
                      RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import tempfile
    from pathlib import Path

    from llmops_model import parallel
    from llmops_model.train import loop

    layout, device = parallel.setup(spec)
    t = loop.build(spec, layout=layout, device=device, ckpt_root=Path(tempfile.mkdtemp()))  # never saved to
    stream = _cycle(_batches(spec, device))
    return lambda: loop.train_step(t, stream)


def torch_step(spec, *, compiled: bool):
    """One optimizer step of the plain PyTorch reference."""
    import torch
    from plain_gpt import PlainGPT

    m = spec.model
    device = torch.device("cuda")
    model = PlainGPT(layers=m.num_layers, hidden=m.hidden_size, heads=m.num_attention_heads,
                     ffn=m.ffn_hidden_size, vocab=m.padded_vocab_size, seq=m.seq_length,
                     llama=m.activation == "swiglu", kv_heads=m.num_query_groups, rope_base=m.rope_base).to(device)
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

    return step


def make_step(spec, impl: str):
    if impl.startswith("torch"):
        return torch_step(spec, compiled=impl == "torch-compile")
    return llmops_step(spec)


def seconds_per_step(step, steps: int, warmup: int) -> float:
    import torch

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

    from llmops_model.train.metrics import flops_per_token

    spec = _spec(size, impl)
    torch.cuda.reset_peak_memory_stats()
    sec = seconds_per_step(make_step(spec, impl), steps, warmup)
    tokens = spec.train.global_batch_size * spec.model.seq_length / sec
    flops, causal = flops_per_token(spec), flops_per_token(spec, causal=True)
    return {"size": size, "impl": impl, "micro_batch": spec.train.micro_batch_size, "step_s": sec,
            "tokens_per_s": tokens, "tflops": tokens * flops / 1e12, "mfu": tokens * flops / PEAK,
            "mfu_causal": tokens * causal / PEAK, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}


KERNEL_KINDS = (  # (kind, pattern on the kernel name), first match wins
    ("gemm", r"gemm|xmma|cutlass|nvjet|cublas|sm90_"),
    ("attention", r"flash|fmha|cudnn|attn|attention"),
    ("norm", r"layer_norm|layernorm|rms_norm"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("compiled", r"triton"),
    ("copy/cat", r"copy|memcpy|memset|catarray|cat_|transpose"),
    ("elementwise", r"elementwise|vectorized|reduce|fill|index|embedding"),
)
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def profile(size: str, impl: str, steps: int, warmup: int) -> dict:
    """Where one implementation's GPU time goes: idle share, kernel kinds, top kernels, GEMM efficiency by shape."""
    import re

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = make_step(_spec(size, impl), impl)
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True,
                       with_flops=True) as prof:
        began = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - began
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy, end = 0.0, float("-inf")
    for e in sorted(kernels, key=lambda e: e.time_range.start):  # union of kernel intervals, us
        start, stop = max(e.time_range.start, end), e.time_range.end
        if stop > start:
            busy += stop - start
        end = max(end, stop)
    kinds: dict[str, float] = {}
    names: dict[str, list] = {}
    for e in kernels:
        us = e.time_range.end - e.time_range.start
        kind = next((k for k, pat in KERNEL_KINDS if re.search(pat, e.name, re.I)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + us
        entry = names.setdefault(e.name, [kind, 0.0, 0])
        entry[1] += us
        entry[2] += 1
    gemms = []
    for e in prof.key_averages(group_by_input_shape=True):
        device_us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if e.key in GEMM_OPS and e.flops and device_us:
            gemms.append({"op": e.key, "shapes": str(e.input_shapes), "ms_per_step": device_us / 1e3 / steps,
                          "calls_per_step": e.count / steps, "tflops": e.flops / (device_us * 1e-6) / 1e12})
    gemms.sort(key=lambda g: -g["ms_per_step"])
    top = sorted(names.items(), key=lambda kv: -kv[1][1])[:20]
    return {"size": size, "impl": impl, "step_s": wall / steps, "gpu_busy_s": busy / 1e6 / steps,
            "kinds_ms": {k: v / 1e3 / steps for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": n[:110], "kind": k, "ms_per_step": us / 1e3 / steps, "calls_per_step": c / steps}
                            for n, (k, us, c) in top],
            "gemms": gemms[:16]}


def profile_report(p: dict) -> str:
    if "error" in p:
        return f"{p['size']} {p['impl']}: {p['error']}"
    step_ms, busy_ms = 1e3 * p["step_s"], 1e3 * p["gpu_busy_s"]
    lines = [f"== {p['size']} {p['impl']}: {step_ms:.1f} ms/step under the profiler, GPU busy {busy_ms:.1f} ms "
             f"({100 * busy_ms / step_ms:.1f}%)"]
    lines += [f"   {kind:12} {ms:8.1f} ms {100 * ms / busy_ms:5.1f}%" for kind, ms in p["kinds_ms"].items()]
    lines.append("   top kernels (ms/step, calls/step):")
    lines += [f"   {k['ms_per_step']:8.2f} {k['calls_per_step']:6.0f}  {k['kind']:11} {k['name']}"
              for k in p["top_kernels"]]
    lines.append("   GEMMs by shape (ms/step, calls/step, TFLOP/s):")
    lines += [f"   {g['ms_per_step']:8.2f} {g['calls_per_step']:6.0f} {g['tflops']:7.0f}  {g['op']} {g['shapes']}"
              for g in p["gemms"]]
    return "\n".join(lines)


def _child(size: str, impl: str, steps: int, warmup: int, profiled: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--one", size, impl, "--steps", str(steps), "--warmup", str(warmup)]
    cmd += ["--profile"] if profiled else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    lines = res.stderr.strip().splitlines() or ["no output"]
    error = "out of memory" if "out of memory" in res.stderr else lines[-1]
    return {"size": size, "impl": impl, "error": error, "stderr_tail": lines[-40:]}


def report(rows: list[dict]) -> str:
    lines = [f"{'size':10} {'impl':21} {'mb':>3} {'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'MFU-c':>6} "
             f"{'mem GiB':>8} {'vs torch-compile':>16}"]
    for size in dict.fromkeys(r["size"] for r in rows):
        ref = next((r for r in rows if r["size"] == size and r["impl"] == "torch-compile" and "error" not in r), None)
        for r in (r for r in rows if r["size"] == size):
            if "error" in r:
                lines.append(f"{size:10} {r['impl']:21} {'':>3} {r['error']}")
                continue
            ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
            lines.append(f"{size:10} {r['impl']:21} {r['micro_batch']:>3} {r['tokens_per_s']:>9.0f} "
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
    ap.add_argument("--profile", action="store_true",
                    help="instead of timing, profile --steps steps of each case and print where the GPU time goes")
    ap.add_argument("--one", nargs=2, metavar=("SIZE", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        if args.one[1] == "llmops-no-te":
            sys.meta_path.insert(0, _HideTransformerEngine())
        run = profile if args.profile else measure
        print(json.dumps(run(*args.one, args.steps, args.warmup)), flush=True)
        return
    rows = []
    for size in args.sizes:
        for impl in args.impls:
            rows.append(_child(size, impl, args.steps, args.warmup, args.profile))
            print(profile_report(rows[-1]) if args.profile else json.dumps(rows[-1]), flush=True)
    if not args.profile:
        print(report(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
