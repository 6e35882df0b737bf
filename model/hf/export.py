"""`llmops export --format hf`: a checkpoint of any layout as a Hugging Face model folder.

The folder is written beside its destination under a temporary name and
renamed into place when complete, so `--out` holds a whole export or nothing;
an existing non-empty `--out` is refused, never overwritten. What it holds::

    config.json  generation_config.json          GPT2LMHeadModel or LlamaForCausalLM, no custom code
    model.safetensors                            or model-0000N-of-0000M.safetensors + an index, above 5 GB
    tokenizer.json  tokenizer_config.json        the SentencePiece model as a fast tokenizer, chat template
                                                 (a Hugging Face tokenizer the run used: as it came)
    tokenizer.model                              the SentencePiece model itself, for tools that read it
    llmops-export.json                           which run, stage, step and checkpoint it came from
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from llmops.prepare import pretrained
from llmops.runs import models
from llmops.runs.models import Checkpoint, check_out
from llmops.spec.prepare import EOS_ID
from llmops_model.hf import convert

MAX_SHARD = "5GB"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def default_dtype(ck: Checkpoint) -> str:
    """The precision the weights were trained in."""
    from llmops_model.gpt import param_dtype

    return "fp32" if param_dtype(ck.spec) == torch.float32 else "bf16"


def export(ck: Checkpoint, out: Path, *, dtype: str | None = None,
           info: Callable[[str], None] = print) -> Checkpoint:
    """Write the Hugging Face folder for `ck` at `out`; returns the checkpoint written (a newer one of the same
    stage where a stage still training deleted `ck` meanwhile, see :func:`llmops.runs.models.read`)."""
    convert.family(ck.spec.model)  # refuse what has no transformers architecture before any loading
    check_out(out)
    if ck.tokenizer is None:
        info("no tokenizer: this run trained on synthetic data or its tokenizer file is gone; the folder holds "
             "the model alone (transformers loads it; generation needs a tokenizer)")
    dtype = dtype or default_dtype(ck)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # ours: named by this process
    tmp.mkdir()
    try:
        ck = write(ck, tmp, dtype=DTYPES[dtype], info=info)
        for f in tmp.iterdir():  # safetensors' temporary files are private; the export is as readable as any file
            f.chmod(0o666 & ~_umask())
        if out.exists():
            out.rmdir()  # empty (check_out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ck


def write(ck: Checkpoint, folder: Path, *, dtype: torch.dtype, info: Callable[[str], None]) -> Checkpoint:
    """Every file of the export into `folder`; returns the checkpoint read (`ck`, or the stage's newer one where
    a stage still training deleted `ck` while it was read)."""
    from huggingface_hub import save_torch_state_dict
    from transformers import AutoConfig, GenerationConfig

    from llmops_model.hf import tokenizer, weights

    spec = ck.spec
    folder_of_tokenizer = pretrained.folder(ck.tokenizer)
    if folder_of_tokenizer is not None:  # a Hugging Face tokenizer: as it came, chat template included
        tok = tokenizer.pretrained(folder_of_tokenizer, vocab_size=spec.model.padded_vocab_size,
                                   max_length=spec.model.seq_length)
    else:
        tok = None if ck.tokenizer is None else tokenizer.build(
            Path(ck.tokenizer), vocab_size=spec.model.padded_vocab_size, template=ck.template,
            max_length=spec.model.seq_length)
    started = time.monotonic()

    def load(source: Checkpoint) -> tuple[str, dict[str, torch.Tensor]]:
        layout = _layout(source)
        info(f"loading {source.label} (saved as {layout}) ...")
        return layout, weights.load(spec, source.path)

    ck, (layout, state) = models.read(ck, load, info=info)
    tensors = {k: v.to(dtype) for k, v in convert.to_hf(state, spec.model).items()}
    if folder_of_tokenizer is not None:
        eos_ids = list(dict.fromkeys([tok.eos_token_id, *tokenizer.end_ids(folder_of_tokenizer)]))
        bos, pad = tok.bos_token_id, tok.pad_token_id
    elif tok is not None:
        eos_ids = [tok.eos_token_id] + ([tok.convert_tokens_to_ids(ck.template.end)] if ck.template else [])
        bos, pad = tok.bos_token_id, tok.pad_token_id
    else:
        eos_ids, bos, pad = [EOS_ID], None, None  # llmops's end-of-document id
    cfg = convert.config(spec, eos_ids=eos_ids, bos_id=bos, pad_id=pad, dtype=dtype)
    AutoConfig.for_model(**cfg).save_pretrained(folder)
    GenerationConfig(eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0], bos_token_id=bos,
                     pad_token_id=pad).save_pretrained(folder)
    save_torch_state_dict(tensors, folder, max_shard_size=MAX_SHARD)
    if tok is not None:
        tok.save_pretrained(folder)
        _readable_by_older_transformers(folder / "tokenizer_config.json", tok.chat_template)
        if folder_of_tokenizer is None:
            shutil.copyfile(ck.tokenizer, folder / "tokenizer.model")
    params = sum(t.numel() for t in tensors.values())
    (folder / "llmops-export.json").write_text(json.dumps({
        "run": ck.run.id, "stage": ck.stage, "step": ck.step, "checkpoint": str(ck.path), "layout": layout,
        "architecture": cfg["architectures"][0], "dtype": str(dtype).removeprefix("torch."), "parameters": params,
        "exported_at": time.time()}, indent=1) + "\n")
    info(f"wrote {params / 1e6:.1f}M parameters ({cfg['architectures'][0]}, {str(dtype).removeprefix('torch.')}) "
         f"in {time.monotonic() - started:.1f}s")
    return ck


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _readable_by_older_transformers(path: Path, template: str | None) -> None:
    """transformers 4.x (and the servers built on it) know the fast tokenizer by its old class name and read
    the chat template from tokenizer_config.json; 5.x reads both too."""
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if template is not None:
        config["chat_template"] = template
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _layout(ck: Checkpoint) -> str:
    from llmops.runs.checkpoints import read_manifest

    saved = read_manifest(ck.path).get("layout") or {}
    return "tp{tp}-pp{pp}-dp{dp}".format(**saved) if saved else "an unknown layout"
