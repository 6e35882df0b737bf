"""Runs as the control plane keeps them: the run directory, its status, logs, checkpoints and report.

* :mod:`~llmops.runs.rundir`: the run directory's layout, ``status.json`` and finding a run by id;
* :mod:`~llmops.runs.logs`: following a stage's logs and parsing the trainer's step lines;
* :mod:`~llmops.runs.checkpoints`: listing and verifying checkpoints without Megatron;
* :mod:`~llmops.runs.report`: each stage's figures and the HTML report;
* :mod:`~llmops.runs.evaluations`: the lm-evaluation-harness scores `llmops eval` keeps in a run;
* :mod:`~llmops.runs.charts`: the report's SVG charts (round ticks, human numbers, labels that collide with
  nothing).
"""
