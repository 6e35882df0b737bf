"""The GPU side of llmops: a Megatron-Core GPT, its training loop and checkpoints.

Installed as the import package ``llmops_model`` (the folder is ``model/``).
This is the only code that imports torch and megatron; the control plane in
``llmops`` launches it as ``python -m llmops_model.entrypoint RUN_DIR``.
"""
