"""Data preparation: raw text to cleaned, filtered, deduplicated documents and Megatron indexed datasets.

Start at :mod:`llmops.prepare.pipeline` (the phases and the sharded interface)
and :mod:`llmops.prepare.config` (the ``prepare:`` section of a run spec).
Importing this package loads nothing heavy: numpy, datasketch, sentencepiece
and megatron-core load inside the modules that use them.
"""
