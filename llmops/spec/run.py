"""The run spec's top level: :class:`RunSpec` and one small model per component.

Each component is a :class:`~llmops.spec.base.SpecModel` (``extra="forbid"``,
so that a misspelt key is an error, not a silently ignored setting). Field
docstrings become the JSON Schema descriptions (``llmops schema``) that
editors show. Per-field checks live on the fields; the rules that span
components live in :mod:`llmops.spec.rules`, and :mod:`llmops.spec.load`
runs both.
"""

from __future__ import annotations

import importlib.util
import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from llmops import shell
from llmops.backends.k8s.spec import K8sSpec
from llmops.backends.slurm.spec import SlurmSpec
from llmops.spec.align import AlignSpec
from llmops.spec.base import SpecModel
from llmops.spec.prepare import PrepareSpec
from llmops.spec.presets import PRESETS

SPEC_VERSION = 1


class Resources(SpecModel):
    """Where the processes run: nodes, and GPUs or CPU processes on each."""

    nodes: int = Field(1, ge=1, le=100_000)
    """Number of nodes (one torchrun agent per node)."""
    gpus_per_node: int | None = Field(None, ge=1, le=64)
    """GPUs per node; one training process per GPU. Leave unset with `cpu: true`."""
    cpu: bool = False
    """Train on CPUs over gloo instead of GPUs over NCCL (laptops, CI)."""
    processes_per_node: int | None = Field(None, ge=1, le=1024)
    """Training processes per node in CPU mode."""

    @property
    def procs_per_node(self) -> int:
        if self.cpu:
            return self.processes_per_node or 1
        return self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


class Parallelism(SpecModel):
    """How the model is split. Data parallelism is what remains of the world size."""

    tensor: int = Field(1, ge=1, le=1024)
    """Tensor-parallel size: each layer's matrices are split across this many processes."""
    pipeline: int = Field(1, ge=1, le=1024)
    """Pipeline-parallel size: the layers are split into this many stages."""
    sequence_parallel: bool = False
    """Shard layer-norm and dropout activations along the sequence (needs tensor > 1)."""


class ModelSpec(SpecModel):
    """The GPT's shape. A `preset` fills every field; explicit fields override it."""

    preset: str | None = "tiny"
    """Named shape: tiny, gpt-125m, gpt-350m, gpt-760m, gpt-1.3b, gpt-2.7b, gpt-6.7b, gpt-13b, llama-3.2-1b,
    llama-3.2-3b, llama-3.1-8b, llama-3.1-70b."""
    num_layers: int | None = Field(None, ge=1, le=10_000)
    """Transformer layers."""
    hidden_size: int | None = Field(None, ge=1, le=1_000_000)
    """Model width."""
    num_attention_heads: int | None = Field(None, ge=1, le=100_000)
    """Attention heads."""
    num_query_groups: int | None = Field(None, ge=1, le=100_000)
    """Key/value heads for grouped-query attention; unset means one per attention head."""
    ffn_hidden_size: int | None = Field(None, ge=1, le=10_000_000)
    """Width of the MLP's hidden layer."""
    seq_length: int | None = Field(None, ge=8, le=10_000_000)
    """Tokens per training sequence."""
    vocab_size: int | None = Field(None, ge=8, le=100_000_000)
    """Tokenizer vocabulary size (padded to a multiple of 128 when the model is built)."""
    normalization: Literal["LayerNorm", "RMSNorm"] = "LayerNorm"
    """Normalization layer."""
    position_embedding: Literal["learned_absolute", "rope"] = "learned_absolute"
    """Position encoding."""
    activation: Literal["gelu", "swiglu"] = "gelu"
    """MLP activation; swiglu gates the MLP (its ffn_hidden_size is the gated width)."""
    tie_embeddings: bool = False
    """Share the input embedding with the output layer."""
    norm_epsilon: float = Field(1e-5, gt=0.0, le=0.1)
    """Epsilon of the normalization layers (Llama 2 and 3 use 1e-5, Qwen2 1e-6)."""
    rope_base: int = Field(10000, ge=1, le=10**9)
    """RoPE base frequency (rope_theta): 10000 in Llama 2, 500000 in Llama 3."""
    rope_scaling_factor: float | None = Field(None, gt=1.0, le=1024.0)
    """Llama 3.1's RoPE scaling for long contexts (8 in Llama 3.1 and 3.2); unset is plain RoPE."""
    qkv_bias: bool = False
    """A bias on the query/key/value projection even where the linears have none (Qwen2); GPT-style models
    have biases everywhere regardless."""
    init_from: str | None = None
    """Start pre-training from a Hugging Face model folder, `hf:DIR` (continued pre-training): its config.json
    fills this section's shape fields and its weights are loaded at step 0 (docs/models.md)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Hidden and attention dropout probability."""
    init_std: float = Field(0.02, gt=0.0, le=10.0)
    """Standard deviation of the normal weight initialisation."""
    attention: Literal["auto", "te", "sdpa", "megatron"] = "auto"
    """The layers: te (Transformer Engine's fused layers), sdpa (Megatron-Core's with fused torch attention and
    this project's GPU fast path), megatron (unfused reference). auto: te for train.precision fp8 (FP8 GEMMs
    are TE's), sdpa otherwise, TE installed or not: on one H200 the fast path ran GPT-1.3B at 67.1k tokens/s
    against 63.4k with TE's bf16 layers, the Llama-style 1B at 68.2k against 68.1k."""
    compile: bool | Literal["auto"] = "auto"
    """Compile each transformer layer with torch.compile (GPU runs; fuses norms, residuals and activations).
    auto: on where the step runs as a CUDA graph (GPU pre-training with train.cuda_graphs), off elsewhere.
    Measured on one H100 inside CUDA graphs: +7% tokens/s for GPT-350M, +2% for GPT-1.3B; without them
    the per-call overhead made GPT-350M slower (0.77x)."""

    @model_validator(mode="after")
    def _apply_preset(self) -> ModelSpec:
        if self.preset is None or self.preset not in PRESETS:
            return self  # unknown presets are reported by llmops.spec.rules with the list
        for key, value in PRESETS[self.preset].items():
            if key not in self.model_fields_set:  # what the spec writes wins, defaults give way
                object.__setattr__(self, key, value)
        return self

    @property
    def padded_vocab_size(self) -> int:
        """Vocabulary rounded up to 128 so that layouts agree and kernels align."""
        return int(math.ceil(self.vocab_size / 128) * 128)


