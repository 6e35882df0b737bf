"""`llmops generate`: completions from a run's model, a checkpoint or a Hugging Face folder.

Generation is transformers' own (`generate`: a KV cache, greedy or sampled
decoding, stops at the end-of-sequence tokens of generation_config.json). A
checkpoint is exported into a temporary folder first, so the model that
generates is the one `llmops export` writes and the tests check against
llmops's forward. Greedy decoding (temperature 0) is the default: the same
prompt gives the same completion.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmops.errors import UserError
from llmops.runs.models import Checkpoint, HFFolder


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k or None}


@dataclass
class Completion:
    text: str
    tokens: int
    finish_reason: str  # "stop" (an end-of-sequence token) or "length" (max_new_tokens)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA GPU here", "leave --device out (auto) or pass cpu")
    return torch.device(name)


@contextlib.contextmanager
def opened(source: Checkpoint | HFFolder, *, device: torch.device, compile: bool = False,
           info: Callable[[str], None] = print) -> Iterator[Generator]:
    """The model and tokenizer of `source` on `device` (bf16 on GPUs, fp32 on CPUs)."""
    if isinstance(source, HFFolder):  # checked by load
        yield Generator.load(source.path, device=device, compile=compile)
        return
    from llmops_model.hf import folder as hf_folder

    hf_folder.check_source(source)  # a tokenizer, before the export
    from llmops_model.hf import export

    with tempfile.TemporaryDirectory(prefix="llmops-generate-") as folder:
        export.write(source, Path(folder), dtype=torch.float32, info=info)
        yield Generator.load(Path(folder), device=device, compile=compile)


class Generator:
    """A transformers causal LM and its tokenizer."""

    def __init__(self, model, tokenizer, device: torch.device):
        self.model, self.tok, self.device = model, tokenizer, device

    @classmethod
    def load(cls, folder: Path, *, device: torch.device, compile: bool = False) -> Generator:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging

        from llmops_model.hf import folder as hf_folder

        hf_folder.check(folder)
        logging.disable_progress_bar()
        fix = "pass a folder that `llmops export` or transformers' save_pretrained wrote"
        try:  # never the folder's own code; anything else that fails to load is the folder's fault too
            tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            model, loading = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, trust_remote_code=False,
                output_loading_info=True)
        except Exception as exc:  # noqa: BLE001
            said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"{folder} cannot be loaded as a transformers model: {said}", fix) from None
        missing, mismatched = loading.get("missing_keys") or [], loading.get("mismatched_keys") or []
        if missing or mismatched:  # transformers would fill them with random numbers
            wrong = sorted(missing) + sorted(str(m[0] if isinstance(m, tuple) else m) for m in mismatched)
            raise UserError(f"{folder}: its weights do not fit its config.json: {len(missing)} tensor(s) missing, "
                            f"{len(mismatched)} of another shape ({', '.join(wrong[:3])}"
                            f"{', ...' if len(wrong) > 3 else ''})", "use the config.json saved with these weights")
        if not tok.get_vocab():
            raise UserError(f"{folder}: its tokenizer is empty", "add the tokenizer the model was trained with")
        hf_folder.check_vocabulary(folder, len(tok), model.get_input_embeddings().num_embeddings)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"  # a batch's prompts end together, where generation starts
        model = model.to(device).eval()
        if compile and device.type == "cuda":
            # A static KV cache, with which transformers' generate compiles the decoding step into CUDA graphs:
            # a slow first call, then far less launch overhead per token.
            model.generation_config.cache_implementation = "static"
        return cls(model, tok, device)

    @property
    def has_chat(self) -> bool:
        return bool(getattr(self.tok, "chat_template", None))

    def encode(self, prompt: str | list[dict[str, str]]) -> list[int]:
        """Token ids of a plain prompt, or of a conversation (a list of messages) ready for the answer."""
        if isinstance(prompt, str):
            return self.tok(prompt, add_special_tokens=False)["input_ids"]
        if not self.has_chat:
            raise UserError("this model's tokenizer has no chat template, so it cannot be given a conversation",
                            "use a model from an align (SFT or DPO) stage, or plain --prompt text")
        from jinja2 import TemplateError

        try:
            return self.tok.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False)
        except TemplateError as exc:  # the template's own refusal, such as a role it does not know
            raise UserError(f"the model's chat template refused the conversation: {exc}",
                            "give the messages roles the model knows (llmops models: system, user, assistant)"
                            ) from None

    @property
    def context(self) -> int | None:
        """The most tokens a sequence may hold: GPT-2's learned positions end there; None for RoPE models."""
        return getattr(self.model.config, "n_positions", None)

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """UserError unless a prompt of `prompt_tokens` and `max_new_tokens` fit the model's context."""
        context = self.context
        if context is not None and prompt_tokens + max_new_tokens > context:
            raise UserError(f"the prompt ({prompt_tokens} tokens) and --max-new-tokens {max_new_tokens} exceed "
                            f"the model's context of {context} tokens",
                            f"shorten the prompt or pass --max-new-tokens {context - prompt_tokens} or less"
                            if prompt_tokens < context else f"shorten the prompt to fewer than {context} tokens")

    @torch.no_grad()
    def complete(self, prompts: list[list[int]], sampling: Sampling,
                 on_text: Callable[[str], None] | None = None) -> list[Completion]:
        """Completions of a batch of encoded prompts; `on_text` streams the text of a batch of one."""
        from transformers import set_seed

        if not all(prompts):
            raise UserError("a prompt is empty: it encodes to no tokens", "give every prompt some text")
        width = max(len(p) for p in prompts)
        self.check_fits(width, sampling.max_new_tokens)
        set_seed(sampling.seed)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        stops = set(_as_list(self.model.generation_config.eos_token_id))
        streamer = _Stream(self.tok, prompts[0], on_text, stops) if on_text is not None and len(prompts) == 1 \
            else None
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_new_tokens,
                                  streamer=streamer, pad_token_id=pad, **sampling.kwargs())
        done = []
        for prompt, row in zip(prompts, out[:, width:].tolist(), strict=True):
            cut = next((i for i, t in enumerate(row) if t in stops), None)
            kept = row if cut is None else row[:cut]
            done.append(Completion(continuation(self.tok, prompt, kept), len(kept),
                                   "length" if cut is None else "stop"))
        return done


