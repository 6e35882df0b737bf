"""`llmops export` and `llmops generate` against the real transformers library, unmodified.

One module fixture trains two real runs through the CLI, side by side: a GPT-style model pre-trained and then
fine-tuned (SFT) at TP2xPP2, and a Llama-style one (RMSNorm, RoPE, SwiGLU, grouped-query attention, tied
embeddings) at TP1xPP2. Their checkpoints are exported, loaded by transformers' Auto classes, and checked
against llmops's own forward pass and chat tokenizer, computed in a fresh process from the same checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from llmops_testing import llmops, start, tiny_spec, wait_state, write_spec

transformers = pytest.importorskip("transformers", reason="the hf extra: pip install 'llmops[hf]'")

LLAMA = {"normalization": "RMSNorm", "position_embedding": "rope", "activation": "swiglu", "num_query_groups": 2,
         "tie_embeddings": True}
PROMPTS = ["def add(a, b):", "Return the absolute value of a number.", "  two  spaces\tand a tab\n", "x"]
CHATS = [
    [{"role": "user", "content": "What does os.path.join do?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a sorting algorithm."},
     {"role": "assistant", "content": "Merge sort."}, {"role": "user", "content": "Another one?"}],
]


def _spec(name: str, assets, *, tp: int, pp: int, **model) -> dict:
    spec = tiny_spec(name, tp=tp, pp=pp, steps=2, train={"warmup_steps": 0}, samples={"enabled": True},
                     model={"preset": "tiny", "vocab_size": assets.vocab, "seq_length": assets.seq, **model})
    spec["align"] = {"method": "sft", "tokenizer": str(assets.tokenizer), "data": {"path": str(assets.sft)},
                     "steps": 2, "global_batch_size": 8, "micro_batch_size": 2, "lr": 1e-3,
                     "bad_data": {"max_fraction": 0.2}}
    return spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory, assets) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("hf-runs")
    root = work / "runs"
    specs = {"gpt": _spec("gpt-tp2pp2", assets, tp=2, pp=2), "llama": _spec("llama-tp1pp2", assets, tp=1, pp=2,
                                                                            **LLAMA)}
    dirs = {key: start(write_spec(work / f"{key}.yaml", spec), root) for key, spec in specs.items()}
    for run in dirs.values():
        wait_state(run, {"SUCCEEDED"}, timeout=400)
    return dirs


def _export(run: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return llmops("export", str(run), "--out", str(out), *args, "--runs-dir", str(run.parent))


def _llmops_logits(checkpoint: Path, run: Path, tokens: torch.Tensor, folder: Path) -> torch.Tensor:
    """llmops's own forward (Megatron-Core, one process) over `tokens`, from `checkpoint`, in a fresh interpreter."""
    torch.save(tokens, folder / "tokens.pt")
    code = textwrap.dedent(f"""
        import torch
        from pathlib import Path
        from llmops.runs.rundir import RunDir
        from llmops_model.compat import mcore
        mcore.quiet_known_warnings()
        from llmops_model.hf import weights
        from llmops_model.train import checkpoint
        spec = RunDir(Path({str(run)!r})).read_spec()
        tokens = torch.load({str(folder / "tokens.pt")!r})
        with weights.process_group_of_one(spec):
            model = weights.build(spec)
            sharded = {{"model": model.sharded_state_dict(prefix="")}}
            state = checkpoint.load(Path({str(checkpoint)!r}), sharded_state=sharded)
            model.load_state_dict(state["model"])
            model.eval()
            with torch.no_grad():
                logits = model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)
        torch.save(logits, {str(folder / "logits.pt")!r})
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return torch.load(folder / "logits.pt")


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_transformers_loads_the_export_and_computes_what_llmops_computes(trained, family, tmp_path, assets):
    run = trained[family]
    out = tmp_path / "hf"
    res = _export(run, out)
    assert res.returncode == 0, res.stderr
    assert "exported" in res.stderr and "sft step 2" in res.stderr
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "tokenizer.model", "llmops-export.json"} <= {p.name for p in out.iterdir()}
    assert not list(tmp_path.glob(".hf.partial-*"))
    record = json.loads((out / "llmops-export.json").read_text())
    assert record["layout"] == ("tp2-pp2-dp1" if family == "gpt" else "tp1-pp2-dp1") and record["step"] == 2

    model = transformers.AutoModelForCausalLM.from_pretrained(out)  # no trust_remote_code: stock classes only
    assert type(model).__name__ == ("GPT2LMHeadModel" if family == "gpt" else "LlamaForCausalLM")
    tokens = torch.randint(0, assets.vocab, (3, assets.seq), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = model(tokens).logits
    ours = _llmops_logits(Path(record["checkpoint"]), run, tokens, tmp_path)
    diff = (ours - theirs).abs().max().item()
    print(f"{family}: max |logit difference| {diff:.2e}")
    assert ours.shape == theirs.shape and diff < 1e-4

    from llmops.spec.align import ChatTokens
    from llmops_model.align.chat import ChatTokenizer
    from llmops_model.align.records import Message

    tok = transformers.AutoTokenizer.from_pretrained(out)
    chat = ChatTokenizer.load(str(assets.tokenizer), ChatTokens())
    for text in PROMPTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == chat.encode(text), text
    for messages in CHATS:
        turns = [Message(m["role"], m["content"]) for m in messages]
        assert tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False) == chat.prompt(turns)
        assert tok.apply_chat_template(messages, return_dict=False) == chat.render(turns)[0]


def test_llmops_generate_gives_transformers_greedy_tokens(trained, tmp_path):
    run = trained["gpt"]
    res = _export(run, tmp_path / "hf", "--stage", "pretrain")
    assert res.returncode == 0, res.stderr
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for prompt in ("def add(a, b):", "Return the"):
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        greedy = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        row = greedy[0, ids.shape[1]:].tolist()
        stops = {model.generation_config.eos_token_id}
        kept = row[:next((i for i, t in enumerate(row) if t in stops), len(row))]
        expected = tok.decode(ids[0].tolist() + kept, skip_special_tokens=True)  # the text the tokens read as

        results = [llmops("generate", str(tmp_path / "hf"), "--prompt", prompt, "--max-new-tokens", "12")]
        if prompt.startswith("def"):
            results.append(llmops("generate", run.name, "--stage", "pretrain", "--prompt", prompt,
                                  "--max-new-tokens", "12", "--runs-dir", str(run.parent)))
        for res in results:
            assert res.returncode == 0, res.stderr
            assert res.stdout == expected + "\n"
            assert "tokens in" in res.stderr


def test_a_batch_of_prompts_and_a_chat(trained, tmp_path):
    run = trained["llama"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [{"prompt": "def add(a, b):"}, {"messages": CHATS[0]},
                                                          {"prompt": "x", "id": 7}]) + "\n")
    res = llmops("generate", run.name, "--prompts", str(prompts), "--out", str(tmp_path / "out.jsonl"),
                 "--max-new-tokens", "8", "--temperature", "0.8", "--top-p", "0.9", "--seed", "3",
                 "--runs-dir", str(run.parent))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r.get("id") for r in rows] == [None, None, 7] and all(0 < r["tokens"] <= 8 for r in rows)
    assert {r["finish_reason"] for r in rows} <= {"stop", "length"}

    chat = subprocess.run([sys.executable, "-m", "llmops", "generate", run.name, "--chat", "--max-new-tokens", "6",
                           "--runs-dir", str(run.parent)], input="Hello?\nAnd then?\n\n", capture_output=True,
                          text=True, timeout=300)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("model> ") == 2 and chat.stderr.count("tokens in") == 2


def test_bad_input_is_exit_2_with_the_fix_and_leaves_nothing(trained, tmp_path):
    run = trained["gpt"]
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    res = llmops("generate", str(not_a_model), "--prompt", "x")
    assert res.returncode == 2 and "is not a run, a checkpoint or a Hugging Face model folder" in res.stderr

    res = _export(run, tmp_path / "out", "--stage", "pretrain", "--step", "999")
    assert res.returncode == 2 and "no checkpoint at that step" in res.stderr and "(2)" in res.stderr
    assert not (tmp_path / "out").exists()

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("a user's file")
    res = _export(run, taken)
    assert res.returncode == 2 and "not an empty folder" in res.stderr
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]

    # A model with no transformers counterpart (LayerNorm with RoPE): refused before anything is loaded.
    odd = tmp_path / "runs" / run.name
    shutil.copytree(run, odd, ignore=shutil.ignore_patterns("checkpoints*"))
    spec = yaml.safe_load((odd / "spec.yaml").read_text())
    spec["model"]["position_embedding"] = "rope"
    (odd / "spec.yaml").write_text(yaml.safe_dump(spec))
    shutil.copytree(run / "checkpoints-sft", odd / "checkpoints-sft")
    res = llmops("export", run.name, "--out", str(tmp_path / "odd"), "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 2, res.stderr
    assert "model.position_embedding = rope" in res.stderr and "Fix:" in res.stderr
    assert not (tmp_path / "odd").exists() and not list(tmp_path.glob(".odd.partial-*"))

    res = _export(run, tmp_path / "x", "--dtype", "fp16")
    assert res.returncode == 2 and "bf16 or fp32" in res.stderr


def test_a_tokenizer_that_does_not_fit_the_vocabulary_and_a_failed_export_leave_nothing(trained, tmp_path, assets):
    from llmops.errors import UserError
    from llmops.runs.models import resolve
    from llmops_model.hf import export, tokenizer

    with pytest.raises(UserError, match="more than the model's vocabulary"):
        tokenizer.build(assets.tokenizer, vocab_size=512, template=None, max_length=128)

    run = trained["gpt"]
    ck = resolve(run.name, runs_root=run.parent)
    from llmops.spec.align import ChatTokens

    broken = type(ck)(**{**ck.__dict__, "template": ChatTokens(end="<|stop|>")})  # a marker the tokenizer lacks
    with pytest.raises(UserError, match="not control tokens"):
        export.export(broken, tmp_path / "out", info=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_each_training_stage_ends_with_samples_in_the_report(trained):
    from llmops.spec.run import DEFAULT_SAMPLE_PROMPTS

    run = trained["gpt"]
    read = {stage: [json.loads(line) for line in (run / "stages" / stage / "samples.jsonl").read_text().splitlines()]
            for stage in ("pretrain", "sft")}
    assert [r["prompt"] for r in read["pretrain"]] == list(DEFAULT_SAMPLE_PROMPTS)
    assert not any(r["chat"] for r in read["pretrain"]) and all(r["chat"] for r in read["sft"])
    assert {r["step"] for rows in read.values() for r in rows} == {2}
    assert (run / "report.html").read_text().count("Samples at step 2") == 2
    logs = "\n".join(p.read_text() for p in (run / "logs").glob("*.log"))
    assert logs.count("[llmops] samples: 3 completions at step 2") == 2

    first = read["pretrain"][0]  # the same greedy completion `llmops generate` gives
    res = llmops("generate", run.name, "--stage", "pretrain", "--prompt", first["prompt"], "--max-new-tokens", "32",
                 "--runs-dir", str(run.parent))
    assert res.returncode == 0, res.stderr
    assert res.stdout == first["prompt"] + first["completion"] + "\n"


def test_a_model_above_samples_max_parameters_is_not_sampled(trained, tmp_path):
    from llmops.runs.rundir import RunDir
    from llmops_model.hf import samples

    copy = tmp_path / trained["gpt"].name
    shutil.copytree(trained["gpt"], copy, ignore=shutil.ignore_patterns("checkpoints"))
    run = RunDir(copy)
    spec = yaml.safe_load((copy / "spec.yaml").read_text())
    size = samples.parameters(run.read_spec().model)
    assert 200_000 < size < 400_000  # the tiny preset at the test's vocabulary: about 0.3M
    spec["samples"] = {"max_parameters": size - 1}
    (copy / "spec.yaml").write_text(yaml.safe_dump(spec))
    said: list[str] = []
    assert samples.write(run, "pretrain", info=said.append) is None
    assert said == [f"samples: skipped, the model has about {size:,} parameters, more than samples.max_parameters "
                    f"({size - 1:,}); `llmops generate` samples it"]


def test_samples_that_outlast_their_deadline_end_the_process_as_a_success(trained, tmp_path):
    """On several Slurm nodes, node 0's task is ended by srun soon after the other nodes' agents leave: samples
    still running by LLMOPS_SAMPLES_DEADLINE end the process with the stage's success, and write no file."""
    import os
    import subprocess
    import sys

    copy = tmp_path / trained["gpt"].name
    shutil.copytree(trained["gpt"], copy)
    (copy / "stages" / "pretrain" / "samples.jsonl").unlink()
    script = ("import sys; from llmops.runs.rundir import RunDir; from llmops_model.hf import samples; "
              "samples.write(RunDir(sys.argv[1]), 'pretrain', info=print); print('samples returned')")
    res = subprocess.run([sys.executable, "-c", script, str(copy)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "LLMOPS_SAMPLES_DEADLINE": "0.5"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("samples: stopped after 0.5 s (LLMOPS_SAMPLES_DEADLINE"), res.stdout
    assert "samples returned" not in res.stdout
    assert not (copy / "stages" / "pretrain" / "samples.jsonl").exists()


def test_a_hostile_or_broken_model_folder_is_refused_before_anything_of_it_runs(trained, tmp_path):
    """A Hugging Face folder from elsewhere is untrusted input: its own code never runs (transformers would
    ask, and a "y" on stdin was enough), a config.json that does not fit the weights is no model filled with
    random numbers, and what cannot load is exit 2 with the fix, not a traceback."""
    from safetensors.torch import load_file, save_file

    from llmops.errors import UserError
    from llmops_model.hf.generate import Generator

    good = tmp_path / "good"
    assert _export(trained["llama"], good).returncode == 0

    def variant(name: str, change) -> Path:
        folder = tmp_path / name
        shutil.copytree(good, folder)
        change(folder)
        return folder

    def edit_json(name: str, **fields):
        def change(folder: Path) -> None:
            data = json.loads((folder / name).read_text())
            (folder / name).write_text(json.dumps({**data, **fields}))
        return change

    ran = tmp_path / "ran"
    evil = variant("evil", edit_json("config.json", model_type="evilmodel", architectures=["EvilForCausalLM"],
                                     auto_map={"AutoConfig": "evil.EvilConfig",
                                               "AutoModelForCausalLM": "evil.EvilForCausalLM"}))
    (evil / "evil.py").write_text(f"open({str(ran)!r}, 'w').write('the folder ran its code')\n")
    for command in (["generate", str(evil), "--prompt", "x"], ["eval", str(evil), "--tasks", "hellaswag"]):
        res = subprocess.run([sys.executable, "-m", "llmops", *command], input="y\ny\n", capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 2 and "asks to run Python code that came with the folder" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and not ran.exists()

    def missing_tensor(folder: Path) -> None:
        weights = load_file(folder / "model.safetensors")
        del weights[next(k for k in weights if k.endswith("mlp.down_proj.weight"))]
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    def more_tokens(folder: Path) -> None:  # ids past the embedding: an IndexError inside the model
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.add_tokens([f"<extra_{i}>" for i in range(200)])
        tok.save(str(folder / "tokenizer.json"))

    cases = {
        "more than the model's vocabulary of 1,024 (config.json vocab_size)": more_tokens,
        "tokenizer_config.json asks to run Python code": edit_json("tokenizer_config.json",
                                                                   auto_map={"AutoTokenizer": ["t.T", None]}),
        "config.json says 20000 layers, but its weights hold 4": edit_json("config.json", num_hidden_layers=20000),
        "config.json says vocab_size 4096, but its token embedding is": edit_json("config.json", vocab_size=4096),
        "its weights do not fit its config.json: 1 tensor(s) missing": missing_tensor,
        "is not a JSON object (it holds a list)": lambda f: (f / "config.json").write_text("[1, 2]"),
        "cannot be loaded as a transformers model": edit_json("config.json", num_attention_heads=0),
        "cannot be read as safetensors": lambda f: (f / "model.safetensors").write_bytes(b"\x10" * 64),
        "holds no tokenizer": lambda f: [(f / n).unlink() for n in ("tokenizer.json", "tokenizer.model")],
    }
    for said, change in cases.items():
        with pytest.raises(UserError, match=re.escape(said)):
            Generator.load(variant(f"case-{len(list(tmp_path.iterdir()))}", change), device=torch.device("cpu"))
    assert Generator.load(good, device=torch.device("cpu")).tok.get_vocab()


def test_prompts_files_are_read_line_by_line_and_odd_rows_are_refused_by_line(tmp_path):
    from llmops.errors import UserError
    from llmops_model.hf.generate import read_prompts

    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "a\u2028b\u0085c"}, {"messages": [{"role": "user", "content": "hi"}], "id": 3}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    assert read_prompts(path) == rows  # JSON text may hold U+2028 and U+0085: lines end at "\n" only
    for row, said in [({"messages": []}, '"messages" is not a non-empty list'),
                      ({"prompt": ""}, '"prompt" is not a non-empty text'),
                      ({"prompt": "def add", "messages": "The quick"}, "one of them"),
                      ({"messages": [{"role": "user"}]}, 'message 0 is not {"role": text, "content": text}')]:
        path.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(UserError, match=re.escape("prompts.jsonl:2: ") + ".*" + re.escape(said)):
            read_prompts(path)


def test_outputs_are_never_written_over_and_a_damaged_tokenizer_is_named(trained, tmp_path, assets):
    from llmops.errors import UserError
    from llmops.runs.models import check_out
    from llmops_model.hf import tokenizer

    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out in ("link", "dangling"):
        with pytest.raises(UserError, match="is a symbolic link"):
            check_out(tmp_path / out)
    check_out(tmp_path / "empty")

    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"prompt": "def add"}\n')
    run = trained["gpt"]
    res = llmops("generate", run.name, "--prompts", str(mine), "--out", str(mine), "--runs-dir", str(run.parent))
    assert res.returncode == 2 and "it already exists" in res.stderr and mine.read_text() == '{"prompt": "def add"}\n'

    cut = tmp_path / "cut.model"
    cut.write_bytes(assets.tokenizer.read_bytes()[:1000])
    (tmp_path / "empty.model").write_bytes(b"")
    for bad, said in ((cut, "cannot be read as a SentencePiece model"), (tmp_path / "empty.model", "holds no pieces")):
        with pytest.raises(UserError, match=said):
            tokenizer.build(bad, vocab_size=assets.vocab, template=None, max_length=128)


def test_a_completion_keeps_the_space_before_its_first_word(trained, tmp_path):
    """llmops's SentencePiece tokenizer drops the space that begins the first token of a text: a completion
    decoded alone read "Return thevalue", streamed (--prompt), returned (--prompts, --chat) and in the samples."""
    from llmops_model.hf.generate import Generator, Sampling

    assert _export(trained["gpt"], tmp_path / "hf", "--stage", "pretrain").returncode == 0
    gen = Generator.load(tmp_path / "hf", device=torch.device("cpu"))
    word = gen.tok.convert_tokens_to_ids("▁value")
    gen.model.generation_config.sequence_bias = [[[word], 100.0]]  # the model's choice, made certain
    prompt = gen.encode("Return the")
    streamed: list[str] = []
    (done,) = gen.complete([prompt], Sampling(max_new_tokens=3), on_text=streamed.append)
    (batch, _) = gen.complete([prompt, gen.encode("x")], Sampling(max_new_tokens=3))
    assert done.text == "".join(streamed) == batch.text == " value value value"


def test_the_text_after_the_prompt_is_exact_with_either_kind_of_tokenizer(assets):
    """What a completion is (the decoded whole less the decoded prompt, streamed a word at a time), with
    llmops's SentencePiece tokenizer and a byte-level BPE one (Llama 3 style)."""
    from llmops_model.hf import tokenizer
    from llmops_model.hf.generate import _Stream, continuation

    sentencepiece = tokenizer.build(assets.tokenizer, vocab_size=assets.vocab, template=None, max_length=assets.seq)
    byte_level = transformers.AutoTokenizer.from_pretrained(assets.hf_tokenizer)
    for tok, first in ((sentencepiece, "▁a"), (byte_level, "Ġa")):
        prompt = tok("Return the", add_special_tokens=False)["input_ids"]
        whole = tok("Return the absolute value\n    of x, y", add_special_tokens=False)["input_ids"]
        assert whole[:len(prompt)] == prompt and tok.convert_ids_to_tokens(whole[len(prompt)]) == first
        new = whole[len(prompt):]
        streamed: list[str] = []
        stream = _Stream(tok, prompt, streamed.append, stops=set())
        for ids in (prompt, *([t] for t in new)):  # as generate puts them: the prompt, then each new token
            stream.put(torch.tensor([ids]))
        stream.end()
        assert continuation(tok, prompt, new) == "".join(streamed) == " absolute value\n    of x, y"


def _copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "runs" / run.name
    shutil.copytree(run, copy)
    return copy


# `llmops` with the trainer's prune (checkpoint.keep_last) deleting a checkpoint folder at the moment the loader
# first opens one of its files (the manifest is read before, when it is picked).
_PRUNED_WHILE_READ = """
import os, shutil, sys
from pathlib import Path
doomed, done = Path(sys.argv[1]), []
def prune(event, args):
    if event == "open" and not done and isinstance(args[0], (str, os.PathLike)):
        path = Path(os.fsdecode(args[0]))
        if path.parent == doomed and path.name != "llmops-manifest.json":
            done.append(path)
            shutil.rmtree(doomed)
sys.addaudithook(prune)
from llmops.cli import main
sys.argv = ["llmops", *sys.argv[2:]]
main()
"""


def test_a_checkpoint_deleted_by_the_running_stage_while_it_is_read_is_no_traceback(trained, tmp_path):
    run = _copy_run(trained["gpt"], tmp_path)
    root = run / "checkpoints-sft"
    newest = root / "iter_0000003"  # the stage's latest, as a run still training saves them
    shutil.copytree(root / "iter_0000002", newest)
    manifest = json.loads((newest / "llmops-manifest.json").read_text())
    (newest / "llmops-manifest.json").write_text(json.dumps({**manifest, "step": 3}))

    def pruned(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _PRUNED_WHILE_READ, str(newest), *args, "--runs-dir",
                               str(run.parent)], capture_output=True, text=True, timeout=300)

    # The latest: read again from the stage's then-latest checkpoint.
    res = pruned("export", run.name, "--out", str(tmp_path / "hf"))
    assert res.returncode == 0, res.stderr
    assert not newest.exists()  # the hook did delete it, mid-read
    assert "sft step 3 was deleted while it was read" in res.stderr and "the latest one, step 2" in res.stderr
    assert "exported" in res.stderr and "sft step 2" in res.stderr
    record = json.loads((tmp_path / "hf" / "llmops-export.json").read_text())
    assert record["step"] == 2 and record["checkpoint"] == str(root / "iter_0000002")

    # A step the user named: exit 2 saying what happened, and nothing printed of the prompt.
    shutil.copytree(root / "iter_0000002", newest)
    (newest / "llmops-manifest.json").write_text(json.dumps({**manifest, "step": 3}))
    res = pruned("generate", run.name, "--stage", "sft", "--step", "3", "--prompt", "def add")
    assert res.returncode == 2, res.stderr
    assert "sft step 3 was deleted while it was read" in res.stderr and "Fix: pass a step it still keeps" in \
        res.stderr
    assert "Traceback" not in res.stderr and res.stdout == "" and not newest.exists()


def test_export_refuses_an_out_inside_a_checkpoint_folder_and_records_an_absolute_checkpoint(trained, tmp_path):
    run = _copy_run(trained["gpt"], tmp_path)
    for out in (run / "checkpoints-sft" / "iter_0000002" / "hf", run / "checkpoints-sft" / "hf"):
        res = _export(run, out)
        assert res.returncode == 2 and "is inside the checkpoint folder" in res.stderr and "Fix:" in res.stderr
        assert not out.exists()
    res = llmops("export", "checkpoints-sft/iter_0000002", "--out", str(tmp_path / "hf"), cwd=run)
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "hf" / "llmops-export.json").read_text())
    assert record["checkpoint"] == str(run / "checkpoints-sft" / "iter_0000002")


