"""Evaluations of a run's checkpoints (`llmops eval`): lm-evaluation-harness results kept in the run directory.

Each is lm-eval's results JSON as lm-eval made it (without the per-question samples), plus an ``llmops`` key
saying which checkpoint was evaluated, on which tasks and with which settings, in
``<run>/evals/<stage>-step<N>-<YYYYmmdd-HHMMSS>.json``. Read here without torch: the report lists them.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops.runs.rundir import RunDir, atomic_write, number

FOLDER = "evals"


@dataclass(frozen=True)
class Score:
    """One metric of one task, as lm-eval's results table shows it."""

    task: str
    metric: str
    value: float | None
    stderr: float | None
    shots: int | None
    questions: int | None  # how many it was computed on (fewer than the task holds with --limit)


@dataclass(frozen=True)
class Evaluation:
    path: Path
    stage: str | None
    step: int | None
    evaluated_at: float | None
    limit: int | None
    scores: list[Score]


def scores(results: dict[str, Any]) -> list[Score]:
    """Every task's metrics, in lm-eval's order (its keys are ``<metric>,<filter>``; a filter other than
    lm-eval's default ``none`` is named in the metric)."""
    out = []
    shots, counts = results.get("n-shot", {}), results.get("n-samples", {})
    for task, row in results.get("results", {}).items():
        for key, value in row.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or _number(value) is None:
                continue
            effective = (counts.get(task) or {}).get("effective")
            out.append(Score(task=task, metric=metric if filt == "none" else f"{metric} ({filt})",
                             value=float(value), stderr=_number(row.get(f"{metric}_stderr,{filt}")),
                             shots=_int(shots.get(task)), questions=_int(effective)))
    return out


def metrics(results: dict[str, Any]) -> dict[str, float]:
    """The scores as tracker metrics, `<task>/<metric>` (without their standard errors)."""
    return {f"{s.task}/{s.metric}": s.value for s in scores(results) if s.value is not None}


def _number(v: Any) -> float | None:
    return float(v) if number(v) else None


def _when(v: Any) -> float | None:
    """A time as the clock gives it (seconds since 1970, before the year 2242), or None."""
    t = _number(v)
    return t if t is not None and 0 < t < 2**33 else None


def _int(v: Any) -> int | None:
    return int(v) if number(v) else None


def save(run: RunDir, results: dict[str, Any]) -> Path:
    """Write `results` (with its ``llmops`` key) into the run's evals folder, whole or not at all."""
    meta = results["llmops"]
    folder = run.path / FOLDER
    folder.mkdir(exist_ok=True)
    stem = f"{meta['stage']}-step{meta['step']}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(meta['evaluated_at']))}"
    path, n = folder / f"{stem}.json", 1
    while path.exists():  # two evaluations in one second
        n += 1
        path = folder / f"{stem}-{n}.json"
    atomic_write(path, json.dumps(results, indent=1) + "\n")
    return path


def listed(run: RunDir) -> list[Evaluation]:
    """The run's evaluations, oldest first; a file that is not one (or no longer reads) is left out."""
    out = []
    for path in sorted((run.path / FOLDER).glob("*.json")):
        try:
            results = json.loads(path.read_text())
            meta = results.get("llmops") or {}
            out.append(Evaluation(path=path, stage=meta.get("stage"), step=_int(meta.get("step")),
                                  evaluated_at=_when(meta.get("evaluated_at")), limit=_int(meta.get("limit")),
                                  scores=scores(results)))
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return sorted(out, key=lambda e: (e.evaluated_at or 0.0, e.path.name))


def html_section(found: list[Evaluation]) -> str:
    """The report's "Evaluations" section: one row per task and metric of each evaluation, oldest first."""
    if not found:
        return ""
    e, left = html.escape, ' style="text-align:left"'
    rows = []
    for ev in found:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(ev.evaluated_at)) if ev.evaluated_at else "-"
        model = f"{ev.stage} step {ev.step:,}" if ev.step is not None else (ev.stage or "-")
        for s in ev.scores:
            n = "-" if s.questions is None else f"{s.questions:,}" + (" (--limit)" if ev.limit else "")
            stderr = "-" if s.stderr is None else f"&plusmn; {s.stderr:.4f}"
            cells = [e(s.task), e(model), e(s.metric), f"{s.value:.4f}", stderr, n,
                     "-" if s.shots is None else str(s.shots), e(when), e(ev.path.name)]
            rows.append("<tr>" + "".join(f"<td{left if i in (2, 8) else ''}>{c}</td>" for i, c in enumerate(cells))
                        + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in ("task", "checkpoint", "metric", "value", "stderr", "questions", "shots",
                                             "evaluated", "file"))
    return ("<section><h2>Evaluations</h2><p>lm-evaluation-harness scores of the run's checkpoints "
            "(<code>llmops eval</code>; the JSON files are in the run's <code>evals/</code> folder). A score "
            "computed with <code>--limit</code> is from the first questions only.</p>"
            f"<div class=scroll><table><tr>{head}</tr>{''.join(rows)}</table></div></section>")
