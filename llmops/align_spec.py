"""The `align:` section of a run spec: supervised fine-tuning or DPO after pre-training.

One small pydantic model per concern, ``extra="forbid"``, field docstrings
that become the JSON Schema descriptions. This module must not import
:mod:`llmops.spec` (the spec imports it): :func:`align_rules` reads the run
spec it is given by duck typing, and ``llmops.spec._align_rules`` calls it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmops.errors import Problem, UserError
from llmops.prepare.config import DEFAULT_SPECIAL_TOKENS, absolute_path

if TYPE_CHECKING:  # annotations only: importing llmops.spec here would be circular
    from llmops.spec import RunSpec


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class AlignData(_Model):
    """The examples: a JSONL file, or a set generated from the standard library's docstrings."""

    path: str | None = None
    """JSONL, one example a line. SFT: {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
    or {"prompt": ..., "response": ...}. DPO: {"prompt": ..., "chosen": ..., "rejected": ...}, each a string
    or a list of messages."""
    builtin: Literal["python-docstrings"] | None = None
    """Generate the examples instead: questions about this Python's standard library, answered with its
    docstrings (DPO: the right docstring is chosen, another one rejected). Deterministic; no download."""
    builtin_examples: int = Field(512, ge=8)
    """How many examples the built-in set holds."""
    valid_fraction: float = Field(0.05, ge=0.0, lt=0.5)
    """Share of the examples held out (seeded shuffle) for the validation loss; 0 turns validation off."""

    @model_validator(mode="after")
    def _one_source(self) -> AlignData:
        if (self.path is None) == (self.builtin is None):
            raise ValueError("give exactly one of align.data.path (a JSONL file) or "
                             "align.data.builtin: python-docstrings")
        return self


class BadData(_Model):
    """What happens to examples that cannot be used. Every one is counted and quarantined, never fatal alone."""

    too_long: Literal["truncate", "drop"] = "truncate"
    """Examples longer than model.seq_length: truncate (SFT keeps the start; DPO cuts the prompt from the
    left, then the responses) or drop. An example with no response token left is dropped either way."""
    max_fraction: float = Field(0.1, ge=0.0, le=1.0)
    """Stop before training, with the counts, when more than this share of lines is quarantined."""


class ChatTokens(_Model):
    """The chat template's markers: control tokens of the tokenizer (text never encodes to them)."""

    system: str = DEFAULT_SPECIAL_TOKENS[0]
    user: str = DEFAULT_SPECIAL_TOKENS[1]
    assistant: str = DEFAULT_SPECIAL_TOKENS[2]
    end: str = DEFAULT_SPECIAL_TOKENS[3]
    """Ends every message; the model learns to emit it after an answer, so generation can stop there."""

    def tokens(self) -> dict[str, str]:
        return {"system": self.system, "user": self.user, "assistant": self.assistant, "end": self.end}


class SFTOptions(_Model):
    """Supervised fine-tuning: next-token loss on the assistant's tokens only."""

    packing: bool = True
    """Pack several conversations into each sequence with a block-diagonal causal attention mask (no
    conversation sees another); false pads each conversation to a sequence of its own."""


class DPOOptions(_Model):
    """Direct Preference Optimization (Rafailov et al., 2023) against the frozen starting model."""

    beta: float = Field(0.1, gt=0.0)
    """Strength of the implicit KL penalty: rewards are beta x (policy - reference) log-probabilities."""
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    """sigmoid: the DPO loss; ipo: the IPO loss (Azar et al., 2023) on per-token average log-probabilities."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """Assumed share of flipped preference labels (conservative DPO); sigmoid loss only."""

    @model_validator(mode="after")
    def _smoothing_is_sigmoid(self) -> DPOOptions:
        if self.label_smoothing and self.loss != "sigmoid":
            raise ValueError("align.dpo.label_smoothing applies to loss: sigmoid only; set it to 0 for ipo")
        return self


class AlignSpec(_Model):
    """The alignment stage: SFT or DPO on the pre-trained GPT, with its own checkpoints and auto-resume."""

    method: Literal["sft", "dpo"]
    """sft: supervised fine-tuning on conversations; dpo: preference optimization on chosen/rejected pairs."""
    name: str | None = Field(None, pattern=r"^[a-z]([a-z0-9-]{0,14}[a-z0-9])?$")
    """The stage's name in logs, status and job names (at most 16 lowercase letters, digits, dashes); unset:
    the method (sft, dpo). Two stages of one method need names of their own."""
    data: AlignData
    tokenizer: str | None = None
    """SentencePiece model the examples are tokenized with; unset: the prepare stage's tokenizer.model."""
    start_from: str | None = None
    """Checkpoint to start from (a checkpoint folder, or a root whose newest complete one is used; any
    TP/PP layout). Unset: the checkpoints of the training stage before this one (the previous align stage's,
    else the pretrain stage's: checkpoint.dir, or checkpoints/ in the run)."""
    checkpoint_dir: str | None = None
    """Where this stage saves and resumes; unset: checkpoints-<stage>/ in the run directory."""
    steps: int = Field(ge=1)
    """Optimizer steps."""
    global_batch_size: int = Field(ge=1)
    """Per step, over all data-parallel replicas: sequences for SFT (packed ones when packing), pairs for DPO."""
    micro_batch_size: int = Field(1, ge=1)
    """Sequences (SFT) or pairs (DPO; both responses of a pair travel in the same micro-batch) per forward."""
    lr: float = Field(1e-5, gt=0.0)
    """Peak learning rate."""
    min_lr: float = Field(0.0, ge=0.0)
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, ge=0.0)
    """Clip the global gradient norm to this value (0 turns clipping off)."""
    seed: int = 1234
    """Seeds the data order and the train/validation split."""
    log_interval: int = Field(1, ge=1)
    eval_interval: int | None = Field(None, ge=1)
    """Evaluate on the held-out examples every this many steps; always at the end."""
    sft: SFTOptions = SFTOptions()
    dpo: DPOOptions = DPOOptions()
    bad_data: BadData = BadData()
    template: ChatTokens = ChatTokens()

    @property
    def stage(self) -> str:
        """The stage's name: `name`, else the method."""
        return self.name or self.method

    def train_fields(self) -> dict[str, object]:
        """The optimisation settings, named as the pretrain stage's `train:` names them."""
        return {k: getattr(self, k) for k in ("steps", "global_batch_size", "micro_batch_size", "lr", "min_lr",
                                              "warmup_steps", "weight_decay", "grad_clip", "seed", "log_interval")}

    def absolutized(self) -> dict[str, object]:
        """Field updates that make every path absolute, so every process and host reads the same files."""
        updates: dict[str, object] = {k: absolute_path(v) for k in ("tokenizer", "start_from", "checkpoint_dir")
                                      if (v := getattr(self, k)) is not None}
        if self.data.path is not None:
            updates["data"] = self.data.model_copy(update={"path": absolute_path(self.data.path)})
        return updates


