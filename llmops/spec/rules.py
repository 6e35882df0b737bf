"""The rules that span the run spec's components, each violation with its field path, value and fix.

Per-field checks live on the fields (:mod:`llmops.spec.run` and its
sections); what only makes sense across sections lives here: the world size
against the parallel layout, batch sizes against data parallelism, the
prepare stage against what pretraining reads, each align stage against the
tokenizer and the stage it starts from. :func:`check_rules` reports every
problem at once, and fills in what the spec leaves to be derived (the
prepared data and vocabulary, absolute paths): its result is the resolved
spec. A backend's own rules (the shared volume of Kubernetes, Slurm's
settings) are the backend's (:meth:`llmops.backends.base.Backend.validate`).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass

from pydantic import ValidationError

from llmops.errors import Problem, UserError, cut
from llmops.spec import hf, hf_weights
from llmops.spec.align import AlignSpec
from llmops.spec.base import absolute_path, problems_from
from llmops.spec.prepare import EOS_ID, PrepareSpec
from llmops.spec.presets import PRESETS
from llmops.spec.run import TRACKING_INSTALL, DataSpec, IndexedData, ModelSpec, RunSpec


def check_rules(spec: RunSpec) -> list[Problem]:
    """The cross-component rules users get wrong, every violation at once."""
    started = _hf_rules(spec)  # first: a Hugging Face starting point gives the model's shape
    if started:
        return started
    linked = _prepare_rules(spec)  # then the data and model.vocab_size from the prepare stage
    out = _model_rules(spec)
    if out:
        return linked + out  # the remaining rules need a complete model shape
    out += linked + _resource_rules(spec) + _parallel_rules(spec)
    if not spec.stages:
        out.append(Problem("(top level)", None, "names no stage to run", "add a train: or prepare: section"))
    if spec.train is not None:
        out += _train_rules(spec)
    if spec.align:
        out += align_rules(spec)
    return out + _data_rules(spec) + _checkpoint_rules(spec) + _tracking_rules(spec)


_HF_DEFAULT_SEQ = 4096  # RoPE models are trained on what fits; their config's maximum is often 128k


def _hf_rules(spec: RunSpec) -> list[Problem]:
    """Fill the model's shape from the `hf:` folder the run starts from; a field the spec sets otherwise is a
    problem naming both values. Fields a preset filled give way (only explicit ones are compared)."""
    sources = [("model.init_from", spec.model.init_from)] if spec.model.init_from is not None else []
    sources += [(("align" if len(spec.align) == 1 else f"align.{i}") + ".start_from", a.start_from)
                for i, a in enumerate(spec.align) if hf.folder_of(a.start_from) is not None]
    if not sources:
        return []
    where, value = sources[0]
    m, explicit = spec.model, spec.model.model_fields_set
    folder = hf.folder_of(value)
    if folder is None:
        return [Problem(where, value, "is not a Hugging Face folder reference",
                        "write hf:DIR, DIR a local folder that transformers' save_pretrained wrote")]
    folder = absolute_path(folder)
    others = [(w, v) for w, v in sources[1:] if absolute_path(hf.folder_of(v)) != folder]
    if others:
        return [Problem(others[0][0], others[0][1], f"starts from another model than {where} ({value})",
                        "start every stage from one model: later stages continue from the one before")]
    try:
        fields = hf.model_fields(hf.read_config(folder))
        _whole_model({**m.model_dump(), **fields, "preset": None}, f"{folder}/config.json")
        hf_weights.check_weights(folder, fields)  # before anything is built from config.json's numbers
    except UserError as exc:
        return [Problem(where, value, exc.message, exc.fix or "check the folder")]
    out = []
    if "preset" in explicit and m.preset is not None:
        out.append(Problem("model.preset", m.preset, f"and {where} both give the model's shape",
                           f"remove model.preset: the shape comes from {folder}/config.json"))
    for key, theirs in fields.items():
        if key in explicit and getattr(m, key) != theirs:
            out.append(Problem(f"model.{key}", getattr(m, key), f"differs from the starting model's ({theirs}, "
                               f"{folder}/config.json)", f"remove model.{key} (it is filled in) or set it to {theirs}"))
    if out:
        return out
    updates = {k: v for k, v in fields.items() if k not in explicit}
    if "seq_length" not in explicit and "seq_length" not in fields:
        updates["seq_length"] = _HF_DEFAULT_SEQ
    spec.model = m.model_copy(update={**updates, "preset": None})
    if spec.model.init_from is not None:
        spec.model = spec.model.model_copy(update={"init_from": hf.PREFIX + folder})
    spec.align = [a.model_copy(update={"start_from": hf.PREFIX + folder}) if hf.folder_of(a.start_from) else a
                  for a in spec.align]
    return []


def _whole_model(values: dict, source: str) -> None:
    """UserError unless `values` make a model within the spec's bounds: config.json's numbers skip the spec's
    own validation (a run directory whose spec.yaml cannot be read again would be left behind)."""
    try:
        ModelSpec.model_validate(values)
    except ValidationError as exc:
        p = problems_from(exc, ModelSpec, prefix=("model",))[0]
        raise UserError(f"{source} gives {p.path} = {cut(repr(p.value), 80)}: {p.message}",
                        "start from a model within llmops's bounds, or use the config.json saved with its "
                        "weights") from None


def _checkpoint_rules(spec: RunSpec) -> list[Problem]:
    """Each training stage saves into a folder of its own: one inside another's would resume from and prune
    the other's checkpoints. (Folders left unset are distinct folders of the run directory.)"""
    if spec.checkpoint.dir is not None:
        spec.checkpoint = spec.checkpoint.model_copy(update={"dir": absolute_path(spec.checkpoint.dir)})
    roots = [("checkpoint.dir", "pretrain", spec.checkpoint.dir)] if spec.train is not None else []
    roots += [(("align" if len(spec.align) == 1 else f"align.{i}") + ".checkpoint_dir", a.stage, a.checkpoint_dir)
              for i, a in enumerate(spec.align)]
    out, seen = [], []
    for where, stage, root in roots:
        if root is None:
            continue
        real = os.path.realpath(root)  # a link and the folder it points to are one folder
        clash = next(((w, s) for w, s, r in seen if _overlap(r, real)), None)
        if clash:
            out.append(Problem(where, root, f"overlaps {clash[0]} (stage {clash[1]}): the two stages would resume "
                               "from and delete each other's checkpoints",
                               f"give the {stage} stage a folder of its own, or leave it unset "
                               "(a folder of the run directory)"))
        seen.append((where, stage, real))
    for i, a in enumerate(spec.align):
        start = a.start_from if a.start_from and hf.folder_of(a.start_from) is None else None
        if start and a.checkpoint_dir and _overlap(os.path.realpath(start), os.path.realpath(a.checkpoint_dir)):
            where = ("align" if len(spec.align) == 1 else f"align.{i}")
            out.append(Problem(f"{where}.start_from", start, f"overlaps the stage's own {where}.checkpoint_dir: "
                               "the stage would take the checkpoint it starts from for its own progress, skip "
                               "steps and resume the other stage's optimizer",
                               "start from the earlier stage's checkpoint folder, and save this stage elsewhere "
                               "(or leave checkpoint_dir unset: a folder of the run directory)"))
    return out


