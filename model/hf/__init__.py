"""Hugging Face interop: checkpoints of any layout as transformers model folders, tokenizers, and generation."""
