"""The run spec: presets, resolution, and a clear message for each typical mistake."""

from __future__ import annotations

import copy
import json
import os
import time

import pytest
import yaml

from llmops.errors import SpecError
from llmops.spec.load import dump_spec, json_schema, load_spec, parse_spec
from llmops_testing import REPO, tiny_spec


def test_examples_validate():
    tiny = load_spec(REPO / "examples" / "tiny-cpu.yaml")
    assert (tiny.parallelism.tensor, tiny.parallelism.pipeline, tiny.data_parallel) == (2, 2, 1)
    assert tiny.model.num_layers == 4 and tiny.num_microbatches == 4
    big = load_spec(REPO / "examples" / "gpt-1.3b-8gpu.yaml")
    assert big.resources.world_size == 8 and big.model.hidden_size == 2048


def test_preset_fills_fields_and_explicit_fields_win():
    spec = parse_spec(tiny_spec("x", model={"preset": "gpt-350m", "seq_length": 1024}))
    assert spec.model.num_layers == 24 and spec.model.hidden_size == 1024
    assert spec.model.seq_length == 1024
    assert spec.model.padded_vocab_size == 50304  # 50257 rounded up to a multiple of 128


def test_resolved_spec_round_trips():
    spec = parse_spec(tiny_spec("x", tp=2, pp=2))
    again = parse_spec(yaml.safe_load(dump_spec(spec)))
    assert again == spec
    assert "num_layers" in dump_spec(spec)  # every preset value is written out


def test_schema_has_field_descriptions():
    schema = json_schema()
    train = schema["$defs"]["TrainSpec"]["properties"]
    assert "Sequences per optimizer step" in train["global_batch_size"]["description"]
    json.dumps(schema)


def _mutate(base: dict, path: str, value) -> dict:
    spec = copy.deepcopy(base)
    keys = path.split(".")
    node = spec
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return spec


BASE = tiny_spec("ok", tp=2, pp=2)

# (mutation path, value, expected field path in the message, a word of the fix)
MISTAKES = [
    ("resources.processes_per_node", 3, "parallelism", "divides"),
    ("parallelism.tensor", 3, "model.num_attention_heads", "multiple of the tensor-parallel size"),
    ("model.num_layers", 3, "model.num_layers", "multiple of the pipeline-parallel size"),
    ("train.global_batch_size", 7, "train.global_batch_size", "multiple of 2"),
    ("train.min_lr", 1.0, "train.min_lr", "at most lr"),
    ("train.warmup_steps", 10, "train.warmup_steps", "fraction of the run"),
    ("model.preset", "gpt-1.3", "model.preset", "did you mean 'gpt-1.3b'"),
    ("model.hiden_size", 64, "model.hiden_size", "did you mean 'hidden_size'"),
    ("name", "My_Run", "name", "lowercase letters"),
    ("backend", "aws", "backend", "use one of"),
    ("train.precision", "bf16", "train.precision", "fp32"),
    ("parallelism.sequence_parallel", True, "parallelism.sequence_parallel", "raise tensor"),
    ("model.num_query_groups", 3, "model.num_query_groups", "divisor"),
    ("train.steps", 0, "train.steps", "bound"),
    ("data", {"synthetic": {}, "indexed": {"paths": ["a"]}}, "data", "exactly one"),
    ("resources.gpus_per_node", 8, "resources.gpus_per_node", "remove gpus_per_node"),
    ("model.compile", True, "model.compile", "compile: auto"),
    ("train.eval_interval", -1, "train.eval_interval", "bound"),
    ("train.eval_iters", 0, "train.eval_iters", "bound"),
]


@pytest.mark.parametrize("path,value,where,fix", MISTAKES, ids=[m[0] + "=" + str(m[1]) for m in MISTAKES])
def test_typical_mistake_names_field_value_and_fix(path, value, where, fix):
    bad = _mutate(BASE, path, value)
    if path == "parallelism.sequence_parallel":
        bad["parallelism"]["tensor"] = 1
        bad["resources"]["processes_per_node"] = 2
    with pytest.raises(SpecError) as info:
        parse_spec(bad, "spec.yaml")
    rendered = info.value.render()
    assert any(p.path == where for p in info.value.problems), rendered
    assert fix in rendered, rendered
    assert "Traceback" not in rendered