def _overlap(a: str, b: str) -> bool:
    return os.path.commonpath([a, b]) in (a, b)


def _tracking_rules(spec: RunSpec) -> list[Problem]:
    """A tracker whose client library is missing on this machine, for runs that train here (the local
    backend): the training process would refuse to start. A cluster's jobs check their own environment."""
    if spec.tracking is None or spec.backend != "local":
        return []
    return [Problem(f"tracking.{name}", None, f"needs the {name} client library, which is not installed",
                    f"{TRACKING_INSTALL}, here and in the jobs' environment (docs/tracking.md)")
            for name in spec.tracking.missing_libraries()]


def _prepare_rules(spec: RunSpec) -> list[Problem]:
    """Make prepare: paths absolute; with train:, train on what prepare writes.

    Unless the spec sets them, data.indexed (the prepared prefix and eod id) and
    model.vocab_size (the tokenizer's) are filled in, so the resolved spec
    names exactly what pretraining reads; values the spec sets must agree.
    """
    if spec.prepare is None:
        return []
    spec.prepare = spec.prepare.model_copy(update=spec.prepare.absolutized())
    out = _input_rules(spec)
    if spec.train is None:
        return out
    if spec.prepare.tokenizer is None:
        return out + [Problem("prepare.tokenizer", None, "is null, so prepare writes no token files for train:",
                              "give a tokenizer: section, or leave train: out of this spec")]
    try:
        facts = _training_facts(spec.prepare)
    except UserError as exc:
        reason = getattr(exc, "reason", exc.message)
        return out + [Problem("prepare.tokenizer.model", spec.prepare.tokenizer.model, reason,
                              exc.fix or "check the file")]
    ix = spec.data.indexed
    if "data" not in spec.model_fields_set:
        spec.data = DataSpec(indexed=IndexedData(paths=[facts.prefix], eod_id=facts.eod_id))
    elif ix is None or facts.prefix not in map(absolute_path, ix.paths) or ix.eod_id != facts.eod_id:
        out.append(Problem("data", None, "does not train on what prepare: writes",
                           f"leave data: out (it is filled in), or write data: {{indexed: {{paths: "
                           f"['{facts.prefix}'], eod_id: {facts.eod_id}}}}}"))
    if "vocab_size" not in spec.model.model_fields_set:
        spec.model.vocab_size = facts.vocab_size
    elif (spec.model.vocab_size or 0) < facts.vocab_size:
        out.append(Problem("model.vocab_size", spec.model.vocab_size,
                           f"is smaller than the tokenizer's vocabulary ({facts.vocab_size})",
                           f"leave model.vocab_size out (it is filled in), or set it to {facts.vocab_size}"))
    return out


