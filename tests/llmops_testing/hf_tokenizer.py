"""A Hugging Face tokenizer folder shaped like Llama 3's, built offline: a byte-level BPE `tokenizer.json`
trained by the tokenizers library on the given texts, Llama 3's special tokens, and a chat template of
Llama 3's form (header markers, the text trimmed, `<|eot_id|>` closing each turn). No tokenizer.model: the
folder is what `hf:DIR` users bring from Llama 3, Qwen or Mistral Nemo.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

# Ids 1 and 2 are bos and eos, as in the tests' transformers configs (bos_token_id=1, eos_token_id=2).
SPECIALS = ["<|reserved_special_token_0|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]
TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def llama3_style(folder: Path, texts: Iterable[str], *, vocab_size: int, template: str | None = TEMPLATE) -> Path:
    """Write tokenizer.json, tokenizer_config.json (and nothing else) into `folder`; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
              "eos_token": "<|end_of_text|>", "model_max_length": 131072, "clean_up_tokenization_spaces": True}
    if template is not None:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder
