"""The run spec: one YAML file that describes a run.

Each component is a small pydantic model with ``extra="forbid"`` so that a
misspelt key is an error, not a silently ignored setting. Field docstrings
become the JSON Schema descriptions (``llmops schema``) that editors show.

Per-field checks live on the fields; the rules that span components (world
size against the parallel layout, batch sizes against data parallelism, ...)
live in :func:`check_rules`, which reports every problem at once with the
field path, the value and the fix. :func:`load_spec` runs both and raises
:class:`llmops.errors.SpecError`.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmops.align_spec import AlignSpec, align_rules
from llmops.backends.k8s_spec import K8sSpec
from llmops.backends.slurm_spec import SlurmSpec
from llmops.errors import Problem, SpecError, UserError
from llmops.prepare.config import PrepareSpec, absolute_path
from llmops.presets import PRESETS

SPEC_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class Resources(_Model):
    """Where the processes run: nodes, and GPUs or CPU processes on each."""

    nodes: int = Field(1, ge=1)
    """Number of nodes (one torchrun agent per node)."""
    gpus_per_node: int | None = Field(None, ge=1)
    """GPUs per node; one training process per GPU. Leave unset with `cpu: true`."""
    cpu: bool = False
    """Train on CPUs over gloo instead of GPUs over NCCL (laptops, CI)."""
    processes_per_node: int | None = Field(None, ge=1)
    """Training processes per node in CPU mode."""

    @property
    def procs_per_node(self) -> int:
        if self.cpu:
            return self.processes_per_node or 1
        return self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


class Parallelism(_Model):
    """How the model is split. Data parallelism is what remains of the world size."""

    tensor: int = Field(1, ge=1)
    """Tensor-parallel size: each layer's matrices are split across this many processes."""
    pipeline: int = Field(1, ge=1)
    """Pipeline-parallel size: the layers are split into this many stages."""
    sequence_parallel: bool = False
    """Shard layer-norm and dropout activations along the sequence (needs tensor > 1)."""


class ModelSpec(_Model):
    """The GPT's shape. A `preset` fills every field; explicit fields override it."""

    preset: str | None = "tiny"
    """Named shape: tiny, gpt-125m, gpt-350m, gpt-760m, gpt-1.3b, gpt-2.7b, gpt-6.7b, gpt-13b."""
    num_layers: int | None = Field(None, ge=1)
    """Transformer layers."""
    hidden_size: int | None = Field(None, ge=1)
    """Model width."""
    num_attention_heads: int | None = Field(None, ge=1)
    """Attention heads."""
    num_query_groups: int | None = Field(None, ge=1)
    """Key/value heads for grouped-query attention; unset means one per attention head."""
    ffn_hidden_size: int | None = Field(None, ge=1)
    """Width of the MLP's hidden layer."""
    seq_length: int | None = Field(None, ge=8)
    """Tokens per training sequence."""
    vocab_size: int | None = Field(None, ge=8)
    """Tokenizer vocabulary size (padded to a multiple of 128 when the model is built)."""
    normalization: Literal["LayerNorm", "RMSNorm"] = "LayerNorm"
    """Normalization layer."""
    position_embedding: Literal["learned_absolute", "rope"] = "learned_absolute"
    """Position encoding."""
    activation: Literal["gelu", "swiglu"] = "gelu"
    """MLP activation; swiglu gates the MLP (its ffn_hidden_size is the gated width)."""
    tie_embeddings: bool = False
    """Share the input embedding with the output layer."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Hidden and attention dropout probability."""
    init_std: float = Field(0.02, gt=0.0)
    """Standard deviation of the normal weight initialisation."""
    attention: Literal["auto", "te", "sdpa", "megatron"] = "auto"
    """Core attention: te (Transformer Engine), sdpa (fused torch kernels), megatron (unfused reference);
    auto picks te when installed, else sdpa."""
    compile: bool | Literal["auto"] = "auto"
    """Compile each transformer layer with torch.compile (GPU runs; fuses norms, residuals and activations).
    auto: on where the step runs as a CUDA graph (GPU pre-training with train.cuda_graphs), off elsewhere.
    Measured on one H100 inside CUDA graphs: +7% tokens/s for GPT-350M, +2% for GPT-1.3B; without them
    the per-call overhead made GPT-350M slower (0.77x)."""

    @model_validator(mode="after")
    def _apply_preset(self) -> ModelSpec:
        if self.preset is None or self.preset not in PRESETS:
            return self  # unknown presets are reported by check_rules with the list
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        return self

    @property
    def padded_vocab_size(self) -> int:
        """Vocabulary rounded up to 128 so that layouts agree and kernels align."""
        return int(math.ceil(self.vocab_size / 128) * 128)