def _input_rules(spec: RunSpec) -> list[Problem]:
    """On this machine (the local backend), the prepare stage's input must exist before any process starts;
    elsewhere the paths are the cluster's, checked where the stage runs."""
    if spec.backend != "local":
        return []
    from llmops.prepare.sources import missing

    return [Problem(f"prepare.input.paths.{i}", entry, reason, "check the path (relative paths start from the "
                    "folder you run llmops in), or fetch the data first")
            for i, entry in enumerate(spec.prepare.input.paths) if (reason := missing(entry))]


@dataclass(frozen=True)
class _TrainingFacts:
    prefix: str
    eod_id: int
    vocab_size: int


def _training_facts(prepare: PrepareSpec) -> _TrainingFacts:
    """What the pretrain stage needs from the prepare stage's output, known before it runs.

    A trained tokenizer's ids are ours to choose; an existing model is read (UserError when it cannot be).
    """
    tok = prepare.tokenizer
    if tok.model is None:
        return _TrainingFacts(prefix=absolute_path(prepare.prefix), eod_id=EOS_ID, vocab_size=tok.vocab_size)
    facts = _tokenizer_facts(tok.model)
    return _TrainingFacts(prefix=absolute_path(prepare.prefix), eod_id=facts.eos_id, vocab_size=facts.vocab_size)


def _model_rules(spec: RunSpec) -> list[Problem]:
    m = spec.model
    if m.preset is not None and m.preset not in PRESETS:
        close = difflib.get_close_matches(m.preset, PRESETS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return [Problem("model.preset", m.preset, "is not a known preset",
                        f"{hint}use one of {', '.join(PRESETS)}, or set preset: null and give every field")]
    missing = [f for f in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                           "seq_length", "vocab_size") if getattr(m, f) is None]
    if missing:
        return [Problem("model", None, f"has no preset and is missing {', '.join(missing)}",
                        "name a preset (model.preset: tiny) or give those fields")]
    if m.hidden_size % m.num_attention_heads:
        return [Problem("model.hidden_size", m.hidden_size,
                        f"is not divisible by num_attention_heads={m.num_attention_heads}",
                        "make the width a multiple of the head count")]
    if m.num_query_groups and m.num_attention_heads % m.num_query_groups:
        return [Problem("model.num_query_groups", m.num_query_groups,
                        f"does not divide num_attention_heads={m.num_attention_heads}",
                        "use a divisor of the attention head count")]
    return []


