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

The page shows, per stage, its figures in one line, one line per metrics
tracker (``"event": "tracking"`` rows of ``events.jsonl``), and one chart per
unit: loss, throughput and, for DPO, preference accuracy and reward margin,
train and held-out (``eval.jsonl``, dashed with markers) on the same axes,
restarts marked on the step axis with the steps they lost shaded. The charts
are drawn by :mod:`llmops.runs.charts`.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from llmops.errors import EXIT_REQUEUE, UserError
from llmops.files import atomic_write
from llmops.runs import evaluations
from llmops.runs.charts import Mark, Series, duration, human, line_chart, time_bar
from llmops.runs.rundir import RunDir, jsonl_rows, number, step_row

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
    hung: bool = False  # the launcher's watchdog stopped it (a "hung" event)
    saves: list[dict] = field(default_factory=list)
    first_row_at: float | None = None  # the time its first step was logged
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # its logged steps, in order
    step_times: np.ndarray = field(default_factory=lambda: np.zeros(0))  # and their seconds


# The per-step figures the report reads from metrics.jsonl; the rest of a row (lr, grad norm, ...) is left unread.
CURVES = ("loss", "tokens_per_s", "accuracy", "margin", "steps")


@dataclass
class Steps:
    """The latest row of each logged step (a step run again after a restart: its later row), as columns in step
    order: a long run logs hundreds of thousands of steps, which as dicts took gigabytes."""
    step: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    values: dict[str, np.ndarray] = field(default_factory=dict)  # CURVES -> float64, NaN where a row lacks it
    diverged_at: int | None = None  # the first step whose loss the trainer logged as NaN or infinite

    def __len__(self) -> int:
        return len(self.step)

    @property
    def last(self) -> int | None:
        return int(self.step[-1]) if len(self.step) else None

    def final(self, key: str) -> float | None:
        """The last step's value (NaN where that row lacks it), None with no step logged."""
        return float(self.values[key][-1]) if len(self.step) else None

    def has(self, key: str) -> bool:
        return bool(len(self.step)) and bool(np.isfinite(self.values[key]).any())

    def points(self, key: str) -> list[tuple[float, float]]:
        """(step, value) of every step with a finite value."""
        v = self.values[key]
        keep = np.isfinite(v)
        return list(zip(self.step[keep].tolist(), v[keep].tolist(), strict=True))


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
    rows: Steps  # the latest row of each step
    evals: list[dict]
    attempts: list[Attempt]
    time: dict[str, float]  # queue, startup, training, checkpointing, lost
    lost_steps: int
    resume_seconds: list[float]  # per restart: the previous attempt's last sign of life to the first new step
    tokens_per_s: float | None  # median over the logged steps
    tracking: list[dict] = field(default_factory=list)  # the stage's "tracking" events (metrics trackers)
    samples: list[dict] = field(default_factory=list)  # completions of the spec's sample prompts at the stage's end
    stragglers: list[dict] = field(default_factory=list)  # the stage's "straggler" events (slow ranks, named)

    @property
    def final_loss(self) -> float | None:
        return self.rows.final("loss")


def _jsonl(path: Path, valid: Callable[[Any], bool]) -> list[dict]:
    """The rows of a stage file that `valid` accepts: a line cut off by a kill mid-write, or a row of the wrong
    shape (a run folder damaged or edited by hand), is left out rather than failing the report or status."""
    return [row for row in jsonl_rows(path) if valid(row)]


def _event_row(e: Any) -> bool:
    """An events.jsonl row as llmops writes it (a tracker's tally has no time)."""
    if not isinstance(e, dict) or not isinstance(e.get("event"), str):
        return False
    if e["event"] != "tracking" and not number(e.get("time")) or e["event"] == "resumed" and "step" not in e:
        return False
    wholes = ("restart", "step", "sent", "dropped", "rank")
    return (all(number(e[k], whole=True) for k in wholes if k in e and not (k == "rank" and e[k] is None))
            and all(number(e[k]) for k in ("stall", "seconds", "peers", "process_started", "silent", "timeout")
                    if k in e)
            and (e.get("code") is None or number(e["code"], whole=True)))


