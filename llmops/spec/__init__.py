"""The run spec: one YAML file that describes a run.

* :mod:`~llmops.spec.run`: the top-level :class:`~llmops.spec.run.RunSpec` and its small per-component models;
* :mod:`~llmops.spec.prepare` and :mod:`~llmops.spec.align`: the ``prepare:`` and ``align:`` sections;
* :mod:`~llmops.spec.presets`: named model shapes;
* :mod:`~llmops.spec.rules`: the rules that span components, each problem with its field path and fix;
* :mod:`~llmops.spec.load`: YAML in, validated and resolved spec out (and the resolved spec back in).

A backend's own section (``slurm:``, ``k8s:``) is typed by that backend, in ``llmops/backends/<name>/spec.py``.
"""
