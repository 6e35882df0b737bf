"""The sdpa spec's linears and MLP against Megatron-Core's own, forward and backward.

CPU (fp32, gloo): the linears and the word embedding compute what Megatron's
do, with weight gradients returned or accumulated into ``main_grad`` buffers; a
transformer layer built from the spec compiles as one graph whose backward
fills the buffers as the eager layer's does, and, with its residuals added in
the output projections and its QKV projection split in its own function,
computes what Megatron's layer does (with grouped-query attention too). GPU (bf16): the
cuBLASLt GEMMs match float64; the QKV split's one-pass backward matches
torch's concatenation and sum; the MLP whose GELU runs in their epilogues
matches Megatron's MLP with its fused bias-GELU, with and without fp32
``main_grad`` buffers; and the GPU layer compiles as one graph with both
residual GEMMs in it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

SETUP = textwrap.dedent("""
    import os, torch, torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from llmops_model.compat import cpu as cpu_compat
    cuda = torch.cuda.is_available()
    if not cuda:
        cpu_compat.activate()
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(0)
    from megatron.core import parallel_state, tensor_parallel
    parallel_state.initialize_model_parallel(1, 1)
    cpu_compat.seed_model_parallel_rng(0)
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.spec_utils import build_module
    from llmops_model.fast import layers