def _resource_rules(spec: RunSpec) -> list[Problem]:
    res, out = spec.resources, []
    if res.cpu and res.gpus_per_node is not None:
        out.append(Problem("resources.gpus_per_node", res.gpus_per_node, "is set while resources.cpu is true",
                           "remove gpus_per_node for a CPU run, or set cpu: false to use GPUs"))
    if not res.cpu and res.processes_per_node is not None:
        out.append(Problem("resources.processes_per_node", res.processes_per_node,
                           "only applies to CPU runs", "use gpus_per_node for GPU runs, or set cpu: true"))
    if not res.cpu and res.gpus_per_node is None:
        out.append(Problem("resources", None, "names neither gpus_per_node nor cpu: true",
                           "add gpus_per_node: N, or cpu: true with processes_per_node: N"))
    return out


def _parallel_rules(spec: RunSpec) -> list[Problem]:
    res, par, m, out = spec.resources, spec.parallelism, spec.model, []
    tp, pp, world = par.tensor, par.pipeline, res.world_size
    if world % (tp * pp):
        out.append(Problem("parallelism", f"tensor={tp} pipeline={pp}",
                           f"tensor x pipeline = {tp * pp} does not divide the world size {world} "
                           f"({res.nodes} node(s) x {res.procs_per_node} process(es))",
                           f"choose tensor and pipeline whose product divides {world}, or change resources"))
    if m.num_attention_heads % tp:
        out.append(Problem("model.num_attention_heads", m.num_attention_heads,
                           f"is not divisible by parallelism.tensor={tp}",
                           "make the head count a multiple of the tensor-parallel size"))
    elif (m.num_query_groups or m.num_attention_heads) % tp:
        out.append(Problem("model.num_query_groups", m.num_query_groups, f"is not divisible by parallelism.tensor={tp}",
                           "make the key/value head count a multiple of the tensor-parallel size"))
    if m.ffn_hidden_size % tp:
        out.append(Problem("model.ffn_hidden_size", m.ffn_hidden_size, f"is not divisible by parallelism.tensor={tp}",
                           "make the MLP width a multiple of the tensor-parallel size"))
    if m.num_layers % pp:
        out.append(Problem("model.num_layers", m.num_layers, f"is not divisible by parallelism.pipeline={pp}",
                           "make the layer count a multiple of the pipeline-parallel size"))
    if m.padded_vocab_size % tp:
        out.append(Problem("parallelism.tensor", tp, f"does not divide the padded vocabulary {m.padded_vocab_size}",
                           "use a power-of-two tensor-parallel size"))
    if par.sequence_parallel and tp == 1:
        out.append(Problem("parallelism.sequence_parallel", True, "needs parallelism.tensor > 1",
                           "set sequence_parallel: false or raise tensor"))
    if par.sequence_parallel and m.seq_length % tp:
        out.append(Problem("model.seq_length", m.seq_length, f"is not divisible by parallelism.tensor={tp} "
                           "(sequence parallelism splits the sequence)", "use a multiple of the tensor size"))
    return out


def _train_rules(spec: RunSpec) -> list[Problem]:
    out: list[Problem] = []
    res, tr, par = spec.resources, spec.train, spec.parallelism
    tp, pp, world = par.tensor, par.pipeline, res.world_size
    dp = spec.data_parallel
    if world % (tp * pp) == 0 and tr.global_batch_size % (tr.micro_batch_size * dp):
        rows = tr.micro_batch_size * dp
        out.append(Problem("train.global_batch_size", tr.global_batch_size,
                           f"is not divisible by micro_batch_size x data-parallel size = "
                           f"{tr.micro_batch_size} x {dp} = {rows}",
                           f"use a multiple of {rows}, e.g. {max(1, round(tr.global_batch_size / rows)) * rows}"))
    if tr.min_lr > tr.lr:
        out.append(Problem("train.min_lr", tr.min_lr, f"is larger than train.lr={tr.lr}",
                           "the cosine decay ends at min_lr: make it at most lr"))
    if tr.warmup_steps >= tr.steps:
        out.append(Problem("train.warmup_steps", tr.warmup_steps, f"is not below train.steps={tr.steps}",
                           "warm up for a fraction of the run (a few percent of steps is typical)"))
    if res.cpu and tr.precision == "bf16":
        out.append(Problem("train.precision", "bf16", "is not supported on CPU runs",
                           "use precision: auto or fp32 with cpu: true"))
    out += _fp8_rules(spec, "train", tr.precision, tr.fp8_recipe, tr.micro_batch_size)
    if res.cpu and spec.model.compile is True:
        out.append(Problem("model.compile", True, "is not supported on CPU runs",
                           "leave compile: auto (or set false) for cpu: true"))
    if res.cpu and spec.checkpoint.async_save:
        out.append(Problem("checkpoint.async_save", True, "is not supported on CPU runs",
                           "set async_save: false for cpu: true"))
    return out + _eval_rules(spec)