class SyntheticData(_Model):
    """Random token sequences for smoke runs; each sample is a function of (seed, index)."""

    num_samples: int = Field(1_000_000, ge=1)
    """How many distinct samples the source holds."""


class IndexedData(_Model):
    """Megatron indexed datasets (`.bin`/`.idx` pairs), blended by weight."""

    paths: list[str] = Field(min_length=1)
    """Dataset path prefixes (without `.bin`/`.idx`)."""
    weights: list[float] | None = None
    """Blend weights, one per path; unset means proportional to size."""
    split: str = "969,30,1"
    """Train/validation/test split of each dataset, as Megatron writes it."""
    eod_id: int = Field(0, ge=0)
    """Token id that ends each document in the `.bin` files."""


class DataSpec(_Model):
    """What the model trains on: exactly one of `synthetic` or `indexed`."""

    synthetic: SyntheticData | None = None
    """Random tokens, for smoke tests and benchmarks."""
    indexed: IndexedData | None = None
    """Megatron indexed datasets made by `llmops prepare` or Megatron's preprocess_data.py."""


class TrainSpec(_Model):
    """The optimisation: steps, batch sizes, learning-rate schedule, precision."""

    steps: int = Field(ge=1)
    """Optimizer steps to train for."""
    global_batch_size: int = Field(ge=1)
    """Sequences per optimizer step, over all data-parallel replicas."""
    micro_batch_size: int = Field(1, ge=1)
    """Sequences per forward pass on one process."""
    lr: float = Field(3e-4, gt=0.0)
    """Peak learning rate."""
    min_lr: float = Field(3e-5, ge=0.0)
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup steps before the cosine decay."""
    weight_decay: float = Field(0.1, ge=0.0)
    """AdamW weight decay."""
    adam_beta1: float = Field(0.9, gt=0.0, lt=1.0)
    adam_beta2: float = Field(0.95, gt=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0)
    """Clip the global gradient norm to this value (0 turns clipping off)."""
    seed: int = 1234
    """Seeds weight initialisation and the data order."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 on GPUs, fp32 on CPUs."""
    log_interval: int = Field(1, ge=1)
    """Print a step line every this many steps."""
    distributed_optimizer: bool = True
    """Shard optimizer state across data-parallel ranks (GPU only; CPU runs use the plain optimizer)."""
    fused_kernels: bool = True
    """Two-pass cross entropy on the bf16 logits; on GPUs also weight gradients accumulated inside
    the GEMM, the MLP's bias + GELU (and its backward) inside cuBLASLt GEMM epilogues, fused AdamW and
    foreach gradient norms (stand-ins for the Apex/Transformer Engine kernels). false gives
    Megatron-Core's own fallbacks."""
    cuda_graphs: bool = True
    """GPU pre-training: after the first step, capture each step's forward and backward passes as one
    CUDA graph and replay it (the optimizer step stays eager). Takes the CPU's kernel launches out of
    the step (+6% tokens/s for GPT-350M on one H100, +14% with the compiled layers it enables; the
    GPU-bound GPT-1.3B gains 2% with them). Steps whose batch shapes differ from the captured one,
    evaluation, alignment stages and pipeline-parallel runs run eagerly; CPU runs ignore it."""
    tensorboard: bool = True
    """Also write scalars to TensorBoard in the run directory."""


class CheckpointSpec(_Model):
    """Sharded checkpoints (Megatron dist_checkpointing) and automatic resume."""

    dir: str | None = None
    """Checkpoint directory; unset means `checkpoints/` inside the run directory."""
    interval: int = Field(100, ge=1)
    """Save every this many steps (and always at the end and on preemption)."""
    keep_last: int = Field(3, ge=1)
    """Keep this many complete checkpoints; older ones are deleted after a save."""
    async_save: bool = False
    """Write checkpoints in the background while training continues (GPU only)."""
    resume: bool = True
    """Resume from the latest complete checkpoint in `dir` when one exists."""


