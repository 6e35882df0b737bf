"""llmops: from raw text to an aligned GPT on your own GPU clusters.

The control plane. It imports without torch or megatron; those load only in
``llmops_model``, on the machines that train.
"""

__version__ = "0.1.0"