def test_every_problem_is_reported_at_once():
    bad = _mutate(_mutate(BASE, "model.num_layers", 3), "train.min_lr", 1.0)
    with pytest.raises(SpecError) as info:
        parse_spec(bad)
    assert {p.path for p in info.value.problems} >= {"model.num_layers", "train.min_lr"}


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert "cannot be read" in info.value.render()
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ntrain: [1, 2\n")
    with pytest.raises(SpecError) as info:
        load_spec(broken)
    assert "line" in info.value.render() and "not valid YAML" in info.value.render()


def test_gpu_speed_defaults_resolve_by_device():
    """CUDA graphs are on and layer compilation follows them (auto); a CPU spec keeps both defaults valid."""
    cpu = parse_spec(BASE)
    assert cpu.train.cuda_graphs is True and cpu.model.compile == "auto"
    gpu = parse_spec({"name": "g", "resources": {"gpus_per_node": 1}, "model": {"preset": "gpt-125m"},
                      "train": {"steps": 10, "global_batch_size": 8}})
    assert gpu.train.cuda_graphs is True and gpu.model.compile == "auto"
    off = parse_spec(_mutate(_mutate(BASE, "model.compile", False), "train.cuda_graphs", False))
    assert off.model.compile is False and off.train.cuda_graphs is False
    pytest.importorskip("megatron.core")
    from llmops_model.gpt import compiles_layers

    assert compiles_layers(gpu, graphed=True) and not compiles_layers(gpu, graphed=False)
    forced = parse_spec({"name": "g", "resources": {"gpus_per_node": 1},
                         "model": {"preset": "gpt-125m", "compile": True},
                         "train": {"steps": 10, "global_batch_size": 8}})
    assert compiles_layers(forced, graphed=False)


def test_auto_compile_leaves_transformer_engine_layers_alone(monkeypatch):
    """TE's layers fuse their own norms and casts, and TorchDynamo fails in their FP8 tensors: model.compile auto
    compiles the project's layers of a graphed step, never TE's, in bf16 or FP8; compile: true is the user's."""
    pytest.importorskip("megatron.core")
    from llmops_model import attention
    from llmops_model.gpt import compiles_layers

    monkeypatch.setattr(attention, "available_backends", lambda: ["te", "sdpa", "megatron"])
    spec = {"name": "g", "resources": {"gpus_per_node": 1}, "model": {"preset": "gpt-125m"},
            "train": {"steps": 10, "global_batch_size": 8}}
    assert compiles_layers(parse_spec(spec), graphed=True)  # auto in bf16: the project's own layers
    te = _mutate(spec, "model.attention", "te")
    assert not compiles_layers(parse_spec(te), graphed=True)
    assert not compiles_layers(parse_spec(_mutate(spec, "train.precision", "fp8")), graphed=True)  # TE's layers
    assert compiles_layers(parse_spec(_mutate(te, "model.compile", True)), graphed=False)


GPU = {"name": "g", "resources": {"gpus_per_node": 1}, "model": {"preset": "gpt-125m"},
       "train": {"steps": 10, "global_batch_size": 8, "micro_batch_size": 2}}

FP8_MISTAKES = [  # (mutation, value, the field named, a word of the fix)
    ("train.fp8_recipe", "delayed", "train.fp8_recipe", "set train.precision: fp8"),
    ("model.attention", "sdpa", "model.attention", "auto (or te)"),
    ("model.compile", True, "model.compile", "set it false"),
    ("model.ffn_hidden_size", 3080, "model.ffn_hidden_size", "multiples of 16"),
    ("model.seq_length", 1020, "train.micro_batch_size", "multiples of 16"),
    ("resources", {"cpu": True, "processes_per_node": 1}, "train.precision", "cpu: true"),
]


@pytest.mark.parametrize("path,value,where,fix", FP8_MISTAKES, ids=[m[0] for m in FP8_MISTAKES])
def test_fp8_runs_are_refused_where_they_cannot_run(path, value, where, fix):
    ok = _mutate(GPU, "train.precision", "fp8")
    assert parse_spec(ok).train.precision == "fp8"
    bad = _mutate(ok, path, value)
    if path == "train.fp8_recipe":
        bad["train"]["precision"] = "bf16"
    with pytest.raises(SpecError) as info:
        parse_spec(bad, "spec.yaml")
    assert info.value.exit_code == 2
    assert [p.path for p in info.value.problems] == [where], info.value.render()
    assert fix in info.value.render()


def test_an_align_stage_can_train_in_fp8_on_its_own():
    from llmops.spec.align import AlignSpec
    from llmops.spec.rules import align_rules

    align = {"method": "sft", "data": {"builtin": "python-docstrings"}, "start_from": "/ckpt", "steps": 2,
             "global_batch_size": 8, "micro_batch_size": 2, "precision": "fp8", "fp8_recipe": "tensorwise"}
    fields = AlignSpec.model_validate(align).train_fields()  # what the stage's train: takes
    assert (fields["precision"], fields["fp8_recipe"]) == ("fp8", "tensorwise")
    assert "precision" not in AlignSpec.model_validate({**align, "precision": None}).train_fields()
    spec = parse_spec(GPU)
    spec.train = None

    def problems(**changes) -> list[str]:
        spec.align = [AlignSpec.model_validate({**align, **changes})]
        return [p.path for p in align_rules(spec) if p.path != "align.tokenizer"]  # no tokenizer file here

    assert problems() == []
    assert problems(micro_batch_size=1, fp8_recipe=None) == []  # 1 x 2048 tokens
    spec.model.seq_length = 1000
    assert problems(micro_batch_size=1) == ["align.micro_batch_size"]
    assert problems(precision=None) == ["align.fp8_recipe"]  # no train: stage, so precision auto


def test_auto_layers_are_the_fast_path_in_bf16_and_te_in_fp8():
    pytest.importorskip("megatron.core")
    from llmops_model.gpt import attention_backend

    assert attention_backend(parse_spec(GPU)) == "sdpa"  # whether or not TE is installed
    fp8 = parse_spec(_mutate(GPU, "train.precision", "fp8"))
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError:
        from llmops.errors import UserError

        with pytest.raises(UserError, match="Transformer Engine, which does not import here"):
            attention_backend(fp8)
    else:
        assert attention_backend(fp8) == "te"


def test_held_out_evaluation_defaults_follow_the_run():
    """About ten evaluations in a short run, every 1000 steps in a long one, each over one global batch."""
    def resolved(steps: int, data: dict | None = None, **fields):
        spec = _mutate(BASE, "train", {**BASE["train"], "steps": steps, "warmup_steps": 0, "eval_interval": None,
                                       **fields})
        return parse_spec({**spec, "data": data} if data else spec).train

    assert [resolved(n).eval_interval for n in (4, 40, 45, 10**6)] == [1, 4, 5, 1000]
    assert resolved(40).eval_iters == 8 // 2
    assert resolved(40, {"indexed": {"paths": ["/data/c"], "split": "100,0,0"}}).eval_interval == 0
    chosen = resolved(40, eval_interval=0, eval_iters=32)
    assert (chosen.eval_interval, chosen.eval_iters) == (0, 32)


def test_an_evaluation_without_a_validation_split_is_refused_with_the_fix():
    bad = _mutate(_mutate(BASE, "train.eval_interval", 5), "data", {"indexed": {"paths": ["/data/c"],
                                                                                 "split": "100,0,0"}})
    with pytest.raises(SpecError) as info:
        parse_spec(bad, "spec.yaml")
    assert info.value.exit_code == 2
    assert info.value.render().endswith(
        "train.eval_interval = 5: evaluates on the validation split of data.indexed, which split '100,0,0' leaves "
        "empty. Fix: give the split a validation share (e.g. data.indexed.split: '969,30,1'), or set "
        "train.eval_interval: 0 to train without a held-out loss.")


def test_stages_sharing_a_checkpoint_folder_are_refused():
    spec = {**tiny_spec("shared"), "checkpoint": {"dir": "/data/ckpt"},
            "align": {"method": "sft", "data": {"builtin": "python-docstrings"}, "tokenizer": "/dev/null",
                      "checkpoint_dir": "/data/ckpt/sft", "steps": 2, "global_batch_size": 8}}
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    text = info.value.render()
    assert "align.checkpoint_dir = '/data/ckpt/sft': overlaps checkpoint.dir (stage pretrain)" in text


def test_a_stage_starting_from_its_own_checkpoint_folder_or_a_link_to_anothers_is_refused(tmp_path):
    """start_from equal to the stage's own checkpoint_dir resumed from the starting checkpoint as if it were the
    stage's own progress (4 SFT steps skipped, pre-training's optimizer state kept); a link to another stage's
    folder passed as a folder of its own."""
    align = {"method": "sft", "data": {"builtin": "python-docstrings"}, "tokenizer": "/dev/null", "steps": 2,
             "global_batch_size": 8}
    own = {**tiny_spec("own"), "checkpoint": {"dir": str(tmp_path / "pre")},
           "align": {**align, "start_from": str(tmp_path / "copy" / "iter_0000004"),
                     "checkpoint_dir": str(tmp_path / "copy")}}
    with pytest.raises(SpecError) as info:
        parse_spec(own)
    assert "align.start_from" in info.value.render() and "own align.checkpoint_dir" in info.value.render()
    (tmp_path / "pre").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "pre")
    linked = {**tiny_spec("linked"), "checkpoint": {"dir": str(tmp_path / "pre")},
              "align": {**align, "checkpoint_dir": str(tmp_path / "link")}}
    with pytest.raises(SpecError) as info:
        parse_spec(linked)
    assert "overlaps checkpoint.dir (stage pretrain)" in info.value.render()