def test_generate_refuses_a_bad_seed_or_a_prompt_too_long_before_printing_anything(trained):
    run = trained["gpt"]
    for seed in ("-1", str(2**32)):
        res = llmops("generate", run.name, "--prompt", "x", "--seed", seed, "--runs-dir", str(run.parent))
        assert res.returncode == 2 and "--seed" in res.stderr and res.stdout == "", res.stderr
    res = llmops("generate", run.name, "--stage", "pretrain", "--prompt", "word " * 200, "--runs-dir",
                 str(run.parent))
    assert res.returncode == 2 and "exceed the model's context of 128 tokens" in res.stderr, res.stderr
    assert res.stdout == ""  # the prompt is not echoed before the error


def test_a_chat_longer_than_the_context_goes_on_without_its_oldest_turns(trained):
    run = trained["gpt"]  # GPT-2 positions: 128 tokens at most
    message = "Explain what the function does and when to use it, with an example. " * 2
    lines = [message, message, "word " * 200, "And then?", ""]
    chat = subprocess.run([sys.executable, "-m", "llmops", "generate", run.name, "--chat", "--max-new-tokens", "100",
                           "--runs-dir", str(run.parent)], input="\n".join(lines), capture_output=True, text=True,
                          timeout=300)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("model> ") == 3 and chat.stderr.count("tokens in") == 3
    assert "the answer is cut to" in chat.stderr and "exchange(s) left out" in chat.stderr
    assert "no room for an answer" in chat.stderr and "Fix: write a shorter message" in chat.stderr

    res = llmops("generate", run.name, "--chat", "--prompt", "word " * 200, "--runs-dir", str(run.parent))
    assert res.returncode == 2 and "no room for an answer" in res.stderr, res.stderr