class SyntheticData(SpecModel):
    """Random token sequences for smoke runs; each sample is a function of (seed, index)."""

    num_samples: int = Field(1_000_000, ge=1, le=10**15)
    """How many distinct samples the source holds."""


class IndexedData(SpecModel):
    """Megatron indexed datasets (`.bin`/`.idx` pairs), blended by weight."""

    paths: list[str] = Field(min_length=1)
    """Dataset path prefixes (without `.bin`/`.idx`)."""
    weights: list[float] | None = None
    """Blend weights, one per path; unset means proportional to size."""
    split: str = "969,30,1"
    """Train/validation/test split of each dataset, as Megatron writes it."""
    eod_id: int = Field(0, ge=0, le=100_000_000)
    """Token id that ends each document in the `.bin` files."""


class DataSpec(SpecModel):
    """What the model trains on: exactly one of `synthetic` or `indexed`."""

    synthetic: SyntheticData | None = None
    """Random tokens, for smoke tests and benchmarks."""
    indexed: IndexedData | None = None
    """Megatron indexed datasets made by `llmops prepare` or Megatron's preprocess_data.py."""


class TrainSpec(SpecModel):
    """The optimisation: steps, batch sizes, learning-rate schedule, precision."""

    steps: int = Field(ge=1, le=10**9)
    """Optimizer steps to train for."""
    global_batch_size: int = Field(ge=1, le=10**8)
    """Sequences per optimizer step, over all data-parallel replicas."""
    micro_batch_size: int = Field(1, ge=1, le=10**6)
    """Sequences per forward pass on one process."""
    lr: float = Field(3e-4, gt=0.0, le=10.0)
    """Peak learning rate."""
    min_lr: float = Field(3e-5, ge=0.0, le=10.0)
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = Field(0, ge=0, le=10**9)
    """Linear warmup steps before the cosine decay."""
    weight_decay: float = Field(0.1, ge=0.0, le=10.0)
    """AdamW weight decay."""
    adam_beta1: float = Field(0.9, gt=0.0, lt=1.0)
    adam_beta2: float = Field(0.95, gt=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0, le=1e6)
    """Clip the global gradient norm to this value (0 turns clipping off)."""
    seed: int = Field(1234, ge=0, le=2**32 - 1)
    """Seeds weight initialisation and the data order."""
    precision: Literal["auto", "bf16", "fp32", "fp8"] = "auto"
    """auto: bf16 on GPUs, fp32 on CPUs. fp8: the transformer layers' GEMMs in FP8 through Transformer Engine
    (Hopper, Ada or Blackwell GPUs; weights, norms, attention and the optimizer stay bf16/fp32, so checkpoints
    resume across precisions); its steps replay from a CUDA graph (train.cuda_graphs) except with the delayed
    recipe, and its layers are TE's own fused ones (model.compile auto leaves them uncompiled)."""
    fp8_recipe: Literal["auto", "delayed", "tensorwise", "blockwise", "mxfp8"] = "auto"
    """How FP8 scales are chosen (train.precision fp8 only): delayed (from a history of amaxes), tensorwise
    (the current tensor's amax), blockwise (128-wide blocks, Hopper), mxfp8 (32-element blocks, Blackwell).
    auto: mxfp8 on Blackwell, else the fastest on Hopper (llmops_model.fp8 says what was measured)."""
    log_interval: int = Field(1, ge=1, le=10**9)
    """Print a step line every this many steps."""
    eval_interval: int | None = Field(None, ge=0, le=10**9)
    """Measure the loss on held-out data every this many steps and at the last step (data.indexed's
    validation split, or for synthetic data a held-out stream of the same chain); 0 turns it off. Unset: a
    tenth of train.steps, rounded up, at most 1000 (a curve of about ten points on a short run), or 0 when
    data.indexed.split gives validation no share."""
    eval_iters: int | None = Field(None, ge=1, le=10**6)
    """Micro-batches of held-out sequences (train.micro_batch_size each) per evaluation, split over the
    data-parallel ranks; the same sequences every time, so the curve follows the model, not the sample.
    Unset: one global batch's worth (global_batch_size / micro_batch_size), so an evaluation costs about a
    third of a training step."""
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