# A few hundred bytes that stand for 9**8 values (each line repeats the one before nine times).
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh")) + "name: [*h, *h, *h]\n"


@pytest.mark.parametrize("content, says", [
    (BILLION_LAUGHS, "once its aliases are expanded"),
    ("&a [*a]", "an alias inside its own anchor"),
    ("name: !!int abc", "a value YAML cannot read"),
    ("name: !!python/object/apply:os.system [id]", "a tag run specs do not take"),
    ("[" * 100_000 + "]" * 100_000, "nesting depth"),
    ("name: x\ntrain: {steps: 1" + "0" * 5000 + ", global_batch_size: 8}", "a value YAML cannot read"),
    ("name: a\x00b", "not valid YAML"),
    (b"\xff\xfe\x00n\x00a\x00m\x00e", "is not UTF-8 text"),
    ("# " + "x" * (1 << 20), "more than a run spec's limit"),
])
def test_hostile_spec_files_are_refused_quickly_with_exit_2(tmp_path, content, says):
    """Each of these ran for minutes, took gigabytes, or ended in a traceback."""
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    started = time.monotonic()
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert says in info.value.render() and time.monotonic() - started < 5
    assert len(info.value.render()) < 2000


@pytest.mark.parametrize("content, says", [
    ("name: a\ntrain: {steps: 4, global_batch_size: 8, steps: 40000}", "'steps': is given twice in one mapping"),
    ("name: a\nname: b\ntrain: {steps: 4, global_batch_size: 8}", "'name': is given twice in one mapping (line 1 "
                                                                   "and line 2)"),
    ("name: a\ntrain: {steps: 010, global_batch_size: 8}", "'010': (line 2) is read by YAML as 8"),
    ("name: a\nbackend: slurm\nslurm: {time: 1:30:00}\ntrain: {steps: 4, global_batch_size: 8}",
     "'1:30:00': (line 3) is read by YAML as 5400"),
])
def test_yaml_that_reads_as_something_else_than_it_says_is_refused(tmp_path, content, says):
    """A key given twice kept the last (4 steps became 40,000), `steps: 010` was 8 steps and `time: 1:30:00` the
    number 5400: YAML 1.1 reads a leading 0 as octal and colons as base 60."""
    path = tmp_path / "spec.yaml"
    path.write_text(content)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert says in info.value.render()
    path.write_text(yaml.safe_dump(tiny_spec("a", steps=10)))
    assert load_spec(path).train.steps == 10


def test_a_flag_where_a_number_is_meant_is_refused():
    """`steps: true` trained one step (pydantic reads true as 1); text that YAML 1.1 leaves unread as a number,
    `lr: 3e-4`, is still the number."""
    with pytest.raises(SpecError) as info:
        parse_spec(tiny_spec("flag", train={"steps": True}))
    assert "train.steps = True: is true/false where a number is meant" in info.value.render()
    assert parse_spec(tiny_spec("text", train={"lr": "3e-4"})).train.lr == 3e-4


def test_a_spec_path_that_is_not_a_regular_file_is_refused(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)  # reading it would wait forever
    with pytest.raises(SpecError, match="problem"):
        load_spec(fifo)
