"""The `align:` section of a run spec: supervised fine-tuning or DPO after pre-training.

One small model per concern, field docstrings that become the JSON Schema
descriptions. The rules that tie each align stage to the rest of the spec
(batch sizes, tokenizers, where it starts) live in :mod:`llmops.spec.rules`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmops.spec.base import SpecModel, absolute_path
from llmops.spec.hf import tokenizer_reference
from llmops.spec.prepare import DEFAULT_SPECIAL_TOKENS


class AlignData(SpecModel):
    """The examples: a JSONL file, or a set generated from the standard library's docstrings."""

    path: str | None = None
    """JSONL, one example a line. SFT: {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
    or {"prompt": ..., "response": ...}. DPO: {"prompt": ..., "chosen": ..., "rejected": ...}, each a string
    or a list of messages."""
    builtin: Literal["python-docstrings"] | None = None
    """Generate the examples instead: questions about this Python's standard library, answered with its
    docstrings (DPO: the right docstring is chosen, another one rejected). Deterministic; no download."""
    builtin_examples: int = Field(512, ge=8, le=10**7)
    """How many examples the built-in set holds."""
    valid_fraction: float = Field(0.05, ge=0.0, lt=0.5)
    """Share of the examples held out (seeded shuffle) for the validation loss; 0 turns validation off."""

    @model_validator(mode="after")
    def _one_source(self) -> AlignData:
        if (self.path is None) == (self.builtin is None):
            raise ValueError("give exactly one of align.data.path (a JSONL file) or "
                             "align.data.builtin: python-docstrings")
        return self


class BadData(SpecModel):
    """What happens to examples that cannot be used. Every one is counted and quarantined, never fatal alone."""

    too_long: Literal["truncate", "drop"] = "truncate"
    """Examples longer than model.seq_length: truncate (SFT keeps the start; DPO cuts the prompt from the
    left, then the responses) or drop. An example with no response token left is dropped either way."""
    max_fraction: float = Field(0.1, ge=0.0, le=1.0)
    """Stop before training, with the counts, when more than this share of lines is quarantined."""


class ChatTokens(SpecModel):
    """The chat template's markers: control tokens of the tokenizer (text never encodes to them)."""

    system: str = DEFAULT_SPECIAL_TOKENS[0]
    user: str = DEFAULT_SPECIAL_TOKENS[1]
    assistant: str = DEFAULT_SPECIAL_TOKENS[2]
    end: str = DEFAULT_SPECIAL_TOKENS[3]
    """Ends every message; the model learns to emit it after an answer, so generation can stop there."""

    def tokens(self) -> dict[str, str]:
        return {"system": self.system, "user": self.user, "assistant": self.assistant, "end": self.end}

    @model_validator(mode="after")
    def _distinct(self) -> ChatTokens:
        seen: dict[str, str] = {}
        for role, piece in self.tokens().items():
            if piece in seen:
                raise ValueError(f"{seen[piece]} and {role} are both {piece!r}: the model could not tell the turns "
                                 "apart; give each marker a control token of its own")
            seen[piece] = role
        return self


class SFTOptions(SpecModel):
    """Supervised fine-tuning: next-token loss on the assistant's tokens only."""

    packing: bool = True
    """Pack several conversations into each sequence with a block-diagonal causal attention mask (no
    conversation sees another); false pads each conversation to a sequence of its own."""


class DPOOptions(SpecModel):
    """Direct Preference Optimization (Rafailov et al., 2023) against the frozen starting model."""

    beta: float = Field(0.1, gt=0.0, le=1e4)
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


class AlignSpec(SpecModel):
    """The alignment stage: SFT or DPO on the pre-trained GPT, with its own checkpoints and auto-resume."""

    method: Literal["sft", "dpo"]
    """sft: supervised fine-tuning on conversations; dpo: preference optimization on chosen/rejected pairs."""
    name: str | None = Field(None, pattern=r"^[a-z]([a-z0-9-]{0,14}[a-z0-9])?$")
    """The stage's name in logs, status and job names (at most 16 lowercase letters, digits, dashes); unset:
    the method (sft, dpo). Two stages of one method need names of their own."""
    data: AlignData
    tokenizer: str | None = None
    """The tokenizer the examples are tokenized with: a SentencePiece .model file, or a Hugging Face tokenizer
    folder, `hf:DIR` (its tokenizer.json and chat template, e.g. Llama 3's). Unset: the one beside
    `start_from: hf:DIR`, else the prepare stage's."""
    start_from: str | None = None
    """Checkpoint to start from (a checkpoint folder, or a root whose newest complete one is used; any
    TP/PP layout), or a Hugging Face model folder, `hf:DIR`, whose config.json fills model: (docs/models.md).
    Unset: the checkpoints of the training stage before this one (the previous align stage's, else the
    pretrain stage's: checkpoint.dir, or checkpoints/ in the run)."""
    checkpoint_dir: str | None = None
    """Where this stage saves and resumes; unset: checkpoints-<stage>/ in the run directory."""
    steps: int = Field(ge=1, le=10**9)
    """Optimizer steps."""
    global_batch_size: int = Field(ge=1, le=10**8)
    """Per step, over all data-parallel replicas: sequences for SFT (packed ones when packing), pairs for DPO."""
    micro_batch_size: int = Field(1, ge=1, le=10**6)
    """Sequences (SFT) or pairs (DPO; both responses of a pair travel in the same micro-batch) per forward."""
    lr: float = Field(1e-5, gt=0.0, le=10.0)
    """Peak learning rate."""
    min_lr: float = Field(0.0, ge=0.0, le=10.0)
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = Field(0, ge=0, le=10**9)
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)
    grad_clip: float = Field(1.0, ge=0.0, le=1e6)
    """Clip the global gradient norm to this value (0 turns clipping off)."""
    seed: int = Field(1234, ge=0, le=2**32 - 1)
    """Seeds the data order and the train/validation split."""
    log_interval: int = Field(1, ge=1, le=10**9)
    eval_interval: int | None = Field(None, ge=1, le=10**9)
    """Evaluate on the held-out examples every this many steps; always at the end."""
    precision: Literal["auto", "bf16", "fp32", "fp8"] | None = None
    """As train.precision; unset: the pretrain stage's train.precision (auto without one)."""
    fp8_recipe: Literal["auto", "delayed", "tensorwise", "blockwise", "mxfp8"] | None = None
    """As train.fp8_recipe; unset: the pretrain stage's."""
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
        fields = {k: getattr(self, k) for k in ("steps", "global_batch_size", "micro_batch_size", "lr", "min_lr",
                                                "warmup_steps", "weight_decay", "grad_clip", "seed", "log_interval")}
        return fields | {k: v for k in ("precision", "fp8_recipe") if (v := getattr(self, k)) is not None}

    def absolutized(self) -> dict[str, object]:
        """Field updates that make every path absolute, so every process and host reads the same files."""
        updates: dict[str, object] = {k: absolute_path(v) for k in ("start_from", "checkpoint_dir")
                                      if (v := getattr(self, k)) is not None and not v.startswith("hf:")}
        if self.tokenizer is not None:
            updates["tokenizer"] = tokenizer_reference(self.tokenizer)
        if self.data.path is not None:
            updates["data"] = self.data.model_copy(update={"path": absolute_path(self.data.path)})
        return updates