""")

CPU_SCRIPT = SETUP + textwrap.dedent("""
    cfg = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256,
                            use_cpu_initialization=True, hidden_dropout=0.0, attention_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    init = lambda w: torch.nn.init.normal_(w, 0.0, 0.02)
    for ours, theirs, kwargs in (
        (layers.ColumnParallelLinear, tensor_parallel.ColumnParallelLinear,
         dict(bias=True, gather_output=False, skip_bias_add=False)),
        (layers.RowParallelLinear, tensor_parallel.RowParallelLinear,
         dict(bias=True, input_is_parallel=True, skip_bias_add=True)),
    ):
        a = theirs(64, 96, config=cfg, init_method=init, **kwargs)
        b = ours(64, 96, config=cfg, init_method=init, **kwargs)
        b.load_state_dict(a.state_dict())
        with torch.no_grad():
            for p in (a.bias, b.bias):
                p.copy_(torch.arange(96, dtype=torch.float32) / 96)
        x = torch.randn(8, 3, 64, generator=g)
        outs, grads = [], []
        for module in (a, b):
            xi = x.clone().requires_grad_()
            out, bias = module(xi)
            full = out + bias if bias is not None else out
            full.square().sum().backward()
            outs.append(full.detach())
            grads.append([xi.grad, module.weight.grad, module.bias.grad])
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
        for ga, gb in zip(*grads):
            torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-5)

    # A transformer layer of the sdpa spec compiles as one graph (Megatron's local spec breaks at each
    # row-parallel linear).
    from llmops.spec.load import parse_spec
    from llmops_model import gpt
    spec = parse_spec({"name": "x", "resources": {"cpu": True}, "model": {"preset": "tiny"},
                       "train": {"steps": 1, "global_batch_size": 2, "micro_batch_size": 2}})
    layer = build_module(gpt.layer_spec(spec), config=gpt.transformer_config(spec), layer_number=1)
    cpu_compat._active_mode.__exit__(None, None, None)  # dynamo traces without the CPU device mode
    explained = torch._dynamo.explain(layer)(torch.randn(64, 2, 64), attention_mask=None)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]

    # With the weight gradients accumulated into main_grad buffers (as on GPUs): the linears add exactly
    # Megatron's weight gradient into the buffer on every backward, hand DDP a placeholder, and a compiled
    # layer is still one graph whose backward fills the buffers as the eager layer's does. The buffers are
    # views of one flat tensor, as DDP's are, and two micro-batches are in flight at once, as in a pipeline
    # schedule: each backward pass then runs after the other's writes into the shared buffer.
    def with_buffers(module):
        for m in module.modules():
            if hasattr(m, "gradient_accumulation_fusion"):
                m.gradient_accumulation_fusion = True
        params = list(module.parameters())
        flat, offset = torch.zeros(sum(p.numel() for p in params)), 0
        for p in params:
            p.main_grad = flat[offset:offset + p.numel()].view_as(p)
            p.grad_added_to_main_grad = False  # DDP's mark, cleared when it zeroes the buffers
            offset += p.numel()
        return module

    for ours, kwargs in ((layers.ColumnParallelLinear, dict(bias=True, gather_output=False, skip_bias_add=False)),
                         (layers.RowParallelLinear, dict(bias=True, input_is_parallel=True, skip_bias_add=True))):
        ref = (tensor_parallel.ColumnParallelLinear if ours is layers.ColumnParallelLinear
               else tensor_parallel.RowParallelLinear)(64, 96, config=cfg, init_method=init, **kwargs)
        mine = with_buffers(ours(64, 96, config=cfg, init_method=init, **kwargs))
        mine.load_state_dict(ref.state_dict())
        xs = torch.randn(2, 8, 3, 64, generator=g)
        for module in (ref, mine):  # accumulates: the buffer holds the sum of both backward passes
            losses = [(out + bias if bias is not None else out).square().sum() for out, bias in map(module, xs)]
            for loss in losses:
                loss.backward()
        assert mine.weight.grad_added_to_main_grad and mine.weight.grad is not None  # DDP's placeholder
        torch.testing.assert_close(mine.weight.main_grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mine.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)

    # The word embedding adds its rows' gradients into main_grad (repeated ids summed), over two micro-batches,
    # as torch's embedding backward computes them; without a buffer it is Megatron's embedding.
    ref = tensor_parallel.VocabParallelEmbedding(50, 16, init_method=init, config=cfg)
    mine = tensor_parallel.VocabParallelEmbedding(50, 16, init_method=init, config=cfg)
    mine.load_state_dict(ref.state_dict())
    layers.use_fused_embedding_grad(mine)
    with_buffers(mine)
    ids = torch.randint(0, 50, (2, 3, 40), generator=g)  # more tokens than rows: ids repeat
    upstream = torch.randn(2, 3, 40, 16, generator=g)
    for module in (ref, mine):
        for i, u in zip(ids, upstream):
            (module(i) * u).sum().backward()
    assert mine.weight.grad_added_to_main_grad and mine.weight.grad is not None  # DDP's placeholder
    assert mine.weight.main_grad.abs().sum() > 0
    torch.testing.assert_close(mine.weight.main_grad, ref.weight.grad, rtol=1e-5, atol=1e-6)
    plain = tensor_parallel.VocabParallelEmbedding(50, 16, init_method=init, config=cfg)
    layers.use_fused_embedding_grad(plain)  # no main_grad: torch's own backward into .grad
    (plain(ids[0]) * upstream[0]).sum().backward()
    assert plain.weight.grad is not None and plain.weight.grad.abs().sum() > 0

    torch.manual_seed(0)
    eager = with_buffers(build_module(gpt.layer_spec(spec), config=gpt.transformer_config(spec), layer_number=1))
    traced = with_buffers(build_module(gpt.layer_spec(spec), config=gpt.transformer_config(spec), layer_number=1))
    traced.load_state_dict(eager.state_dict())
    explained = torch._dynamo.explain(traced)(torch.randn(64, 2, 64), attention_mask=None)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    compiled = torch.compile(traced, backend="aot_eager")  # AOTAutograd: the buffers mutated in the backward
    xs = torch.randn(2, 64, 2, 64, generator=g)
    for module in (eager, compiled):
        losses = [module(x.clone().requires_grad_(), attention_mask=None)[0].square().sum() for x in xs]
        for loss in losses:
            loss.backward()
    for (name, a), b in zip(eager.named_parameters(), traced.parameters()):
        if hasattr(a, "main_grad") and a.grad_added_to_main_grad:
            assert b.grad_added_to_main_grad, name
            assert a.main_grad.abs().sum() > 0, name
            torch.testing.assert_close(b.main_grad, a.main_grad, rtol=1e-4, atol=1e-5, msg=name)
        else:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)

    # The layer adds its residuals inside the output projections (linear_residual in its graph) and computes
    # what Megatron's own layer of the local spec computes, forward and backward; with dropout in training,
    # the bias-dropout-add is Megatron's (same dropout masks from the same seed), and in evaluation the sum
    # moves into the GEMMs again.
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from llmops_model.attention import SDPAttention
    megatron_spec = get_gpt_layer_local_spec(normalization=spec.model.normalization)
    megatron_spec.submodules.self_attention.submodules.core_attention = SDPAttention
    for dropout, groups in ((0.0, None), (0.25, None), (0.0, 2)):  # groups: grouped-query attention
        cfg = gpt.transformer_config(spec)
        cfg.hidden_dropout = dropout
        if groups:
            cfg.num_query_groups = groups
        ours = build_module(gpt.layer_spec(spec), config=cfg, layer_number=1)
        theirs = build_module(megatron_spec, config=cfg, layer_number=1)
        assert isinstance(ours, layers.TransformerLayer) and ours._residual_in_gemm
        assert isinstance(ours.self_attention, layers.SelfAttention)
        theirs.load_state_dict(ours.state_dict())
        with torch.no_grad():
            for m in (ours, theirs):
                for name, p in m.named_parameters():
                    if name.endswith("bias"):
                        p.copy_(torch.linspace(-0.5, 0.5, p.numel()))
        x = torch.randn(64, 2, 64, generator=g)
        for training in (True, False):
            results = []
            for m in (theirs, ours):
                m.train(training)
                m.zero_grad()
                torch.manual_seed(1)
                xi = x.clone().requires_grad_()
                out, _ = m(xi, attention_mask=None)
                (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
                results.append([out.detach(), xi.grad] + [p.grad for _, p in m.named_parameters()])
            for i, (a, b) in enumerate(zip(*results)):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=f"dropout {dropout}, tensor {i}")
            handed_over = ours._hands_over_residual()
            assert handed_over == (dropout == 0.0 or not training), (dropout, training)
            if training:
                graph = torch._dynamo.explain(ours)(torch.randn(64, 2, 64), attention_mask=None)
                assert graph.graph_break_count == 0, [b.reason for b in graph.break_reasons]
                code = "".join(m.code for gm in graph.graphs for m in gm.modules() if hasattr(m, "code"))
                assert ("linear_residual" in code) == handed_over, (dropout, training)
                assert "qkv_split_grad" in code  # the QKV projection's own split and backward
    print("ok")