def _metric_row(r: Any) -> bool:
    return step_row(r) and number(r.get("time"))


def _sample_row(r: Any) -> bool:
    return isinstance(r, dict) and all(isinstance(r.get(k, ""), str) for k in ("prompt", "completion"))


def _attempts(metrics: Path, events: list[dict]) -> tuple[list[Attempt], Steps]:
    """The attempts of a stage from its events and metrics.jsonl, and the latest row of each step. The metrics are
    read a row at a time into columns of the figures the report uses (a 200,000-step stage is 45 MB of rows)."""
    by: dict[int, Attempt] = {}
    for e in events:
        if e.get("event") == "tracking":
            continue  # the metrics tracker's tally, not a sign of the training process
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
        elif e["event"] == "hung":
            a.hung = True
    steps, restarts, step_times = array("q"), array("q"), array("d")
    columns = {k: array("d") for k in CURVES}
    diverged = array("b")  # a loss logged, and not finite
    for r in filter(_metric_row, jsonl_rows(metrics)):  # a row at a time, never the whole file
        step, restart, step_time = r["step"], r.get("restart", 0), r.get("step_time") or 0.0
        steps.append(step), restarts.append(restart), step_times.append(step_time)
        for k, column in columns.items():
            v = r.get(k)
            column.append(v if number(v) else math.nan)  # a figure of a damaged row that the page cannot draw: none
        diverged.append(isinstance(r.get("loss"), float) and not math.isfinite(r["loss"]))
        a = by.setdefault(restart, Attempt(restart))
        began = r["time"] - step_time
        if a.first_step_at is None or began < a.first_step_at:
            a.first_step_at, a.first_step = began, step
        a.first_row_at = min(a.first_row_at or r["time"], r["time"])
        a.last_at = max(a.last_at or 0.0, r["time"])
        a.last_step = max(a.last_step or 0, step)
    step_of, restart_of, time_of = (np.frombuffer(x, dtype) for x, dtype in
                                    ((steps, np.int64), (restarts, np.int64), (step_times, np.float64)))
    for restart, a in by.items():
        mine = restart_of == restart
        a.steps, a.step_times = step_of[mine], time_of[mine]
    # the last row of each step: the first of it in the rows reversed
    unique, first_reversed = np.unique(step_of[::-1], return_index=True)
    latest = len(step_of) - 1 - first_reversed
    values = {k: np.frombuffer(column, np.float64)[latest] for k, column in columns.items()}
    bad = unique[np.frombuffer(diverged, np.int8)[latest].astype(bool)]
    return [by[k] for k in sorted(by)], Steps(unique, values, int(bad[0]) if len(bad) else None)


@dataclass
class Lost:
    """What an attempt ran again of the attempts before it: the steps (each counted by the first attempt that re-ran
    it), and their seconds."""
    steps: np.ndarray
    seconds: float

    def __len__(self) -> int:
        return len(self.steps)


def _redone(attempts: list[Attempt]) -> list[Lost]:
    """Per attempt, the steps of earlier attempts it ran again, each counted by the first attempt that re-ran it: not
    only the attempt just before (one that died before its first step hid what the one after it ran again)."""
    counted = [np.zeros(len(a.steps), bool) for a in attempts]
    out = []
    for i, a in enumerate(attempts):
        steps, seconds = [], 0.0
        for b, done in zip(attempts[:i] if a.first_step is not None else [], counted, strict=False):
            again = (b.steps >= a.first_step) & ~done
            done |= again
            steps.append(b.steps[again])
            seconds += float(b.step_times[again].sum())
        out.append(Lost(np.concatenate(steps) if steps else np.zeros(0, np.int64), seconds))
    return out


