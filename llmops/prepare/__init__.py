"""Data preparation: raw text to cleaned, filtered, deduplicated documents and Megatron indexed datasets.

The engine: :mod:`.pipeline` (the phases and the shard-i-of-N interface the backends fan out),
:mod:`.executor` (every phase on this machine), :mod:`.phases` (their bodies), :mod:`.workdir` (plan,
intermediate files, completion markers), :mod:`.store`, :mod:`.sources`, :mod:`.tokenizer`,
:mod:`.finalize`, :mod:`.progress` and :mod:`.stats`. What is done to each document lives in
:mod:`.steps`; the ``prepare:`` section of the run spec in :mod:`llmops.spec.prepare`.
:mod:`.align_corpus` generates the built-in alignment examples. Importing this package loads nothing
heavy: numpy, datasketch, sentencepiece and megatron-core load inside the modules that use them.
"""
