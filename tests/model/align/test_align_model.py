"""The alignment objectives on a real Megatron-Core GPT (one gloo process, CPU).

Checked against straightforward computations: a conversation packed after
another scores exactly as it does alone (and not without the block mask);
the DPO loss of a micro-batch equals the loss written out by hand from the
model's logits.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, math, os, torch, torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"], RANK="0", WORLD_SIZE="1")
    from llmops_model.compat import cpu as cpu_compat
    cpu_compat.activate()
    dist.init_process_group("gloo")
    from megatron.core import parallel_state
    parallel_state.initialize_model_parallel(1, 1)
    cpu_compat.seed_model_parallel_rng(0)
    from llmops.spec.align import DPOOptions
    from llmops.spec.load import parse_spec
    from llmops_model import gpt
    from llmops_model.align.examples import Ragged
    from llmops_model.align.objectives import DPO, SFT
    from llmops_model.align.sources import DPOSource, SFTSource

    S, V = 128, 1024
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(8, V, (n,), generator=g).tolist()
    batch = lambda items: {k: torch.stack([it[k] for it in items]) for k in items[0]}
    results = {}
    for attention in ("sdpa", "megatron"):
        spec = parse_spec({"name": "m", "resources": {"cpu": True}, "train": {"steps": 1, "global_batch_size": 1},
                           "model": {"preset": "tiny", "vocab_size": V, "seq_length": S, "attention": attention}})
        model = gpt.build_model(spec, device=torch.device("cpu")).eval()
        # Packing: A then B in one sequence, against B alone.
        a, b = ids(50), ids(40)
        ex = {"ids": Ragged.of([a, b], "int32"), "trained": Ragged.of([[1] * 50, [1] * 40], "int32")}
        packed = SFTSource(ex, seq_length=S, packing=True, pad_id=3, seed=0)
        alone = SFTSource({k: Ragged.of([r[1]], "int32") for k, r in ex.items()}, seq_length=S, packing=False,
                          pad_id=3, seed=0)
        assert packed.count == 1 and alone.count == 1
        first = packed.sequences[0][0]  # which of A and B comes first in the packed sequence
        offset = 0 if first == 1 else 49
        with torch.no_grad():
            nll_b = SFT(packed=False).forward_step(iter([batch([alone.item(0)])]), model)[0][0, :39]
            for masked in (True, False):
                out = SFT(packed=masked).forward_step(iter([batch([packed.item(0)])]), model)[0]
                results[f"{attention}:masked={masked}"] = (out[0, offset:offset + 39] - nll_b).abs().max().item()
        # DPO: the objective's loss against one written out from the logits.
        pairs = [(ids(30), ids(12), ids(20)), (ids(45), ids(25), ids(9)), (ids(10), ids(3), ids(40))]
        ex = {k: Ragged.of([p[i] for p in pairs], "int32") for i, k in enumerate(("prompt", "chosen", "rejected"))}
        source = DPOSource(ex, seq_length=S, pad_id=3, eod_id=2, seed=0)
        source.reference = (-100 * torch.rand(3, 2, generator=g, dtype=torch.float64)).numpy()
        b = batch([source.item(i) for i in range(3)])
        obj = DPO(DPOOptions(beta=0.2, label_smoothing=0.1))
        with torch.no_grad():
            out, loss_fn = obj.forward_step(iter([b]), model)
            total, count, metrics = loss_fn(out)
            logits = model(b["tokens"].flatten(0, 1), b["position_ids"].flatten(0, 1), None)
        logp = torch.log_softmax(logits.double(), dim=-1)
        direct, rewards = [], []
        for i, (prompt, chosen, rejected) in enumerate(pairs):
            seq_logps = []
            for row, response in enumerate((chosen, rejected)):
                seq = prompt + response + [2]
                seq_logps.append(sum(logp[2 * i + row, t - 1, seq[t]].item()
                                     for t in range(len(prompt), len(prompt) + len(response))))
            (pw, pl), (rw, rl) = seq_logps, source.reference[i].tolist()
            h = 0.2 * ((pw - rw) - (pl - rl))
            direct.append(-0.9 * math.log(1 / (1 + math.exp(-h))) - 0.1 * math.log(1 / (1 + math.exp(h))))
            rewards.append((0.2 * (pw - rw), 0.2 * (pl - rl)))
        results[f"{attention}:dpo"] = {
            "loss": total.item() / count.item(), "direct": sum(direct) / 3,
            "chosen": metrics["chosen_reward"].item() / 3, "direct_chosen": sum(r[0] for r in rewards) / 3,
            "accuracy": metrics["accuracy"].item() / 3, "direct_accuracy": sum(c > r for c, r in rewards) / 3}
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def results() -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                         env={"PORT": str(port), "CUDA_VISIBLE_DEVICES": "", "PATH": "", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("attention", ["sdpa", "megatron"])
def test_packed_conversation_scores_as_if_alone(results, attention):
    assert results[f"{attention}:masked=True"] < 1e-5
    assert results[f"{attention}:masked=False"] > 1e-3  # without the block mask B would see A


@pytest.mark.parametrize("attention", ["sdpa", "megatron"])
def test_dpo_loss_equals_the_loss_written_out_from_logits(results, attention):
    r = results[f"{attention}:dpo"]
    assert r["loss"] == pytest.approx(r["direct"], rel=1e-5)
    assert r["chosen"] == pytest.approx(r["direct_chosen"], rel=1e-5, abs=1e-6)
    assert r["accuracy"] == pytest.approx(r["direct_accuracy"])