def continuation(tok, prompt: list[int], new: list[int]) -> str:
    """The text `new` adds after `prompt`: the decoded whole less the decoded prompt. Decoding `new` alone
    loses what depends on its place: a SentencePiece tokenizer (Metaspace) drops the space that begins the
    first token of a text, so "Return the" + "▁call" would read "Return thecall"."""
    before = tok.decode(prompt, skip_special_tokens=True)
    whole = tok.decode(prompt + new, skip_special_tokens=True)
    return whole[len(before):] if whole.startswith(before) else tok.decode(new, skip_special_tokens=True)


def _as_list(x) -> list[int]:
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]


class _Stream:
    """transformers' streamer protocol (`put` the prompt's ids, then each new token's; `end`): the text of
    :func:`continuation` as it grows, held back to the last space or line end, where a word may still change
    (a character split over byte tokens, a word split over pieces)."""

    def __init__(self, tok, prompt: list[int], on_text: Callable[[str], None], stops: set[int]):
        self.tok, self.on_text, self.stops = tok, on_text, stops
        self.prompt, self.new = prompt, None  # None until generate has put the prompt, which it does first
        self.shown = 0  # characters of the continuation already given to on_text
        self.stopped = False

    def put(self, value) -> None:
        if self.new is None:  # the prompt, which generate puts first
            self.new = []
            return
        if self.stopped:
            return
        ids = value.reshape(-1).tolist()
        cut = next((i for i, t in enumerate(ids) if t in self.stops), None)
        if cut is not None:  # what the completion keeps (Generator.complete)
            ids, self.stopped = ids[:cut], True
        self.new += ids
        text = continuation(self.tok, self.prompt, self.new)
        upto = max(text.rfind(" "), text.rfind("\n")) + 1
        if upto > self.shown:
            self.on_text(text[self.shown:upto])
            self.shown = upto

    def end(self) -> None:
        text = continuation(self.tok, self.prompt, self.new or [])
        if len(text) > self.shown:
            self.on_text(text[self.shown:])
        self.shown = len(text)


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """The lines of a prompts file: {"prompt": text} or {"messages": [{"role", "content"}, ...]}; other keys are
    kept and written back with the completion."""
    rows = []
    try:
        # Lines end at "\n" only: JSON text may hold U+2028 or U+0085, which str.splitlines() splits at
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--prompts {path}: cannot be read ({exc})", "pass a UTF-8 JSONL file") from None
    example = '{"prompt": "def add(a, b):"} or {"messages": [{"role": "user", "content": "Hi"}]}'
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise UserError(f"--prompts {path}:{n}: not JSON ({exc})", "one JSON object per line") from None
        problem = _prompt_problem(row)
        if problem:
            raise UserError(f"--prompts {path}:{n}: {problem}", f"write e.g. {example}")
        rows.append(row)
    if not rows:
        raise UserError(f"--prompts {path}: holds no prompts", "add one JSON object per line")
    return rows


def _prompt_problem(row: Any) -> str | None:
    if not isinstance(row, dict) or ("prompt" in row) == ("messages" in row):
        return 'needs "prompt" (text) or "messages" (a list of {"role", "content"}), one of them'
    if "prompt" in row:
        return None if isinstance(row["prompt"], str) and row["prompt"] else '"prompt" is not a non-empty text'
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return '"messages" is not a non-empty list'
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            return f'message {i} is not {{"role": text, "content": text}}'
    return None


def run_batch(gen: Generator, rows: list[dict[str, Any]], sampling: Sampling, *, batch_size: int,
              out: Path, info: Callable[[str], None]) -> None:
    """Complete every row, `batch_size` at a time, into `out` (JSONL, written whole at the end)."""
    encoded = []
    for i, r in enumerate(rows, 1):
        try:
            encoded.append(gen.encode(r["messages"] if "messages" in r else r["prompt"]))
        except UserError as exc:
            raise UserError(f"prompt {i} of the file: {exc.message}", exc.fix) from None
    lines, started, tokens = [], time.monotonic(), 0
    for start in range(0, len(rows), batch_size):
        for row, c in zip(rows[start:start + batch_size],
                          gen.complete(encoded[start:start + batch_size], sampling), strict=True):
            tokens += c.tokens
            lines.append(json.dumps({**row, "completion": c.text, "tokens": c.tokens,
                                     "finish_reason": c.finish_reason}, ensure_ascii=False))
        info(f"{min(start + batch_size, len(rows))}/{len(rows)} prompts")
    from llmops.runs.rundir import atomic_write

    atomic_write(out, "\n".join(lines) + "\n")
    took = time.monotonic() - started
    info(f"{len(rows)} completions, {tokens} tokens in {took:.1f}s ({tokens / took:.1f} tokens/s) -> {out}")