def align_rules(spec: RunSpec) -> list[Problem]:
    """The rules that tie each `align:` stage to the rest of the spec. Fills in tokenizers from `prepare:`."""
    out = _name_rules(spec)
    for i, a in enumerate(list(spec.align)):
        where = "align" if len(spec.align) == 1 else f"align.{i}"
        a = a.model_copy(update=a.absolutized())
        problems = _batch_rules(spec, a) + (_start_rules(spec) if i == 0 else [])
        prepared = (os.path.join(spec.prepare.output.dir, "tokenizer.model")
                    if spec.prepare is not None and spec.prepare.tokenizer is not None else None)
        if prepared is not None and a.tokenizer in (None, prepared):  # written by this run's prepare stage
            a = a.model_copy(update={"tokenizer": prepared})
            problems += _prepared_tokenizer_rules(spec, a)
        elif a.tokenizer is None:
            problems.append(Problem("align.tokenizer", None, "is unset and no prepare: stage writes a tokenizer",
                                    "set align.tokenizer to the tokenizer.model the model was pre-trained with"))
        elif os.path.exists(a.tokenizer):
            problems += _tokenizer_file_rules(spec, a, a.tokenizer)
        elif spec.backend == "local":
            problems.append(Problem("align.tokenizer", a.tokenizer, "does not exist", "check the path"))
        if a.data.path is not None and spec.backend == "local" and not os.path.isfile(a.data.path):
            problems.append(Problem("align.data.path", a.data.path, "is not a file",
                                    "check the path (relative paths start from the folder you run llmops in)"))
        spec.align[i] = a
        problems += _k8s_path_rules(spec, a)
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
        return _tokenizer_file_rules(spec, a, tok.model) if os.path.exists(tok.model) else []
    missing = [t for t in template.values() if t not in tok.special_tokens]
    if missing:
        return [Problem("prepare.tokenizer.special_tokens", tok.special_tokens,
                        f"does not reserve the chat template's {', '.join(missing)}",
                        "add them, or set align.template to tokens the tokenizer reserves")]
    return _vocab_rule(spec, tok.vocab_size)


def _tokenizer_file_rules(spec: RunSpec, a: AlignSpec, path: str) -> list[Problem]:
    from llmops.prepare.tokenizer import read_model_facts

    try:
        facts = read_model_facts(path)
    except UserError as exc:
        return [Problem("align.tokenizer", path, getattr(exc, "reason", exc.message), exc.fix or "check the file")]
    out = _vocab_rule(spec, facts.vocab_size)
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


def _k8s_path_rules(spec: RunSpec, a: AlignSpec) -> list[Problem]:
    """Pods see only the shared claim: the files this stage reads and writes must lie on it."""
    from llmops.backends.k8s_spec import K8sSpec

    if spec.backend != "k8s":
        return []
    mount = (spec.k8s or K8sSpec()).mount_path
    root = mount.rstrip("/") + "/"
    paths = [("align.data.path", a.data.path), ("align.tokenizer", a.tokenizer),
             ("align.start_from", a.start_from), ("align.checkpoint_dir", a.checkpoint_dir)]
    return [Problem(where, path, f"is not on the shared volume mounted at k8s.mount_path={mount}",
                    f"put it under {root}") for where, path in paths if path is not None and not path.startswith(root)]


def checkpoint_root(spec: RunSpec, stage: str, run_dir: os.PathLike | str) -> str:
    """Where training stage `stage` saves and resumes (pretrain or an align stage's name)."""
    if stage == "pretrain":
        return spec.checkpoint.dir or os.path.join(run_dir, "checkpoints")
    a = spec.align_stage(stage)
    return a.checkpoint_dir or os.path.join(run_dir, f"checkpoints-{a.stage}")


def start_root(spec: RunSpec, stage: str, run_dir: os.PathLike | str) -> str:
    """What align stage `stage` starts from: its start_from, else the previous training stage's checkpoints."""
    a = spec.align_stage(stage)
    if a.start_from is not None:
        return a.start_from
    order = spec.training_stages
    before = order[order.index(stage) - 1] if order.index(stage) > 0 else "pretrain"
    return checkpoint_root(spec, before, run_dir)