class CheckpointSpec(SpecModel):
    """Sharded checkpoints (Megatron dist_checkpointing) and automatic resume."""

    dir: str | None = None
    """Checkpoint directory; unset means `checkpoints/` inside the run directory."""
    interval: int = Field(100, ge=1, le=10**9)
    """Save every this many steps (and always at the end and on preemption)."""
    keep_last: int = Field(3, ge=1, le=10_000)
    """Keep this many complete checkpoints; older ones are deleted after a save."""
    async_save: bool = False
    """Write checkpoints in the background while training continues (GPU only)."""
    resume: bool = True
    """Resume from the latest complete checkpoint in `dir` when one exists."""


class RestartSpec(SpecModel):
    """What the backend does when a training process exits early."""

    max_restarts: int = Field(3, ge=0, le=10_000)
    """Restarts after a crash, a hang or a preemption before the run is marked failed."""
    hang_timeout: float | None = Field(None, ge=1.0, le=7 * 86400.0)
    """Seconds without progress from any rank of a node after which the job counts as hung: every rank's
    stacks go to the log and the stage restarts from its latest checkpoint. Unset: the larger of 5 minutes,
    10 x the slowest step and 3 x the slowest checkpoint save seen in the attempt."""
    collective_timeout: float = Field(1800.0, ge=10.0, le=7 * 86400.0)
    """Seconds a collective may wait before torch.distributed fails it (the process-group timeout): the
    backstop for a hang the watchdog cannot see, such as one while joining the process group. Also how long a
    pre-training start-up may be silent before the watchdog calls it hung (the hang timeout, if longer)."""


class SecretSource(SpecModel):
    """Where a secret's value is read when the run is submitted (and again when it is resumed)."""

    env: str | None = None
    """The variable of your environment that holds it; unset: the variable of the secret's own name."""
    file: str | None = None
    """A file that holds it instead (its content; a trailing newline is dropped)."""

    @model_validator(mode="after")
    def _one_source(self) -> SecretSource:
        if self.env is not None and self.file is not None:
            raise ValueError("give env or file, not both")
        if self.env is not None:
            shell.check_env_key(self.env, "secrets.env")
        return self


TRACKING_INSTALL = "pip install 'llmops[tracking]'"
"""How to get the trackers' client libraries (mlflow-skinny, wandb); named wherever one is missing."""


class MLflowTracking(SpecModel):
    """An MLflow tracking server (or file store) that receives the run's metrics, spec and files."""

    uri: str = Field(min_length=1, max_length=2000)
    """Tracking URI: http(s)://host:port of a tracking server, or file:///path of a store on a file system the
    jobs share. Credentials are never part of it: the jobs read MLFLOW_TRACKING_TOKEN (or MLFLOW_TRACKING_USERNAME
    and MLFLOW_TRACKING_PASSWORD) from their environment; name them under `secrets:`."""
    experiment: str | None = Field(None, min_length=1, max_length=500)
    """Experiment the run is logged under; unset: the run's name."""

    @field_validator("uri")
    @classmethod
    def _tracking_uri(cls, value: str) -> str:
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("holds spaces or control characters")
        if "?" in value or "#" in value:  # the client adds its API's path after the URI: a query or page breaks it
            raise ValueError("has a ?query or #fragment, as the address of a page of the MLflow UI does: give the "
                             "tracking server's address alone, e.g. http://host:5000")
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.hostname:
            if parts.username is not None or parts.password is not None:
                raise ValueError("holds credentials, which would land in spec.yaml and the logs: give the URI "
                                 "without user:password@, and the credentials under secrets: (docs/tracking.md)")
            try:
                port = parts.port  # raises on a port that is not a number from 0 to 65535
            except ValueError:
                port = 0
            if port == 0:
                raise ValueError("has a port that is not a number from 1 to 65535")
            return value
        if parts.scheme == "file" and parts.path.startswith("/"):
            return value
        raise ValueError("is not an http(s)://host[:port] URI of a tracking server or a file:///absolute/path "
                         "of a file store")