def _median(values: np.ndarray) -> float | None:
    values = np.sort(values[np.isfinite(values)])
    return float(values[len(values) // 2]) if len(values) else None


def summarize_stage(run: RunDir, name: str, record: dict, ready_at: float | None) -> StageSummary:
    folder = run.stage_dir(name)
    events = _jsonl(folder / "events.jsonl", _event_row)
    attempts, rows = _attempts(folder / "metrics.jsonl", events)
    t = dict.fromkeys(("queue", "startup", "training", "checkpointing", "lost"), 0.0)
    lost_steps, resume_seconds = 0, []
    previous: Attempt | None = None
    for a, redone in zip(attempts, _redone(attempts), strict=True):
        ready = ready_at if previous is None else previous.last_at
        if a.started is not None and ready is not None:
            t["queue"] += max(0.0, a.started - ready)
        if a.started is not None and a.first_step_at is not None:
            t["startup"] += max(0.0, a.first_step_at - a.started)
        elif a.started is not None and a.last_at is not None:  # it never reached a step: all of it start-up
            t["startup"] += max(0.0, a.last_at - a.started)
        stall = sum(s.get("stall", 0.0) for s in a.saves)
        t["checkpointing"] += stall
        if a.first_step_at is not None and a.last_at is not None:
            t["training"] += max(0.0, a.last_at - a.first_step_at - stall)
        lost_steps += len(redone)
        t["lost"] += redone.seconds
        if previous is not None and a.first_step is not None:
            if previous.last_at is not None and a.first_row_at is not None:
                resume_seconds.append(a.first_row_at - previous.last_at)
        previous = a
    t["training"] = max(0.0, t["training"] - t["lost"])
    return StageSummary(
        name=name, state=record.get("state", "PENDING"), restarts=record.get("restarts", max(0, len(attempts) - 1)),
        steps=_whole(rows.final("steps")), rows=rows,
        evals=_latest_per_step(_jsonl(folder / "eval.jsonl", step_row)),
        attempts=attempts, time=t, lost_steps=lost_steps, resume_seconds=resume_seconds,
        tokens_per_s=_median(rows.values["tokens_per_s"]),
        tracking=[e for e in events if e.get("event") == "tracking"],
        samples=_jsonl(folder / "samples.jsonl", _sample_row),
        stragglers=[e for e in events if e.get("event") == "straggler"],
    )


def _whole(value: float | None) -> int | None:
    return int(value) if value is not None and math.isfinite(value) else None


def stage_restarts(run: RunDir, stage: str) -> list[str]:
    """One line per restart of a stage, for `llmops status`: what ended the attempt before it (a hang, a
    preemption, an exit code, else a kill or crash that left no exit record), where it resumed, what it lost."""
    folder = run.stage_dir(stage)
    events = _jsonl(folder / "events.jsonl", _event_row)
    if not any(e.get("restart", 0) for e in events) and not _last_restart(folder / "metrics.jsonl"):
        return []  # one attempt: a long run's metrics.jsonl (hundreds of megabytes) is not read for nothing
    attempts, _ = _attempts(folder / "metrics.jsonl", events)
    known = run.read_status().stages.get(stage, {}).get("why")
    known = known if isinstance(known, dict) else {}
    lines = []
    for before, a, rows in zip(attempts, attempts[1:], _redone(attempts)[1:], strict=False):
        why = (str(known[str(a.restart)]) if str(a.restart) in known else
               "hung (no progress within restarts.hang_timeout)" if before.hung else
               "preempted" if before.exit_code == EXIT_REQUEUE else
               f"exit code {before.exit_code}" if before.exit_code is not None else "killed or crashed")
        line = f"restart {a.restart}: {why}"
        if before.last_step is not None:
            line += f" at step {before.last_step}"
        if a.resumed_from is not None:
            line += f"; resumed from step {a.resumed_from}"
        lines.append(line + (f", {_count(len(rows), 'step')} lost" if rows else ""))
    return lines


def _last_restart(path: Path, tail: int = 1 << 16) -> int:
    """The restart of the last whole row in a metrics.jsonl's last `tail` bytes (rows are appended in order of
    restart), 0 where there is none."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - tail))
            lines = f.read().splitlines()
    except OSError:
        return 0
    for line in reversed(lines[1:] if size > tail else lines):  # the first piece may be the end of a row
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if _metric_row(row):
            return int(row.get("restart", 0)) if number(row.get("restart", 0), whole=True) else 0
    return 0


def stage_stragglers(run: RunDir, stage: str) -> list[str]:
    """:func:`straggler_lines` of a stage's events.jsonl (for `llmops status`)."""
    return straggler_lines(_jsonl(run.stage_dir(stage) / "events.jsonl", _event_row))


def straggler_lines(events: list[dict]) -> list[str]:
    """One line per rank named a straggler in a stage's events (its first naming in each attempt)."""
    seen, lines = set(), []
    for ev in events:
        key = (ev.get("restart", 0), ev.get("rank"))
        if ev.get("event") != "straggler" or key in seen:
            continue
        seen.add(key)
        sec, peers = float(ev.get("seconds", 0.0)), float(ev.get("peers", 0.0))
        ratio = f" ({sec / peers:.1f}x)" if peers > 0 else ""
        lines.append(f"straggler: rank {ev.get('rank')} from step {ev.get('step')}: {sec:.3f}s per step to the "
                     f"gradient sync, its peers {peers:.3f}s{ratio}")
    return lines


def _latest_per_step(rows: list[dict]) -> list[dict]:
    """One row per step, in step order: an evaluation run again after a restart was appended, the later row wins."""
    latest = {r["step"]: r for r in rows if "step" in r}
    return [latest[s] for s in sorted(latest)]


def summarize(run: RunDir) -> dict[str, Any]:
    """Every stage's summary and the run's totals."""
    spec, status = run.read_spec(), run.read_status()
    stages = []
    # A stage becomes ready at the run's submission (the first) or the end of the stage before: from its record
    # where the backend keeps one (local), else from the last sign of life in its events (Slurm, Kubernetes keep
    # no stage times; taking the run's start made a later stage's queue hold every stage before it)
    ready = status.submitted_at or status.started_at
    for name in spec.stages:
        record = status.stages.get(name, {})
        if name == "prepare":
            stages.append(PrepareSummary(name, record.get("state", "PENDING"), record.get("restarts", 0),
                                         _span(record)))
            ready = record.get("ended_at") or ready
        else:
            stage = summarize_stage(run, name, record, record.get("started_at") or ready)
            stages.append(stage)
            ended = max((a.last_at for a in stage.attempts if a.last_at is not None), default=None)
            ready = record.get("ended_at") or ended or ready
    end = status.ended_at or time.time()
    return {"run": run.id, "state": status.state, "backend": status.backend, "message": status.message,
            "wall": end - (status.submitted_at or status.started_at), "stages": stages,
            "evaluations": evaluations.listed(run)}


def _span(record: dict) -> float | None:
    if record.get("started_at") and record.get("ended_at"):
        return record["ended_at"] - record["started_at"]
    return None


# ---- HTML ------------------------------------------------------------------------------------------

_TIME = {"queue": ("queue", "#9aa5b1"), "startup": ("start-up", "#f0b429"), "training": ("training", "#2f80ed"),
         "checkpointing": ("checkpointing", "#27ae60"), "lost": ("lost work", "#eb5757")}
TRAIN, HELD_OUT, POLICY, REFERENCE = "#2f6fdf", "#e8590c", "#2b9348", "#868e96"
_TRACKERS = {"mlflow": "MLflow", "wandb": "W&B", "tensorboard": "TensorBoard"}
_CSS = ("body{font:15px/1.45 system-ui,sans-serif;max-width:1200px;margin:0 auto;padding:16px 24px;color:#222}"
        "h1{font-size:1.5em;overflow-wrap:anywhere}h2{margin:2em 0 .3em;border-bottom:1px solid #ddd}"
        "h3{font-size:1em;margin:1.4em 0 .2em;color:#444}.scroll{overflow-x:auto}"
        "table{border-collapse:collapse;font-size:14px}th{border-bottom:1px solid #aaa}"
        "td,th{padding:3px 7px;text-align:right;white-space:nowrap}"
        "td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}.caption,.legend{font-size:13px;color:#555;margin:4px 0}"
        ".sw{display:inline-block;width:10px;height:10px;margin:0 4px 0 14px}.sw:first-child{margin-left:0}"
        ".tracking{margin:2px 0}.tracking.failed,.tracking.degraded{color:#b02a2a}"
        ".samples td{white-space:pre-wrap;overflow-wrap:anywhere;text-align:left;vertical-align:top;"
        "font-family:ui-monospace,monospace;font-size:13px}.samples td:first-child{width:30%}")
# What the DPO figures mean (llmops_model.align.objectives.DPO and align.dpo_loss).
_ACCURACY = ("<b>accuracy</b>: the fraction of pairs whose implicit reward, &beta;&middot;(log &pi; &minus; "
             "log &pi;<sub>ref</sub>), is higher for the chosen answer. <b>policy prefers</b> / <b>reference "
             "prefers</b>: the fraction of held-out pairs to which the policy / the reference model gives the chosen "
             "answer a higher log-probability than the rejected one (summed over its tokens; per token for IPO).")
_MARGIN = ("<b>reward margin</b>: the chosen answer's implicit reward minus the rejected one's, averaged over the "
           "pairs; it grows as the policy, relative to the reference model, favours the chosen answers.")


def _points(rows: list[dict], *keys: str) -> list[tuple[float, float]]:
    """(step, value) of the first of `keys` each row has, skipping missing and non-finite values."""
    out = []
    for r in rows:
        v = next((r[k] for k in keys if k in r), None)
        if isinstance(v, int | float) and math.isfinite(v) and "step" in r:
            out.append((r["step"], float(v)))
    return out


def _restart_marks(s: StageSummary) -> list[Mark]:
    """A mark per restart at the step it resumed from, with the steps the attempt before it lost."""
    marks = []
    for before, a, rows in zip(s.attempts, s.attempts[1:], _redone(s.attempts)[1:], strict=False):
        if a.first_step is None:
            continue  # it never reached a step: nowhere on the step axis to mark
        at = a.resumed_from if a.resumed_from is not None else a.first_step - 1
        redone = set(rows.steps.tolist())
        why = " (hung)" if before.hung else ""
        label = f"restart {a.restart}{why}" + (f", {_count(len(redone), 'step')} lost" if redone else "")
        tip = f"restart {a.restart}{why}: resumed from step {at}" + (
            f"; steps {min(redone)}-{max(redone)} had run and were run again" if redone else "")
        marks.append(Mark(at, label, tip, (at, max(redone)) if redone else None))
    return marks


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _tracking_lines(rows: list[dict]) -> list[tuple[str, str]]:
    """(state, line) per tracker backend: its latest tally per attempt (tallies count up), summed over attempts."""
    latest: dict[tuple[str, int], dict] = {}
    for r in rows:
        latest[(str(r.get("backend", "tracker")), r.get("restart", 0))] = r
    by_backend: dict[str, list[dict]] = {}
    for (backend, _), r in latest.items():
        by_backend.setdefault(backend, []).append(r)
    lines = []
    for backend, tallies in by_backend.items():
        name = _TRACKERS.get(backend.lower(), backend)
        sent, dropped = (sum(int(r.get(k) or 0) for r in tallies) for k in ("sent", "dropped"))
        states = {r.get("state", "ok") for r in tallies}
        state = next((x for x in ("failed", "degraded") if x in states), "ok")
        error = next((str(r["error"]) for r in reversed(tallies) if r.get("error")), "")
        if state == "failed":
            line = f"{name}: tracker unreachable, {_count(dropped, 'metric')} dropped" + (
                f" ({sent:,} sent before)" if sent else "")
        else:
            line = f"{name}: {_count(sent, 'metric')} sent" + (f", {dropped:,} dropped" if dropped else "")
        lines.append((state, line + (f": {error}" if error and state != "ok" else "")))
    return lines


def _facts(s: StageSummary) -> str:
    last = f"step {s.rows.last:,}" if s.rows else "no step logged yet"
    facts = [f"{last} of {s.steps:,}" if s.rows and s.steps else last]
    if s.final_loss is not None and math.isfinite(s.final_loss):
        facts.append(f"final loss {human(s.final_loss, 4)}")
    if s.rows.diverged_at is not None:
        facts.append(f"loss first not finite (NaN or infinite) at step {s.rows.diverged_at:,}: the curve leaves "
                     "out such steps")
    held = _points(s.evals, "loss")
    if held:
        facts.append(f"held-out loss {human(held[-1][1], 4)} at step {held[-1][0]:,}")
    if s.tokens_per_s:
        facts.append(f"median {human(s.tokens_per_s)} tokens/s")
    if s.restarts:
        lost = f": {_count(s.lost_steps, 'step')} lost ({duration(s.time['lost'])})" if s.lost_steps else ""
        facts.append(f"{_count(s.restarts, 'restart')}{lost}")
    return " &middot; ".join(html.escape(f) for f in facts)


def _stage_charts(s: StageSummary) -> list[str]:
    """One chart per unit; train and held-out curves of a quantity share one."""
    if not s.rows and not s.evals:
        return []  # the stage's line says so
    marks = _restart_marks(s)
    steps = [x for x, _ in _points(s.evals, "loss", "tokens_per_s")] + [
        x for k in ("loss", "tokens_per_s") for x, _ in s.rows.points(k)[-1:]]
    charts = {"x_range": (0, max(steps)) if steps else None, "marks": marks}
    dpo = s.rows.has("accuracy") or any("accuracy" in r for r in s.evals)

    def held_out(label: str, colour: str, *keys: str) -> Series:
        return Series(label, _points(s.evals, *keys), colour, dashed=True, markers=True)

    out = ["<h3>Loss</h3>" + line_chart(
        [Series("train loss", s.rows.points("loss"), TRAIN), held_out("held-out loss", HELD_OUT, "loss")],
        y_title="loss (per pair)" if dpo else "loss (nats/token)", label=f"{s.name}: loss", **charts)]
    if dpo:
        out.append("<h3>Preference accuracy</h3>" + line_chart(
            [Series("train accuracy", s.rows.points("accuracy"), TRAIN),
             held_out("held-out accuracy", HELD_OUT, "accuracy"),
             # The reference's ringed markers stay visible where the policy's dots fall on the same value.
             replace(held_out("held-out: reference prefers", REFERENCE, "reference_prefers", "ref_prefers"),
                     hollow=True),
             held_out("held-out: policy prefers", POLICY, "policy_prefers", "prefers")],
            y_title="fraction of pairs", y_range=(0.0, 1.0), label=f"{s.name}: preference accuracy", **charts)
            + f"<p class=caption>{_ACCURACY}</p>")
        out.append("<h3>Reward margin</h3>" + line_chart(
            [Series("train margin", s.rows.points("margin"), TRAIN), held_out("held-out margin", HELD_OUT,
                                                                               "margin")],
            y_title="reward margin", y_zero=True, label=f"{s.name}: reward margin", **charts)
            + f"<p class=caption>{_MARGIN}</p>")
    out.append("<h3>Throughput</h3>" + line_chart(
        [Series("tokens/s", s.rows.points("tokens_per_s"), TRAIN)], y_title="tokens/s", y_zero=True,
        label=f"{s.name}: throughput", **charts))
    return out


def _time_html(t: dict[str, float]) -> str:
    bar = time_bar([(_TIME[k][0], v, _TIME[k][1]) for k, v in t.items()])
    if not bar:
        return ""
    legend = "".join(f'<span class=sw style="background:{_TIME[k][1]}"></span>{_TIME[k][0]} {duration(v)}'
                     for k, v in t.items())
    return f"<h3>Where the time went</h3>{bar}<div class=legend>{legend}</div>"


def _table_row(s: StageSummary | PrepareSummary) -> str:
    e = html.escape
    if isinstance(s, PrepareSummary):
        return (f"<tr><td>{e(s.name)}</td><td>{e(s.state)}</td><td colspan=3>data preparation</td>"
                f"<td>{s.restarts}</td><td>-</td><td>-</td><td>{duration(s.seconds)}</td></tr>")
    steps = (f"{s.rows.last:,}" + (f"/{s.steps:,}" if s.steps else "")) if s.rows else "-"
    lost = f"{s.lost_steps:,} ({duration(s.time['lost'])})" if s.lost_steps else "0"
    resume = ", ".join(duration(x) for x in s.resume_seconds) or "-"
    final = ("not finite" if s.rows.diverged_at is not None and not math.isfinite(s.final_loss or 0.0)
             else human(s.final_loss, 4))
    cells = (s.name, s.state, steps, final, human(s.tokens_per_s), str(s.restarts), lost, resume,
             duration(sum(s.time.values())))
    return "<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>"


def _visible(text: str) -> str:
    """A completion as it reads: long runs of line breaks counted, not drawn; an empty one said."""
    if not text.strip():
        return f"(only whitespace: {len(text)} characters)" if text else "(nothing: the model ended the text at once)"
    return re.sub(r"\n{3,}", lambda m: f"\n[{len(m.group())} line breaks]\n", text)


def _samples_html(rows: list[dict]) -> str:
    """The stage's completions of the sample prompts (greedy, from its final checkpoint)."""
    if not rows:
        return ""
    e = html.escape
    how = "as the user's message, through the chat template" if rows[0].get("chat") else "as plain text"
    body = "".join(f"<tr><td>{e(r.get('prompt', ''))}</td><td>{e(_visible(r.get('completion', '')))}"
                   + (" <i>(stopped at the length limit)</i>" if r.get("finish_reason") == "length" else "")
                   + "</td></tr>" for r in rows)
    return (f"<h3>Samples at step {e(str(rows[0].get('step', '?')))}</h3><p>Greedy completions of the spec's "
            f"sample prompts, given {how}.</p><div class=scroll><table class=samples><tr><th>prompt</th>"
            f"<th>completion</th></tr>{body}</table></div>")


def render_html(summary: dict[str, Any]) -> str:
    e = html.escape
    out = ["<!doctype html><meta charset=utf-8>",
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>llmops run {e(summary['run'])}</title>", f"<style>{_CSS}</style>",
           f"<h1>{e(summary['run'])}</h1>",
           f"<p><b>{e(summary['state'])}</b> on {e(summary['backend'])} in {duration(summary['wall'])}. "
           f"{e(summary['message'] or '')}</p>",
           "<div class=scroll><table><tr><th>stage</th><th>state</th><th>steps</th><th>final loss</th>"
           "<th>tokens/s</th><th>restarts</th><th>lost steps</th><th>resume</th><th>time</th></tr>"]
    out += [_table_row(s) for s in summary["stages"]]
    out.append("</table></div>")
    for s in summary["stages"]:
        if isinstance(s, PrepareSummary):
            continue
        out.append(f"<section><h2>{e(s.name)}</h2><p>{_facts(s)}</p>")
        out += [f"<p class='tracking {state}'>{e(line)}</p>" for state, line in _tracking_lines(s.tracking)]
        out += [f"<p class='tracking degraded'>{e(line)}</p>" for line in straggler_lines(s.stragglers)]
        out += _stage_charts(s)
        out.append(_samples_html(s.samples))
        out.append(_time_html(s.time) + "</section>")
    out.append(evaluations.html_section(summary.get("evaluations", [])))
    return "\n".join(out) + "\n"


def check_out(path: Path) -> None:
    """UserError unless the page can be written at `path`: a file (new or replaced), a device or a pipe; not a
    folder, nor in a folder that does not exist (both were tracebacks, after the whole report was built)."""
    if path.is_dir():
        raise UserError(f"--out {path} is a folder", f"name a file, e.g. --out {path / REPORT}")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: its folder {path.parent} does not exist", f"create {path.parent} first")


def write(run: RunDir, path: Path | None = None) -> Path:
    """Write the report (default: report.html in the run directory); returns its path."""
    path = path or run.path / REPORT
    check_out(path)
    page = render_html(summarize(run))
    try:
        if path.exists() and not path.is_file():  # /dev/null, a pipe: written to, never replaced (renamed over,
            with open(path, "w") as f:          # /dev/null became a file of reports)
                f.write(page)
            return path
        atomic_write(path, page)
    except OSError as exc:
        raise UserError(f"cannot write the report to {path}: {exc.strerror or exc}",
                        "choose another --out, or free the disk / fix the folder's permissions") from None
    return path