class RestartSpec(_Model):
    """What the backend does when a training process exits early."""

    max_restarts: int = Field(3, ge=0)
    """Restarts after a crash or preemption before the run is marked failed."""


class RunSpec(_Model):
    """A training run: what to train, on what, and how."""

    version: Literal[1] = SPEC_VERSION
    """Run-spec format version."""
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$")
    """Run name: lowercase letters, digits and dashes (it names jobs and directories)."""
    backend: Literal["local", "slurm", "k8s"] = "local"
    """Where the run executes."""
    profile: str | None = None
    """Cluster profile (a name or a path) with the site's network environment and backend settings."""
    resources: Resources = Resources()
    parallelism: Parallelism = Parallelism()
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec(synthetic=SyntheticData())
    prepare: PrepareSpec | None = None
    """The data-preparation stage (raw text to indexed datasets); with train:, it fills data and model.vocab_size."""
    train: TrainSpec | None = None
    """The pre-training stage; leave out for a spec that only prepares data."""
    align: list[AlignSpec] = []
    """Alignment stages (SFT, DPO), after pre-training, in order: one mapping or a list of them. Each starts
    from the checkpoints of the training stage before it unless told otherwise."""
    checkpoint: CheckpointSpec = CheckpointSpec()
    restarts: RestartSpec = RestartSpec()
    k8s: K8sSpec | None = None
    """Kubernetes settings (namespace, image, flavour, queue), read when backend is k8s."""
    slurm: SlurmSpec | None = None
    """Slurm settings (partition, time limit, container, SSH login), read when backend is slurm."""

    @property
    def data_parallel(self) -> int:
        return max(1, self.resources.world_size // (self.parallelism.tensor * self.parallelism.pipeline))

    @property
    def num_microbatches(self) -> int:
        return self.train.global_batch_size // (self.train.micro_batch_size * self.data_parallel)

    @field_validator("align", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else [] if value is None else value

    @property
    def stages(self) -> list[str]:
        """The stages this spec runs, in order: prepare, pretrain, then each align stage by name."""
        head = [name for name, section in (("prepare", self.prepare), ("pretrain", self.train))
                if section is not None]
        return head + [a.stage for a in self.align]

    @property
    def training_stages(self) -> list[str]:
        """The stages that run the model (torchrun jobs): every stage but prepare."""
        return [s for s in self.stages if s != "prepare"]

    def align_stage(self, stage: str) -> AlignSpec:
        """The align section that runs as `stage`."""
        for a in self.align:
            if a.stage == stage:
                return a
        raise KeyError(stage)


def check_rules(spec: RunSpec) -> list[Problem]:
    """The cross-component rules users get wrong, every violation at once."""
    linked = _prepare_rules(spec)  # first: it fills data and model.vocab_size from the prepare stage
    out = _model_rules(spec)
    if out:
        return linked + out  # the remaining rules need a complete model shape
    out += linked + _resource_rules(spec) + _parallel_rules(spec)
    if not spec.stages:
        out.append(Problem("(top level)", None, "names no stage to run", "add a train: or prepare: section"))
    if spec.train is not None:
        out += _train_rules(spec)
    if spec.align:
        out += _align_rules(spec)
    return out + _data_rules(spec) + _k8s_rules(spec)


def _align_rules(spec: RunSpec) -> list[Problem]:
    """Batch sizes against data parallelism, the tokenizer against the model (see llmops.align_spec)."""
    return align_rules(spec)


def _prepare_rules(spec: RunSpec) -> list[Problem]:
    """Make prepare: paths absolute; with train:, train on what prepare writes.

    Unless the spec sets them, data.indexed (the prepared prefix and eod id) and
    model.vocab_size (the tokenizer's) are filled in, so the resolved spec
    names exactly what pretraining reads; values the spec sets must agree.
    """
    if spec.prepare is None:
        return []
    spec.prepare = spec.prepare.model_copy(update=spec.prepare.absolutized())
    if spec.train is None:
        return []
    if spec.prepare.tokenizer is None:
        return [Problem("prepare.tokenizer", None, "is null, so prepare writes no token files for train:",
                        "give a tokenizer: section, or leave train: out of this spec")]
    try:
        facts = spec.prepare.training_facts()
    except UserError as exc:
        reason = getattr(exc, "reason", exc.message)
        return [Problem("prepare.tokenizer.model", spec.prepare.tokenizer.model, reason, exc.fix or "check the file")]
    out: list[Problem] = []
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
    if res.cpu and spec.model.compile is True:
        out.append(Problem("model.compile", True, "is not supported on CPU runs",
                           "leave compile: auto (or set false) for cpu: true"))
    if res.cpu and spec.checkpoint.async_save:
        out.append(Problem("checkpoint.async_save", True, "is not supported on CPU runs",
                           "set async_save: false for cpu: true"))
    return out


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


def _k8s_rules(spec: RunSpec) -> list[Problem]:
    """Pods see only the shared claim at k8s.mount_path: paths the job reads or writes must lie on it."""
    if spec.backend != "k8s":
        return []
    k8s = spec.k8s or K8sSpec()
    out: list[Problem] = []
    if k8s.image is None:
        out.append(Problem("k8s.image", None, "is required for backend: k8s",
                           "build an image from infra/docker/ and set k8s.image: <registry>/<name>:<tag>"))
    root = k8s.mount_path.rstrip("/") + "/"
    paths = [("checkpoint.dir", spec.checkpoint.dir)] if spec.checkpoint.dir else []
    if spec.data.indexed is not None:
        paths += [(f"data.indexed.paths.{i}", p) for i, p in enumerate(spec.data.indexed.paths)]
    if spec.prepare is not None:
        paths += [(f"prepare.input.paths.{i}", p) for i, p in enumerate(spec.prepare.input.paths)]
        paths.append(("prepare.output.dir", spec.prepare.output.dir))
    for where, path in paths:
        if not path.startswith(root):
            out.append(Problem(where, path, f"is not on the shared volume mounted at k8s.mount_path={k8s.mount_path}",
                               f"put it under {root} (pods see nothing else that outlives them)"))
    return out


def _problems_from_validation_error(exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        kind = err["type"]
        if kind == "extra_forbidden":
            parent_loc, key = err["loc"][:-1], err["loc"][-1]
            allowed = _allowed_keys(parent_loc)
            close = difflib.get_close_matches(str(key), allowed, n=1)
            fix = f"did you mean '{close[0]}'?" if close else f"allowed keys here: {', '.join(allowed)}"
            out.append(Problem(path, None, "is not a known field", fix))
        elif kind == "missing":
            out.append(Problem(path, None, "is required", f"add {err['loc'][-1]}: <value>"))
        else:
            out.append(Problem(path, value, err["msg"].rstrip(".").lower(), _fix_for(kind, err)))
    return out


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = RunSpec
    for part in loc:
        if isinstance(part, int):
            continue
        ann = model.model_fields[str(part)].annotation
        for cand in getattr(ann, "__args__", (ann,)):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
    return list(model.model_fields)


def _fix_for(kind: str, err: dict) -> str:
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        return f"use one of {ctx.get('expected')}"
    if kind.startswith(("greater", "less")):
        return "change the value to satisfy the bound"
    if kind == "string_pattern_mismatch":
        return "use lowercase letters, digits and dashes, starting and ending with a letter or digit"
    if kind.endswith("_parsing") or kind.endswith("_type"):
        return "give a value of the type shown in `llmops schema`"
    return "see `llmops schema` for the allowed values"


def parse_spec(data: Any, source: str = "<spec>") -> RunSpec:
    """Validate a mapping as a run spec, raising :class:`SpecError` with every problem."""
    if not isinstance(data, dict):
        raise SpecError(source, [Problem("(top level)", type(data).__name__, "is not a mapping",
                                         "a run spec is a YAML mapping with name:, train:, ...")])
    try:
        spec = RunSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, _problems_from_validation_error(exc)) from None
    problems = check_rules(spec)
    if problems:
        raise SpecError(source, problems)
    return spec


def load_spec(path: str | Path) -> RunSpec:
    """Read and validate a run spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(str(path), [Problem("(file)", str(path), f"cannot be read: {exc.strerror}",
                                            "check the path")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError(str(path), [Problem("(yaml)", where, f"is not valid YAML: {getattr(exc, 'problem', exc)}",
                                            "fix the YAML syntax at that position")]) from None
    return parse_spec(data, str(path))


def dump_spec(spec: RunSpec) -> str:
    """The resolved spec as YAML: every default and preset value written out."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict:
    return RunSpec.model_json_schema()