class WandbTracking(SpecModel):
    """A Weights & Biases project that receives the run's metrics, spec and files."""

    project: str
    """W&B project: letters, digits, dots, dashes and underscores."""
    entity: str | None = None
    """W&B team or user that owns the project; unset: the API key's default entity."""
    mode: Literal["online", "offline"] = "online"
    """online sends as the run goes (the key comes from $WANDB_API_KEY: name it under `secrets:`); offline
    writes the run under the run directory's wandb/ folder, for `wandb sync` later."""

    @field_validator("project", "entity")
    @classmethod
    def _wandb_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value):
            raise ValueError("is not a W&B name: use 1 to 128 letters, digits, dots, dashes and underscores, "
                             "starting with a letter or digit")
        return value


class TrackingSpec(SpecModel):
    """Experiment tracking: each training stage's metrics, the resolved spec and the stage's files, sent from the
    logging rank to MLflow and/or W&B (docs/tracking.md). A tracker that is down never holds up or fails training:
    what it misses is buffered, retried and reported in the stage's events."""

    mlflow: MLflowTracking | None = None
    """Send to MLflow: `{uri: http://host:5000}`."""
    wandb: WandbTracking | None = None
    """Send to Weights & Biases: `{project: my-project}`."""

    @model_validator(mode="after")
    def _some_tracker(self) -> TrackingSpec:
        if self.mlflow is None and self.wandb is None:
            raise ValueError("names no tracker: give mlflow: {uri: ...} and/or wandb: {project: ...}, "
                             "or leave tracking: out")
        return self

    def missing_libraries(self) -> list[str]:
        """The trackers this asks for whose client library cannot be imported here (found without importing)."""
        asked = [name for name in ("mlflow", "wandb") if getattr(self, name) is not None]
        return [name for name in asked if importlib.util.find_spec(name) is None]


DEFAULT_SAMPLE_PROMPTS = ("Return the", "The following example shows how to", "What does this function do?")


# Seconds the end-of-stage samples may take where something outside ends the process later, in the environment
# of a multi-node Slurm stage (llmops_model.hf.samples): the other nodes' torchrun agents leave their exit
# barrier after 300 s, and srun's --wait=60 then ends node 0's task, which a stage's success must not depend on.
SAMPLES_DEADLINE_ENV = "LLMOPS_SAMPLES_DEADLINE"
SAMPLES_DEADLINE_S = 240


class SamplesSpec(SpecModel):
    """Completions of a few fixed prompts, written at the end of every training stage and shown in the report,
    so the model can be watched changing from stage to stage (needs transformers: the `hf` extra)."""

    enabled: bool = True
    prompts: list[Annotated[str, Field(min_length=1, max_length=2000)]] = Field(
        default_factory=lambda: list(DEFAULT_SAMPLE_PROMPTS), min_length=1, max_length=16)
    """Plain text for the pretrain stage; the user's message, through the chat template, for align stages."""
    max_new_tokens: int = Field(32, ge=1, le=512)
    """Longest completion, in tokens (greedy decoding)."""
    max_parameters: int = Field(15_000_000_000, ge=0)
    """Larger models are not sampled at the end of a stage (one process exports and loads the whole model, on
    rank 0's GPU or CPU); `llmops generate` still samples them."""


class RunSpec(SpecModel):
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
    secrets: dict[str, SecretSource] = {}
    """Environment variables the jobs need but no file may hold (tokens, keys), by name: `{HF_TOKEN: {}}` reads
    $HF_TOKEN of the submitter, `{KEY: {file: ~/.key}}` a file. Read at submit and resume and handed to the jobs
    as a Kubernetes Secret or a mode-0600 file in the run directory: never in spec.yaml, a script, a ConfigMap
    or a log. A list of names is short for reading each from the variable of that name."""
    tracking: TrackingSpec | None = None
    """Send metrics, the resolved spec and the report to MLflow and/or Weights & Biases (docs/tracking.md)."""
    samples: SamplesSpec = SamplesSpec()
    """Completions of fixed prompts at the end of every training stage, in the report (docs/models.md)."""

    @field_validator("secrets", mode="before")
    @classmethod
    def _secret_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = {name: {} for name in value}
        for name in value if isinstance(value, dict) else []:
            shell.check_env_key(str(name), "secret name")
        return value

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