def _fp8_rules(spec: RunSpec, where: str, precision: str, recipe: str | None, micro_batch_size: int) -> list[Problem]:
    """FP8 runs through Transformer Engine's layers on a GPU, in shapes its FP8 GEMMs take. `where` is the
    section (train, align) holding `precision` and `recipe`."""
    m, par = spec.model, spec.parallelism
    if precision != "fp8":
        if recipe not in (None, "auto"):
            return [Problem(f"{where}.fp8_recipe", recipe, f"applies to FP8 runs, and {where}.precision is "
                            f"{precision}", f"set {where}.precision: fp8, or remove fp8_recipe")]
        return []
    if spec.resources.cpu:
        return [Problem(f"{where}.precision", "fp8", "needs a GPU with FP8 tensor cores (Hopper, Ada or Blackwell)",
                        "use precision: auto or fp32 with cpu: true")]
    out = []
    if m.attention in ("sdpa", "megatron"):
        out.append(Problem("model.attention", m.attention, "cannot run FP8: FP8 GEMMs are Transformer Engine's",
                           f"set model.attention: auto (or te) for {where}.precision: fp8"))
    if m.compile is True:
        out.append(Problem("model.compile", True, "is not supported with FP8 (TorchDynamo cannot trace Transformer "
                           "Engine's FP8 tensors yet)", "leave compile: auto or set it false"))
    tokens = micro_batch_size * m.seq_length // (par.tensor if par.sequence_parallel else 1)
    for path, value, size, what in (
            ("model.hidden_size", m.hidden_size, m.hidden_size, "it"),
            ("model.ffn_hidden_size", m.ffn_hidden_size, m.ffn_hidden_size // par.tensor,
             f"ffn_hidden_size / parallelism.tensor = {m.ffn_hidden_size // par.tensor}"),
            (f"{where}.micro_batch_size", micro_batch_size, tokens,
             f"the tokens of a micro-batch on one tensor-parallel rank (micro_batch_size x seq_length"
             f"{' / tensor' if par.sequence_parallel else ''} = {tokens})")):
        if size % 16:
            out.append(Problem(path, value, f"FP8 GEMMs need dimensions divisible by 16, and {what} is not",
                               "use multiples of 16"))
    return out


EVAL_POINTS, EVAL_INTERVAL_CAP = 10, 1000
"""An unset train.eval_interval evaluates about this many times in a run, but at least every this many steps."""


