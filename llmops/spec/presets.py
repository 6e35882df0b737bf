"""Named model shapes.

A preset fills every architectural field of :class:`llmops.spec.ModelSpec`;
fields written explicitly in a run spec override the preset's. The GPT sizes
follow the GPT-3 paper's table (Brown et al., 2020), with a 50,257-token
vocabulary padded to a multiple of 128 at build time.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # A model small enough to train with TP=2 x PP=2 on two CPU cores in seconds.
    "tiny": dict(
        num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256,
        seq_length=64, vocab_size=512,
    ),
    "gpt-125m": dict(
        num_layers=12, hidden_size=768, num_attention_heads=12, ffn_hidden_size=3072,
        seq_length=2048, vocab_size=50257,
    ),
    "gpt-350m": dict(
        num_layers=24, hidden_size=1024, num_attention_heads=16, ffn_hidden_size=4096,
        seq_length=2048, vocab_size=50257,
    ),
    "gpt-760m": dict(
        num_layers=24, hidden_size=1536, num_attention_heads=16, ffn_hidden_size=6144,
        seq_length=2048, vocab_size=50257,
    ),
    "gpt-1.3b": dict(
        num_layers=24, hidden_size=2048, num_attention_heads=16, ffn_hidden_size=8192,
        seq_length=2048, vocab_size=50257,
    ),
    "gpt-2.7b": dict(
        num_layers=32, hidden_size=2560, num_attention_heads=32, ffn_hidden_size=10240,
        seq_length=2048, vocab_size=50257,
    ),
    "gpt-6.7b": dict(
        num_layers=32, hidden_size=4096, num_attention_heads=32, ffn_hidden_size=16384,
        seq_length=2048, vocab_size=50257,
    ),
    "gpt-13b": dict(
        num_layers=40, hidden_size=5120, num_attention_heads=40, ffn_hidden_size=20480,
        seq_length=2048, vocab_size=50257,
    ),
}


def preset_names() -> list[str]:
    return list(PRESETS)
