"""The run report: each stage's loss curve, throughput, restarts and where the time went.

Built from what every backend leaves in the run directory (``status.json``
and, per stage, ``metrics.jsonl``, ``events.jsonl`` and ``eval.jsonl``), so
it works the same for local, Slurm and Kubernetes runs. :func:`summarize`
gives the figures; :func:`render_html` one self-contained HTML page with
inline SVG charts (no plotting library, nothing fetched when it is opened).

Time of a stage, per attempt (restart):

* queue: from the stage becoming ready (the run's submission, or the end of
  the stage before) to its first process starting, and between attempts
  from the end of one to the start of the next (detection, requeue, queueing);
* start-up: process start to the first training step (imports, rendezvous,
  model build, data, checkpoint load);
* training: the steps, less what checkpoint saves stalled them;
* checkpointing: the time saves held training up;
* lost work: steps run and then run again after a restart (they had not been
  checkpointed), counted in steps and in their seconds.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.runs.rundir import RunDir

REPORT = "report.html"


@dataclass
class Attempt:
    restart: int
    started: float | None = None  # process start
    first_step_at: float | None = None  # the first step began
    last_at: float | None = None  # the last thing it logged
    first_step: int | None = None
    last_step: int | None = None
    resumed_from: int | None = None
    exit_code: int | None = None
    saves: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


@dataclass
class PrepareSummary:
    name: str
    state: str
    restarts: int
    seconds: float | None


@dataclass
class StageSummary:
    name: str
    state: str
    restarts: int
    steps: int | None
    rows: list[dict]  # the latest row of each step
    evals: list[dict]
    attempts: list[Attempt]
    time: dict[str, float]  # queue, startup, training, checkpointing, lost
    lost_steps: int
    resume_seconds: list[float]  # per restart: the previous attempt's last sign of life to the first new step
    tokens_per_s: float | None  # median over the logged steps

    @property
    def final_loss(self) -> float | None:
        return self.rows[-1]["loss"] if self.rows else None


def _jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut off by a kill mid-write
    return out


def _attempts(rows: list[dict], events: list[dict]) -> list[Attempt]:
    by: dict[int, Attempt] = {}
    for e in events:
        a = by.setdefault(e.get("restart", 0), Attempt(e.get("restart", 0)))
        a.last_at = max(a.last_at or 0.0, e["time"])
        if e["event"] == "start":
            a.started = e.get("process_started", e["time"])
        elif e["event"] == "resumed":
            a.resumed_from = e["step"]
        elif e["event"] == "save":
            a.saves.append(e)
        elif e["event"] == "exit":
            a.exit_code = e.get("code")
    for r in rows:
        a = by.setdefault(r.get("restart", 0), Attempt(r.get("restart", 0)))
        a.rows.append(r)
        began = r["time"] - r.get("step_time", 0.0)
        if a.first_step_at is None or began < a.first_step_at:
            a.first_step_at, a.first_step = began, r["step"]
        a.last_at = max(a.last_at or 0.0, r["time"])
        a.last_step = max(a.last_step or 0, r["step"])
    return [by[k] for k in sorted(by)]


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def summarize_stage(run: RunDir, name: str, record: dict, ready_at: float | None) -> StageSummary:
    folder = run.stage_dir(name)
    raw = _jsonl(folder / "metrics.jsonl")
    latest: dict[int, dict] = {}
    for r in raw:
        latest[r["step"]] = r
    rows = [latest[s] for s in sorted(latest)]
    attempts = _attempts(raw, _jsonl(folder / "events.jsonl"))
    t = dict.fromkeys(("queue", "startup", "training", "checkpointing", "lost"), 0.0)
    lost_steps, resume_seconds = 0, []
    previous: Attempt | None = None
    for a in attempts:
        ready = ready_at if previous is None else previous.last_at
        if a.started is not None and ready is not None:
            t["queue"] += max(0.0, a.started - ready)
        if a.started is not None and a.first_step_at is not None:
            t["startup"] += max(0.0, a.first_step_at - a.started)
        stall = sum(s.get("stall", 0.0) for s in a.saves)
        t["checkpointing"] += stall
        if a.first_step_at is not None and a.last_at is not None:
            t["training"] += max(0.0, a.last_at - a.first_step_at - stall)
        if previous is not None and a.first_step is not None:
            redone = [r for r in previous.rows if r["step"] >= a.first_step]
            lost_steps += len({r["step"] for r in redone})
            t["lost"] += sum(r.get("step_time", 0.0) for r in redone)
            if previous.last_at is not None and a.first_step_at is not None:
                first_row = min(a.rows, key=lambda r: r["time"])
                resume_seconds.append(first_row["time"] - previous.last_at)
        previous = a
    t["training"] = max(0.0, t["training"] - t["lost"])
    return StageSummary(
        name=name, state=record.get("state", "PENDING"), restarts=record.get("restarts", max(0, len(attempts) - 1)),
        steps=rows[-1].get("steps") if rows else None, rows=rows, evals=_jsonl(folder / "eval.jsonl"),
        attempts=attempts, time=t, lost_steps=lost_steps, resume_seconds=resume_seconds,
        tokens_per_s=_median([r.get("tokens_per_s") for r in rows]),
    )


def summarize(run: RunDir) -> dict[str, Any]:
    """Every stage's summary and the run's totals."""
    spec, status = run.read_spec(), run.read_status()
    stages = []
    ready = status.started_at or status.submitted_at
    for name in spec.stages:
        record = status.stages.get(name, {})
        if name == "prepare":
            stages.append(PrepareSummary(name, record.get("state", "PENDING"), record.get("restarts", 0),
                                         _span(record)))
        else:
            stages.append(summarize_stage(run, name, record, record.get("started_at") or ready))
        ready = record.get("ended_at") or ready
    end = status.ended_at or time.time()
    return {"run": run.id, "state": status.state, "backend": status.backend, "message": status.message,
            "wall": end - (status.started_at or status.submitted_at), "stages": stages}


def _span(record: dict) -> float | None:
    if record.get("started_at") and record.get("ended_at"):
        return record["ended_at"] - record["started_at"]
    return None


# ---- HTML ------------------------------------------------------------------------------------------

_COLOURS = {"queue": "#9aa5b1", "startup": "#f0b429", "training": "#2f80ed", "checkpointing": "#27ae60",
            "lost": "#eb5757"}


def _svg_lines(series: list[tuple[str, list[tuple[float, float]]]], *, width: int = 560, height: int = 220,
               marks: list[float] = (), y_label: str = "") -> str:
    """A line chart of (x, y) series with optional vertical marks (restarts)."""
    points = [p for _, pts in series for p in pts]
    if not points:
        return "<p><em>no logged steps</em></p>"
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    pad = 40

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad + (y - y0) / (y1 - y0) * (2 * pad - height)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>',
             f'<text x="{pad}" y="{height - pad + 14}">{x0:g}</text>',
             f'<text x="{width - pad}" y="{height - pad + 14}" text-anchor="end">step {x1:g}</text>',
             f'<text x="{pad - 4}" y="{height - pad}" text-anchor="end">{y0:.3g}</text>',
             f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end">{y1:.3g}</text>',
             f'<text x="{pad}" y="{pad - 8}">{html.escape(y_label)}</text>']
    for m in marks:
        parts.append(f'<line x1="{sx(m):.1f}" y1="{pad}" x2="{sx(m):.1f}" y2="{height - pad}" '
                     f'stroke="#eb5757" stroke-dasharray="4 3"><title>restart at step {m:g}</title></line>')
    for i, (label, pts) in enumerate(series):
        colour = ("#2f80ed", "#f2994a", "#27ae60", "#9b51e0")[i % 4]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{path}"/>')
        parts.append(f'<text x="{width - pad}" y="{pad + 14 * i}" text-anchor="end" fill="{colour}">'
                     f'{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _time_bar(t: dict[str, float], width: int = 560) -> str:
    total = sum(t.values())
    if total <= 0:
        return ""
    x, parts = 0.0, [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="22">']
    for key, value in t.items():
        w = value / total * width
        parts.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="22" fill="{_COLOURS[key]}">'
                     f'<title>{key}: {value:.1f} s</title></rect>')
        x += w
    parts.append("</svg>")
    legend = " ".join(f'<span style="color:{_COLOURS[k]}">&#9632;</span> {k} {v:.1f} s' for k, v in t.items())
    return "".join(parts) + f"<div class=legend>{legend}</div>"


def render_html(summary: dict[str, Any]) -> str:
    e = html.escape
    out = ["<!doctype html><meta charset=utf-8>",
           f"<title>llmops run {e(summary['run'])}</title>",
           "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
           "table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right}th{border-bottom:1px solid #aaa}"
           "td:first-child,th:first-child{text-align:left}.legend{font-size:12px;margin:4px 0 16px}</style>",
           f"<h1>{e(summary['run'])}</h1>",
           f"<p><b>{e(summary['state'])}</b> on {e(summary['backend'])} in {summary['wall']:.0f} s. "
           f"{e(summary['message'] or '')}</p>",
           "<table><tr><th>stage</th><th>state</th><th>steps</th><th>final loss</th><th>tokens/s</th>"
           "<th>restarts</th><th>lost steps</th><th>resume (s)</th></tr>"]
    for s in summary["stages"]:
        if isinstance(s, PrepareSummary):
            secs = f"{s.seconds:.1f} s" if s.seconds is not None else "-"
            out.append(f"<tr><td>{e(s.name)}</td><td>{e(s.state)}</td><td colspan=3>data preparation, "
                       f"{secs}</td><td>{s.restarts}</td><td>-</td><td>-</td></tr>")
            continue
        steps = f"{s.rows[-1]['step']}/{s.steps}" if s.rows else "-"
        loss = f"{s.final_loss:.4f}" if s.final_loss is not None else "-"
        tps = f"{s.tokens_per_s:,.0f}" if s.tokens_per_s else "-"
        resume = ", ".join(f"{x:.1f}" for x in s.resume_seconds) or "-"
        out.append(f"<tr><td>{e(s.name)}</td><td>{e(s.state)}</td><td>{steps}</td><td>{loss}</td><td>{tps}</td>"
                   f"<td>{s.restarts}</td><td>{s.lost_steps}</td><td>{resume}</td></tr>")
    out.append("</table>")
    for s in summary["stages"]:
        if isinstance(s, PrepareSummary):
            continue
        out.append(f"<h2>{e(s.name)}</h2>")
        marks = [a.first_step for a in s.attempts[1:] if a.first_step is not None]
        series = [("train loss", [(r["step"], r["loss"]) for r in s.rows if r.get("loss") == r.get("loss")])]
        if s.evals:
            series.append(("held-out loss", [(r["step"], r["loss"]) for r in s.evals]))
        out.append(_svg_lines(series, marks=marks, y_label="loss"))
        if any("accuracy" in r for r in s.rows):
            out.append(_svg_lines([("preference accuracy", [(r["step"], r["accuracy"]) for r in s.rows]),
                                   ("margin", [(r["step"], r["margin"]) for r in s.rows])], y_label="DPO"))
        out.append(_svg_lines([("tokens/s", [(r["step"], r["tokens_per_s"]) for r in s.rows])], marks=marks,
                              y_label="throughput"))
        out.append("<h3>where the time went</h3>" + _time_bar(s.time))
    return "\n".join(out) + "\n"


def write(run: RunDir, path: Path | None = None) -> Path:
    """Write the report (default: report.html in the run directory); returns its path."""
    path = path or run.path / REPORT
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_html(summarize(run)))
    tmp.replace(path)
    return path
