"""What is done to documents, one step a module (after datatrove's pipeline steps).

:mod:`.base` (the step shape), :mod:`.readers`, :mod:`.cleaners`, :mod:`.filters`, :mod:`.minhash`,
:mod:`.dedup` (the global reduce) and :mod:`.writer`. The engine that runs them is :mod:`llmops.prepare`.
"""
