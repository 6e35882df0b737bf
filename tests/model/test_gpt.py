"""The GPT a spec builds is one model: whatever the tensor/pipeline layout, and whether or not Transformer Engine
imports.

:func:`llmops_model.gpt.reinitialize` draws every weight of the global model and keeps this rank's slice, so
the weights do not depend on the layout; the test gathers them from TP2 and PP2 builds into global tensors and
compares them with a one-process build, for the Llama-style layers (SwiGLU, whose first MLP weight Megatron
checkpoints as two tensors, RMSNorm, RoPE, grouped-query attention).

Megatron ends a block built from a layer spec in whichever norm imports (TE's ``TENorm`` where TE is
installed); :func:`llmops_model.gpt.decoder_spec` ends it in the layers' own norm. TE cannot import on a
machine without a GPU, so the test puts a stand-in where Megatron keeps that choice
(``transformer_block.LayerNormImpl``) and checks Megatron's default block takes it (the stand-in bites)
while the project's block does not; two pipeline stages over gloo, so each stage builds its own share of
the layers, for LayerNorm and RMSNorm layers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from llmops.spec.load import parse_spec

    norm = sys.argv[1]
    spec = parse_spec({"name": "x", "resources": {"cpu": True, "processes_per_node": 2},
                       "parallelism": {"tensor": 1, "pipeline": 2},
                       "model": {"preset": "tiny", "normalization": norm}, "data": {"synthetic": {}},
                       "train": {"steps": 2, "global_batch_size": 8, "micro_batch_size": 1}})
    from llmops_model import gpt, parallel
    layout, device = parallel.setup(spec)
    from megatron.core import parallel_state
    from megatron.core.transformer import transformer_block

    def block(layer_or_block_spec):
        last = parallel_state.is_pipeline_last_stage()
        return transformer_block.TransformerBlock(config, layer_or_block_spec, post_layer_norm=last,
                                                  pre_process=parallel_state.is_pipeline_first_stage(),
                                                  post_process=last)

    def keys(module):
        return sorted(module.sharded_state_dict(prefix="decoder.").keys())

    config = gpt.transformer_config(spec)
    last = parallel_state.is_pipeline_last_stage()
    # Where nothing is patched, the project's block holds what Megatron's default block holds: same checkpoints.
    ours, megatrons = block(gpt.decoder_spec(spec, config)), block(gpt.layer_spec(spec))
    assert keys(ours) == keys(megatrons), (keys(ours), keys(megatrons))
    assert len(ours.layers) == 2, len(ours.layers)  # this stage's half of the tiny preset's 4 layers

    class ImportedNorm(torch.nn.LayerNorm):  # what TENorm is to Megatron where TE imports
        def __init__(self, config, hidden_size, eps=1e-5):
            super().__init__(hidden_size, eps=eps)

    transformer_block.LayerNormImpl = ImportedNorm
    megatrons, ours = block(gpt.layer_spec(spec)), block(gpt.decoder_spec(spec, config))
    if last:
        assert isinstance(megatrons.final_layernorm, ImportedNorm), type(megatrons.final_layernorm)
        assert not isinstance(ours.final_layernorm, ImportedNorm), type(ours.final_layernorm)
        assert type(ours.final_layernorm) is type(ours.layers[0].input_layernorm), type(ours.final_layernorm)
        expected = torch.nn.RMSNorm if norm == "RMSNorm" else torch.nn.LayerNorm
        assert isinstance(ours.final_layernorm, expected), type(ours.final_layernorm)
        x = torch.randn(5, 2, config.hidden_size)
        torch.testing.assert_close(ours.final_layernorm(x), ours.layers[0].input_layernorm(x))
    else:
        assert ours.final_layernorm is None and megatrons.final_layernorm is None
    open(os.path.join(os.environ["OUT"], f"ok-{layout.rank}"), "w").close()
    dist.barrier()
    parallel.teardown()
""")


WEIGHTS = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from llmops.spec.load import parse_spec

    tp, pp = int(sys.argv[1]), int(sys.argv[2])
    spec = parse_spec({"name": "x", "resources": {"cpu": True, "processes_per_node": tp * pp},
                       "parallelism": {"tensor": tp, "pipeline": pp},
                       "model": {"preset": "tiny", "activation": "swiglu", "normalization": "RMSNorm",
                                 "position_embedding": "rope", "num_query_groups": 2, "tie_embeddings": False},
                       "data": {"synthetic": {}},
                       "train": {"steps": 2, "global_batch_size": 8, "micro_batch_size": 1}})
    from llmops_model import gpt, parallel
    layout, device = parallel.setup(spec)
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    model = gpt.build_model(spec, device=device)
    sd = model.sharded_state_dict(prefix="")
    apply_factories(sd)  # SwiGLU's fc1: its two halves, each a tensor of its own in the global model
    pieces = [(sh.key, sh.global_shape, [i if isinstance(i, int) else [i.start, i.stop] for i in sh.global_slice()],
               sh.data.clone()) for sh in gpt._sharded_tensors(sd, ShardedTensor) if sh.key.endswith(".weight")]
    torch.save(pieces, os.path.join(os.environ["OUT"], f"weights-{layout.rank}.pt"))
    dist.barrier()
    parallel.teardown()
""")


def _global_weights(tmp_path, tp: int, pp: int) -> dict:
    out = tmp_path / f"tp{tp}pp{pp}"
    out.mkdir()
    script = out / "weights.py"
    script.write_text(WEIGHTS)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={tp * pp}", f"--master-port={_port()}",
           str(script), str(tp), str(pp)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": "", "OMP_NUM_THREADS": "1", "OUT": str(out)})
    assert res.returncode == 0, res.stderr[-5000:]
    full = {}
    for path in sorted(out.glob("weights-*.pt")):
        for key, shape, where, data in torch.load(path):
            where = tuple(w if isinstance(w, int) else slice(*w) for w in where)
            full.setdefault(key, torch.full(shape, float("nan")))[where] = data
    return full


def test_weights_are_the_same_for_every_layout(tmp_path):
    ref = _global_weights(tmp_path, 1, 1)
    assert any(k.endswith("linear_fc1.weight") for k in ref), sorted(ref)
    for tp, pp in ((2, 1), (1, 2)):
        other = _global_weights(tmp_path, tp, pp)
        assert sorted(other) == sorted(ref), (tp, pp)
        for key, weight in ref.items():
            assert not other[key].isnan().any(), f"tp{tp}pp{pp} {key}: not every slice was built"
            assert torch.equal(other[key], weight), f"tp{tp}pp{pp} {key} differs from the one-process model's"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("norm", ["LayerNorm", "RMSNorm"])
def test_decoder_ends_in_the_layers_own_norm_whatever_imports(norm, tmp_path):
    script = tmp_path / "decoder_spec.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_port()}",
           str(script), norm]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": "", "OMP_NUM_THREADS": "1", "OUT": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-5000:]
    assert sorted(p.name for p in tmp_path.glob("ok-*")) == ["ok-0", "ok-1"]  # both stages checked
