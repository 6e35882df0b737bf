"""Named model shapes.

A preset fills every architectural field of :class:`llmops.spec.ModelSpec`;
fields written explicitly in a run spec override the preset's. The GPT sizes
follow the GPT-3 paper's table (Brown et al., 2020), with a 50,257-token
vocabulary padded to a multiple of 128 at build time. The Llama shapes are
those of Meta's published config.json files (Llama 3.2 1B and 3B, Llama 3.1
8B and 70B): training one from scratch gives a model of that shape, and
starting from the published weights (`model.init_from: hf:DIR`) needs no
preset at all, since the folder's config.json gives the shape.
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

_LLAMA3 = dict(normalization="RMSNorm", position_embedding="rope", activation="swiglu", vocab_size=128256,
               norm_epsilon=1e-5, rope_base=500000, seq_length=8192)
PRESETS |= {
    "llama-3.2-1b": dict(_LLAMA3, num_layers=16, hidden_size=2048, num_attention_heads=32, num_query_groups=8,
                         ffn_hidden_size=8192, tie_embeddings=True, rope_scaling_factor=32.0),
    "llama-3.2-3b": dict(_LLAMA3, num_layers=28, hidden_size=3072, num_attention_heads=24, num_query_groups=8,
                         ffn_hidden_size=8192, tie_embeddings=True, rope_scaling_factor=32.0),
    "llama-3.1-8b": dict(_LLAMA3, num_layers=32, hidden_size=4096, num_attention_heads=32, num_query_groups=8,
                         ffn_hidden_size=14336, rope_scaling_factor=8.0),
    "llama-3.1-70b": dict(_LLAMA3, num_layers=80, hidden_size=8192, num_attention_heads=64, num_query_groups=8,
                          ffn_hidden_size=28672, rope_scaling_factor=8.0),
}


def preset_names() -> list[str]:
    return list(PRESETS)
