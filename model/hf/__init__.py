"""Hugging Face interop: checkpoints of any layout as transformers model folders, tokenizers, generation, and
evaluation with lm-evaluation-harness."""