def _eval_rules(spec: RunSpec) -> list[Problem]:
    """Fill in the held-out evaluation's defaults (train.eval_interval, train.eval_iters); an interval the spec
    asks for must have held-out data to evaluate on."""
    tr, ix = spec.train, spec.data.indexed
    no_validation = ix is not None and _validation_share(ix.split) == 0.0
    interval = tr.eval_interval
    if interval is None:
        interval = 0 if no_validation else min(EVAL_INTERVAL_CAP, -(-tr.steps // EVAL_POINTS))
    iters = tr.eval_iters if tr.eval_iters is not None else max(1, tr.global_batch_size // tr.micro_batch_size)
    spec.train = tr.model_copy(update={"eval_interval": interval, "eval_iters": iters})
    if interval and no_validation:
        return [Problem("train.eval_interval", interval, f"evaluates on the validation split of data.indexed, "
                        f"which split '{ix.split}' leaves empty",
                        "give the split a validation share (e.g. data.indexed.split: '969,30,1'), or set "
                        "train.eval_interval: 0 to train without a held-out loss")]
    return []


def _validation_share(split: str) -> float | None:
    """The validation number of a 'train,validation,test' split; None when it is malformed (_data_rules says so)."""
    parts = split.replace(" ", "").split(",")
    try:
        return float(parts[1]) if len(parts) == 3 else None
    except ValueError:
        return None


def _data_rules(spec: RunSpec) -> list[Problem]:
    out: list[Problem] = []
    d = spec.data
    if (d.synthetic is None) == (d.indexed is None):
        out.append(Problem("data", None, "must name exactly one source",
                           "give either data.synthetic: {} or data.indexed: {paths: [...]}"))
    elif d.indexed is not None:
        ix = d.indexed
        if ix.weights is not None and len(ix.weights) != len(ix.paths):
            out.append(Problem("data.indexed.weights", ix.weights,
                               f"has {len(ix.weights)} entries for {len(ix.paths)} paths",
                               "give one weight per path, or leave weights out"))
        if not re.fullmatch(r"\d+(\.\d+)?,\d+(\.\d+)?,\d+(\.\d+)?", ix.split.replace(" ", "")):
            out.append(Problem("data.indexed.split", ix.split, "is not three comma-separated numbers",
                               "write it like '969,30,1' (train,validation,test)"))
    return out


def align_rules(spec: RunSpec) -> list[Problem]:
    """The rules that tie each `align:` stage to the rest of the spec. Fills in tokenizers from `prepare:`."""
    out = _name_rules(spec)
    for i, a in enumerate(list(spec.align)):
        where = "align" if len(spec.align) == 1 else f"align.{i}"
        a = a.model_copy(update=a.absolutized())
        problems = _batch_rules(spec, a) + (_start_rules(spec) if i == 0 else [])
        if a.precision is not None or a.fp8_recipe is not None:
            problems += _fp8_rules(spec, "align", a.precision or (spec.train.precision if spec.train else "auto"),
                                   a.fp8_recipe, a.micro_batch_size)
        prepared = spec.prepare.tokenizer_path if spec.prepare is not None else None
        start = hf.folder_of(a.start_from)
        if a.tokenizer is None and start is not None:  # the model's own, saved with it
            a = a.model_copy(update={"tokenizer": hf.tokenizer_beside(start)})
        if prepared is not None and a.tokenizer in (None, prepared):  # written by this run's prepare stage
            a = a.model_copy(update={"tokenizer": prepared})
            problems += _prepared_tokenizer_rules(spec, a)
        elif a.tokenizer is None and start is not None:
            problems.append(Problem("align.tokenizer", None, f"is unset and {start} has no tokenizer (neither "
                                    "tokenizer.json nor a SentencePiece tokenizer.model)",
                                    "set align.tokenizer to the model's tokenizer: hf:DIR for a folder with "
                                    "tokenizer.json, or the path of its tokenizer.model"))
        elif a.tokenizer is None:
            problems.append(Problem("align.tokenizer", None, "is unset and no prepare: stage writes a tokenizer",
                                    "set align.tokenizer to the tokenizer the model was pre-trained with"))
        elif hf.tokenizer_exists(a.tokenizer):
            problems += _tokenizer_file_rules(spec, a, a.tokenizer)
        elif spec.backend == "local":
            folder = hf.folder_of(a.tokenizer)
            if not os.path.exists(folder or a.tokenizer):
                problems.append(Problem("align.tokenizer", a.tokenizer, "does not exist", "check the path"))
            else:
                problems.append(Problem("align.tokenizer", a.tokenizer, "is not a folder" if folder else
                                        "is not a regular file (a folder, a pipe or a device)",
                                        "give a SentencePiece .model file, or hf:DIR for a Hugging Face tokenizer "
                                        "folder"))
        if a.data.path is not None and spec.backend == "local" and not os.path.isfile(a.data.path):
            problems.append(Problem("align.data.path", a.data.path, "is not a file",
                                    "check the path (relative paths start from the folder you run llmops in)"))
        spec.align[i] = a
        out += [Problem(where + p.path[len("align"):], p.value, p.message, p.fix)
                if p.path.startswith("align.") else p for p in problems]
    return out


def _name_rules(spec: RunSpec) -> list[Problem]:
    seen: dict[str, int] = {}
    out = []
    for i, a in enumerate(spec.align):
        if a.stage in ("prepare", "pretrain"):
            out.append(Problem(f"align.{i}.name", a.stage, "is the name of another stage kind",
                               "name align stages after what they do, e.g. sft-chat"))
        elif a.stage in seen:
            out.append(Problem(f"align.{i}.name", a.name, f"repeats the stage name of align.{seen[a.stage]}",
                               f"give each {a.method} stage its own name:, e.g. {a.method}-{i + 1}"))
        seen.setdefault(a.stage, i)
    return out


def _batch_rules(spec: RunSpec, a: AlignSpec) -> list[Problem]:
    out = []
    dp = spec.data_parallel
    unit = a.micro_batch_size * dp
    if a.global_batch_size % unit:
        out.append(Problem("align.global_batch_size", a.global_batch_size,
                           f"is not divisible by micro_batch_size x data-parallel size = "
                           f"{a.micro_batch_size} x {dp} = {unit}",
                           f"use a multiple of {unit}, e.g. {max(1, round(a.global_batch_size / unit)) * unit}"))
    if a.warmup_steps >= a.steps:
        out.append(Problem("align.warmup_steps", a.warmup_steps, f"is not below align.steps={a.steps}",
                           "warm up for a fraction of the stage"))
    if a.min_lr > a.lr:
        out.append(Problem("align.min_lr", a.min_lr, f"is larger than align.lr={a.lr}", "make it at most lr"))
    return out


def _start_rules(spec: RunSpec) -> list[Problem]:
    a = spec.align[0]
    if a.start_from is None and spec.train is None and spec.checkpoint.dir is None:
        return [Problem("align.start_from", None, "is unset and this spec has no train: stage to start from",
                        "set align.start_from to a pre-training checkpoint folder (or its checkpoint root)")]
    return []


def _prepared_tokenizer_rules(spec: RunSpec, a: AlignSpec) -> list[Problem]:
    """The prepare stage trains the tokenizer later: check what it is asked to reserve."""
    tok, template = spec.prepare.tokenizer, a.template.tokens()
    if tok.model is not None:
        return _tokenizer_file_rules(spec, a, tok.model) if hf.tokenizer_exists(tok.model) else []
    missing = [t for t in template.values() if t not in tok.special_tokens]
    if missing:
        return [Problem("prepare.tokenizer.special_tokens", tok.special_tokens,
                        f"does not reserve the chat template's {', '.join(missing)}",
                        "add them, or set align.template to tokens the tokenizer reserves")]
    return _vocab_rule(spec, tok.vocab_size)


def _tokenizer_facts(ref: str):
    """A tokenizer's vocabulary size and reserved ids: a Hugging Face folder's (`hf:DIR`) or a SentencePiece
    model's (each library imported only for a spec that names such a tokenizer)."""
    if (folder := hf.folder_of(ref)) is not None:
        from llmops.prepare.pretrained import facts

        return facts(folder)
    from llmops.prepare.tokenizer import read_model_facts

    return read_model_facts(ref)


def _tokenizer_file_rules(spec: RunSpec, a: AlignSpec, path: str) -> list[Problem]:
    try:
        facts = _tokenizer_facts(path)
    except UserError as exc:
        return [Problem("align.tokenizer", path, getattr(exc, "reason", exc.message), exc.fix or "check the file")]
    out = _vocab_rule(spec, facts.vocab_size)
    if (folder := hf.folder_of(path)) is not None:  # a Hugging Face tokenizer: its own chat template
        from llmops.prepare.pretrained import chat_template

        try:
            template = chat_template(folder)
        except UserError as exc:
            return out + [Problem("align.tokenizer", path, exc.message, exc.fix or "check the folder")]
        if template is None:
            out.append(Problem("align.tokenizer", path, "has no chat template (tokenizer_config.json has no "
                               "chat_template, and there is no chat_template.jinja): SFT and DPO render "
                               "conversations with it", "use the tokenizer of the model's chat (instruct) "
                               "version, or add its chat_template to tokenizer_config.json"))
        return out
    for role, token in a.template.tokens().items():
        if token not in facts.special_tokens:
            out.append(Problem(f"align.template.{role}", token, "is not a special (control) token of the tokenizer",
                               f"use one of {sorted(facts.special_tokens)}, or a tokenizer trained with it "
                               f"in prepare.tokenizer.special_tokens"))
    return out


def _vocab_rule(spec: RunSpec, vocab_size: int) -> list[Problem]:
    if (spec.model.vocab_size or 0) < vocab_size:
        return [Problem("model.vocab_size", spec.model.vocab_size,
                        f"is smaller than the alignment tokenizer's vocabulary ({vocab_size})",
                        f"set model.vocab_size to the one the model was pre-trained with (at least {vocab_size})")]
    return []