""")

GPU_SCRIPT = SETUP + textwrap.dedent("""
    import torch.nn.functional as F
    from megatron.core.tensor_parallel import layers as megatron_layers
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from llmops_model.fast import cublaslt, fallbacks
    assert cublaslt.available()
    fallbacks.install(torch.device("cuda"))

    # The epilogue GEMMs against float64 references.
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1024, 512, device="cuda", generator=g).bfloat16()
    w = (torch.randn(2048, 512, device="cuda", generator=g) * 0.05).bfloat16()
    b = torch.randn(2048, device="cuda", generator=g).bfloat16()
    act, pre = cublaslt.linear_gelu(x, w, b)
    ref_pre = x.double() @ w.double().t() + b.double()
    tanh_gelu = lambda z: 0.5 * z * (1 + torch.tanh(0.7978845608028654 * (z + 0.044715 * z ** 3)))
    rel = lambda a, r: ((a.double() - r).norm() / r.norm()).item()
    assert rel(pre, ref_pre) < 1e-2, rel(pre, ref_pre)
    assert rel(act, tanh_gelu(ref_pre)) < 1e-2, rel(act, tanh_gelu(ref_pre))
    dy = torch.randn(1024, 256, device="cuda", generator=g).bfloat16()
    w2 = (torch.randn(256, 2048, device="cuda", generator=g) * 0.05).bfloat16()
    grad_pre = cublaslt.matmul_dgelu(dy, w2, pre)
    z = pre.double().requires_grad_()
    tanh_gelu(z).backward(dy.double() @ w2.double())
    assert rel(grad_pre, z.grad) < 1e-2, rel(grad_pre, z.grad)

    # The residual GEMM, with and without a bias, against float64; the residual is read, not overwritten.
    for with_bias in (True, False):
        r = torch.randn(64, 16, 256, device="cuda", generator=g).bfloat16()
        kept = r.clone()
        bias = dy[0] if with_bias else None
        out = cublaslt.linear_residual(x, w2[:, :512].contiguous(), bias, r)
        ref = r.double() + (x.double() @ w2[:, :512].double().t()).view(64, 16, 256)
        if with_bias:
            ref = ref + bias.double()
        assert out.shape == r.shape and torch.equal(r, kept)
        assert rel(out, ref) < 1e-2, (with_bias, rel(out, ref))

    # The QKV split's backward (Triton) against torch's concatenation and sum: cuDNN's [b, heads, s, hn]
    # gradient layout and contiguous ones, grouped queries, a head size that is not a power of two, and a
    # token count that is not a multiple of the kernel's block.
    from llmops_model.fast import qkv
    for s_, b_, groups, per, hn, layout in ((256, 8, 16, 1, 128, "bhsd"), (100, 3, 4, 2, 80, "contiguous")):
        def grad(heads):
            if layout == "bhsd":
                t = torch.randn(b_, groups, s_, heads * hn, device="cuda", generator=g)
                return t.bfloat16().permute(2, 0, 1, 3)
            return torch.randn(s_, b_, groups, heads * hn, device="cuda", generator=g).bfloat16()
        dq, dk, dv = grad(per), grad(1), grad(1)
        joined, bias_grad = qkv.split_grad(dq, dk, dv)
        assert torch.equal(joined, torch.cat([dq, dk, dv], 3)), layout
        exact = torch.cat([dq, dk, dv], 3).double().sum((0, 1)).reshape(-1)
        assert bias_grad.dtype == dq.dtype and rel(bias_grad, exact) < 1e-2, rel(bias_grad, exact)

    # The MLP module against Megatron's, in bf16, with and without wgrad accumulation into main_grad.
    for fusion in (False, True):
        cfg = TransformerConfig(num_layers=2, hidden_size=512, num_attention_heads=8, ffn_hidden_size=2048,
                                bf16=True, params_dtype=torch.bfloat16, bias_activation_fusion=True,
                                activation_func=F.gelu, gradient_accumulation_fusion=fusion,
                                hidden_dropout=0.0, attention_dropout=0.0)
        theirs = MLP(cfg, MLPSubmodules(linear_fc1=tensor_parallel.ColumnParallelLinear,
                                        linear_fc2=tensor_parallel.RowParallelLinear)).cuda()
        ours = layers.GeluMLP(cfg, MLPSubmodules(linear_fc1=layers.ColumnParallelLinear,
                                                 linear_fc2=layers.RowParallelLinear)).cuda()
        ours.load_state_dict(theirs.state_dict())
        with torch.no_grad():
            for m in (theirs, ours):
                m.linear_fc1.bias.copy_(torch.linspace(-1, 1, 2048))
        x = torch.randn(256, 4, 512, device="cuda", generator=g).bfloat16()
        dy = torch.randn(256, 4, 512, device="cuda", generator=g).bfloat16()
        results = []
        for m in (theirs, ours):
            for p in m.parameters():
                p.grad = None
                if fusion:
                    p.main_grad = torch.zeros(p.shape, dtype=torch.float32, device="cuda")
                    p.grad_added_to_main_grad = False
            xi = x.clone().requires_grad_()
            out, bias = m(xi)
            assert bias is m.linear_fc2.bias
            out.backward(dy)
            grads = {n: (p.main_grad + (p.grad.float() if p.grad is not None and not p.grad_added_to_main_grad else 0))
                     if fusion else p.grad for n, p in m.named_parameters() if n != "linear_fc2.bias"}
            results.append((out, xi.grad, grads))
        (out_a, gx_a, gp_a), (out_b, gx_b, gp_b) = results
        assert rel(out_b, out_a.double()) < 1e-2, rel(out_b, out_a.double())
        assert rel(gx_b, gx_a.double()) < 1e-2, rel(gx_b, gx_a.double())
        for name in gp_a:
            assert rel(gp_b[name], gp_a[name].double()) < 2e-2, (name, fusion, rel(gp_b[name], gp_a[name].double()))

    # The GPU layer (epilogue MLP, weight gradients into main_grad) compiles as one graph.
    from llmops.spec.load import parse_spec
    from llmops_model import gpt
    spec = parse_spec({"name": "x", "resources": {"gpus_per_node": 1}, "model": {"preset": "tiny"},
                       "train": {"steps": 1, "global_batch_size": 2, "micro_batch_size": 2}})
    cfg = gpt.transformer_config(spec)
    cfg.gradient_accumulation_fusion = fallbacks.wgrad_accumulation_available(torch.device("cuda"))
    assert cfg.gradient_accumulation_fusion
    layer = build_module(gpt.layer_spec(spec), config=cfg, layer_number=1).to("cuda", torch.bfloat16)
    assert isinstance(layer.mlp, layers.GeluMLP)
    for p in layer.parameters():
        p.main_grad = torch.zeros(p.shape, dtype=torch.float32, device="cuda")
        p.grad_added_to_main_grad = False
    explained = torch._dynamo.explain(layer)(torch.randn(64, 2, 64, device="cuda", dtype=torch.bfloat16),
                                             attention_mask=None)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    code = "".join(m.code for gm in explained.graphs for m in gm.modules() if hasattr(m, "code"))
    assert code.count("llmops.linear_residual") == 2, code  # the attention projection's and the MLP's
    assert "QKVLinear" in code or "qkv_split_grad" in code, code
    print("ok")
""")


def _run(script: str, env: dict) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env, "MASTER_PORT": str(port)})
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.strip().endswith("ok")


def test_linears_match_megatron_and_layer_compiles_whole():
    _run(CPU_SCRIPT, {"CUDA_VISIBLE_DEVICES": ""})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_epilogue_mlp_matches_megatron_mlp():
    _run(GPU_SCRIPT, {})
