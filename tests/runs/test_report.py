"""The run report: its numbers for people, and its charts laid out right in a real browser.

The browser tests open ``report.html`` in headless Chromium (Debian's
``chromium``, driven by Playwright; never a downloaded browser) at 1400 and
800 px and check the layout as a reader sees it: in every chart, every text
label inside the chart, no two labels overlapping, no label or legend over
the plotted data; no page wider than the window. The report is built from a
synthetic run directory (pretrain, SFT, DPO; pretrain restarted once, after
its last checkpoint had been overtaken), so no training runs here. A second
page pushes the chart layout harder: long legends, restarts one step apart,
tiny and huge numbers.

Without Chromium (``/usr/bin/chromium`` or ``$LLMOPS_CHROMIUM``) or Playwright
the browser tests skip; CI installs both (``.ci/run``, the ``test`` extra).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from llmops.runs import charts, report
from llmops.runs.rundir import RunDir, Status
from llmops.spec.load import parse_spec
from llmops_testing import tiny_spec

T0 = 1_800_000_000.0
STEPS, CHECKPOINT, KILLED_AT = 60, 30, 37  # pretrain: saved at 30, killed after 37, resumed from 30


# ---- numbers --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "text"), [
    (46000, "46k"), (46123, "46.1k"), (6500, "6.5k"), (1_234_567, "1.23M"), (2.5e9, "2.5B"), (999.96, "1k"),
    (0.0003, "3e\u22124"), (0.000312, "3.12e\u22124"), (6.9409, "6.94"), (0.5, "0.5"), (-0.4836, "\u22120.484"),
    (120, "120"), (0, "0"), (None, "-"), (math.nan, "-"),
])
def test_numbers_read_as_a_person_writes_them(value, text):
    assert charts.human(value) == text


def test_ticks_are_round_steps_of_one_two_or_five_with_labels_in_one_unit():
    assert charts.nice_ticks(0, 46000) == [0, 10000, 20000, 30000, 40000, 50000]
    assert charts.tick_labels(charts.nice_ticks(0, 46000)) == ["0", "10k", "20k", "30k", "40k", "50k"]
    assert charts.nice_ticks(5.4, 6.9) == [5.4, 5.6, 5.8, 6.0, 6.2, 6.4, 6.6, 6.8, 7.0]
    assert charts.tick_labels([5.5, 6.0, 6.5]) == ["5.5", "6.0", "6.5"]
    assert charts.tick_labels(charts.nice_ticks(0, 3e-4)) == ["0", "5e\u22125", "1e\u22124", "1.5e\u22124",
                                                              "2e\u22124", "2.5e\u22124", "3e\u22124"]
    assert charts.tick_labels(charts.nice_ticks(-0.48, 0.9)) == ["\u22120.6", "\u22120.4", "\u22120.2", "0", "0.2",
                                                                 "0.4", "0.6", "0.8", "1.0"]
    assert charts.tick_labels([4500, 5000, 5500]) == ["4.5k", "5.0k", "5.5k"]
    assert charts.nice_ticks(3, 3) == [2.7, 2.8, 2.9, 3.0, 3.1, 3.2, 3.3]  # a flat line still gets an axis
    for lo, hi in ((0, 46000), (0.001, 0.0123), (1, 1_000_000), (-3, 7)):
        ticks = charts.nice_ticks(lo, hi)
        steps = {round(b - a, 12) for a, b in zip(ticks, ticks[1:], strict=False)}
        assert ticks[0] <= lo and ticks[-1] >= hi and len(steps) == 1 and 3 <= len(ticks) <= 11, ticks
        assert "e+" not in " ".join(charts.tick_labels(ticks))


def test_durations():
    assert [charts.duration(s) for s in (0.42, 12.3, 161, 3900)] == ["0.4 s", "12 s", "2 min 41 s", "1 h 05 min"]


# ---- a synthetic run -------------------------------------------------------------------------------

def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _steps(stage: str, steps: range, *, restart: int, start: float, extra=lambda step: {}) -> list[dict]:
    """metrics.jsonl rows as the trainer writes them (llmops_model.train.metrics), 0.5 s a step."""
    return [{"step": s, "steps": STEPS, "loss": 7.0 * math.exp(-s / 40) + 0.05 * math.sin(s), "lr": 3e-4,
             "grad_norm": 1.2, "tokens_per_s": 46000 + 900 * math.sin(s / 3), "tokens": s * 16384,
             "step_time": 0.5, "stage": stage, "restart": restart, "time": start + 0.5 * (i + 1), **extra(s)}
            for i, s in enumerate(steps)]


def _dpo(step: int) -> dict:
    acc = min(1.0, 0.3 + step / 70)
    return {"loss": 0.69 - step / 150, "accuracy": acc, "margin": -0.2 + step / 40, "chosen_reward": step / 80,
            "rejected_reward": 0.2 - step / 80, "policy_prefers": 0.4 + step / 200, "reference_prefers": 0.4,
            "pairs": 8.0, "method": "dpo"}


def make_run(root: Path) -> RunDir:
    """pretrain (restarted once), sft and dpo, with held-out rows for each and tracker tallies for pretrain."""
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "docs.jsonl").write_text('{"text": "a document"}\n')
    (root / "sft.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (root / "dpo.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    spec = tiny_spec("report", steps=STEPS)
    spec["prepare"] = {"input": {"paths": [str(root / "raw")]}, "output": {"dir": str(root / "prepared")},
                       "tokenizer": {"vocab_size": 512}}
    spec["align"] = [{"method": m, "data": {"path": str(root / f"{m}.jsonl")}, "steps": STEPS,
                      "global_batch_size": 8, "micro_batch_size": 2} for m in ("sft", "dpo")]
    run = RunDir.create(parse_spec(spec), root / "report-20270115-093000")

    pre = run.stage_dir("pretrain")
    first = _steps("pretrain", range(1, KILLED_AT + 1), restart=0, start=T0 + 20)
    second = _steps("pretrain", range(CHECKPOINT + 1, STEPS + 1), restart=1, start=T0 + 80)
    _write_jsonl(pre / "metrics.jsonl", first + second)
    _write_jsonl(pre / "events.jsonl", [
        {"event": "start", "time": T0 + 18, "restart": 0, "process_started": T0 + 5},
        *({"event": "save", "time": T0 + 20 + s / 2, "restart": 0, "step": s, "stall": 0.4} for s in (10, 20, 30)),
        {"event": "tracking", "backend": "mlflow", "state": "ok", "sent": 80, "dropped": 0, "restart": 0},
        {"event": "tracking", "backend": "wandb", "state": "failed", "sent": 0, "dropped": 25, "restart": 0,
         "error": "connection refused (api.wandb.ai:443)"},
        {"event": "start", "time": T0 + 75, "restart": 1, "process_started": T0 + 62},
        {"event": "resumed", "time": T0 + 76, "restart": 1, "step": CHECKPOINT},
        *({"event": "save", "time": T0 + 80 + (s - 30) / 2, "restart": 1, "step": s, "stall": 0.4}
          for s in (40, 50, 60)),
        {"event": "exit", "time": T0 + 96, "restart": 1, "code": 0, "step": STEPS},
        {"event": "tracking", "backend": "mlflow", "state": "ok", "sent": 40, "dropped": 0, "restart": 1},
        {"event": "tracking", "backend": "wandb", "state": "failed", "sent": 0, "dropped": 15, "restart": 1,
         "error": "connection refused (api.wandb.ai:443)"},
    ])
    # Every 5 steps: 35 was evaluated, then run again after the restart (appended; the later row wins).
    _write_jsonl(pre / "eval.jsonl", [{"step": s, "steps": STEPS, "loss": 7.1 * math.exp(-s / 40) + 0.1 + 0.01 * n,
                                       "loss_tokens": 512.0, "seconds": 0.2, "stage": "pretrain", "restart": n}
                                      for n, steps in enumerate((range(5, KILLED_AT + 1, 5),
                                                                 range(CHECKPOINT + 5, STEPS + 1, 5)))
                                      for s in steps])
    for i, (stage, extra) in enumerate((("sft", lambda s: {"method": "sft"}), ("dpo", _dpo))):
        start = T0 + 100 + 60 * i
        folder = run.stage_dir(stage)
        _write_jsonl(folder / "metrics.jsonl", _steps(stage, range(1, STEPS + 1), restart=0, start=start + 10,
                                                      extra=extra))
        _write_jsonl(folder / "events.jsonl", [
            {"event": "start", "time": start + 8, "restart": 0, "process_started": start + 1},
            {"event": "exit", "time": start + 41, "restart": 0, "code": 0, "step": STEPS}])
        _write_jsonl(folder / "eval.jsonl", [{"step": s, "steps": STEPS, **extra(s), "loss": 6 * math.exp(-s / 50)}
                                             for s in (20, 40, 60)])
    stages = {"prepare": (T0 + 1, T0 + 4, 0), "pretrain": (T0 + 4, T0 + 97, 1), "sft": (T0 + 100, T0 + 142, 0),
              "dpo": (T0 + 160, T0 + 202, 0)}
    run.write_status(Status(state="SUCCEEDED", message="finished", restarts=1, submitted_at=T0, started_at=T0 + 1,
                            ended_at=T0 + 203, stage="dpo", stages={
                                name: {"state": "SUCCEEDED", "started_at": a, "ended_at": b, "restarts": n,
                                       "exit_code": 0} for name, (a, b, n) in stages.items()}))
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    return make_run(tmp_path_factory.mktemp("report"))


def test_the_summary_counts_the_restart_and_its_lost_work_and_ignores_tracker_rows(run):
    stages = {s.name: s for s in report.summarize(run)["stages"]}
    pre = stages["pretrain"]
    assert pre.restarts == 1 and pre.lost_steps == KILLED_AT - CHECKPOINT
    assert pre.time["lost"] == pytest.approx(0.5 * (KILLED_AT - CHECKPOINT))
    assert [a.restart for a in pre.attempts] == [0, 1] and len(pre.tracking) == 4
    assert stages["dpo"].evals[-1]["step"] == STEPS
    assert [r["step"] for r in pre.evals] == list(range(5, STEPS + 1, 5))  # one point per step
    assert [r["restart"] for r in pre.evals if r["step"] in (30, 35, 40)] == [0, 1, 1]


def test_a_stage_queues_from_the_end_of_the_one_before_where_the_backend_keeps_no_stage_times(tmp_path):
    """Slurm and Kubernetes keep no start and end per stage: a later stage's queue ran from the run's start, so
    SFT after a three-day pre-training showed three days of queue; the first stage's ran from the first job's
    start, so a wait in the cluster's queue was not counted. Ready: the submission, then the end of the stage
    before as its events tell it."""
    run = make_run(tmp_path)
    status = run.read_status()
    status.submitted_at = T0 - 600  # ten minutes in the cluster's queue before the first job started
    status.stages = {name: {k: v for k, v in record.items() if k not in ("started_at", "ended_at")}
                     for name, record in status.stages.items()}
    run.write_status(status)
    summary = report.summarize(run)
    stages = {s.name: s for s in summary["stages"]}
    # pretrain: submission to its first process (605 s), and the kill to the restart (T0+38.5 to T0+62)
    assert stages["pretrain"].time["queue"] == pytest.approx(605 + 23.5)
    assert stages["sft"].time["queue"] == pytest.approx(101 - 96)  # pretrain's exit to sft's process start
    assert stages["dpo"].time["queue"] == pytest.approx(161 - 141)
    assert summary["wall"] == pytest.approx(203 + 600)


def test_steps_run_again_after_a_restart_that_died_in_start_up_are_lost_work(tmp_path):
    """Attempt 0 ran to step 37 (checkpoint at 30), attempt 1 died before its first step, attempt 2 resumed from
    30: steps 31-37 were lost, though not to the attempt just before the one that ran them again."""
    run = make_run(tmp_path)
    pre = run.stage_dir("pretrain")
    first = _steps("pretrain", range(1, KILLED_AT + 1), restart=0, start=T0 + 20)
    third = _steps("pretrain", range(CHECKPOINT + 1, STEPS + 1), restart=2, start=T0 + 80)
    _write_jsonl(pre / "metrics.jsonl", first + third)
    _write_jsonl(pre / "events.jsonl", [
        {"event": "start", "time": T0 + 18, "restart": 0, "process_started": T0 + 5},
        {"event": "start", "time": T0 + 50, "restart": 1, "process_started": T0 + 45},
        {"event": "exit", "time": T0 + 55, "restart": 1, "code": 1},
        {"event": "start", "time": T0 + 75, "restart": 2, "process_started": T0 + 62},
        {"event": "resumed", "time": T0 + 76, "restart": 2, "step": CHECKPOINT},
        {"event": "exit", "time": T0 + 96, "restart": 2, "code": 0, "step": STEPS}])
    stage = next(s for s in report.summarize(run)["stages"] if s.name == "pretrain")
    assert stage.lost_steps == KILLED_AT - CHECKPOINT
    assert stage.time["lost"] == pytest.approx(0.5 * (KILLED_AT - CHECKPOINT))
    assert stage.time["startup"] == pytest.approx((20 - 5) + (55 - 45) + (80 - 62))  # the dead attempt's 10 s too
    assert report.stage_restarts(run, "pretrain") == [
        f"restart 1: killed or crashed at step {KILLED_AT}",
        f"restart 2: exit code 1; resumed from step {CHECKPOINT}, {KILLED_AT - CHECKPOINT} steps lost"]
    (mark,) = report._restart_marks(stage)
    assert mark.lost == (CHECKPOINT, KILLED_AT)


def test_the_page_says_what_happened(run):
    page = report.render_html(report.summarize(run))
    assert all(f"<h2>{s}</h2>" in page for s in ("pretrain", "sft", "dpo"))
    assert "restart 1, 7 steps lost" in page and "re-run after a restart" in page
    assert "MLflow: 120 metrics sent" in page
    assert "W&amp;B: tracker unreachable, 40 metrics dropped: connection refused (api.wandb.ai:443)" in page
    assert "<b>policy prefers</b> / <b>reference prefers</b>: the fraction of held-out pairs" in page
    assert page.count('class="chart"') == 2 + 2 + 4  # loss, throughput; + accuracy, margin for DPO
    pretrain = page[page.index("<h2>pretrain</h2>"):page.index("<h2>sft</h2>")]
    assert "held-out loss 1.694 at step 60" in pretrain  # the restarted attempt's evaluation
    assert pretrain.count("<title>held-out loss, step ") == STEPS // 5  # beside the training loss, once a step
    assert ">50k</text>" in page and "e+" not in page and "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")


# ---- in a real browser -----------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    found = os.environ.get("LLMOPS_CHROMIUM") or "/usr/bin/chromium"
    return found if shutil.which(found) else None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One Chromium for the module, with a fresh profile; nothing reaches the network."""
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium: install Debian's chromium (CI does) or point $LLMOPS_CHROMIUM at one")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 900})
        yield context.new_page()
        context.close()


# What a reader would see wrong, measured by the browser: per chart, labels outside it or on top of each
# other, legends or labels over the data (a line's or a marker's bounding box), restart lines through labels.
LAYOUT = """() => {
  const box = (e) => {
    const r = e.getBoundingClientRect();
    return {x0: r.left, y0: r.top, x1: r.right, y1: r.bottom};
  };
  const overlap = (a, b) => Math.min(a.x1, b.x1) - Math.max(a.x0, b.x0) > 0.5
    && Math.min(a.y1, b.y1) - Math.max(a.y0, b.y0) > 0.5;
  const name = (e) => JSON.stringify(e.textContent || e.tagName);
  const problems = [], charts = [...document.querySelectorAll('svg.chart')];
  charts.forEach((svg, i) => {
    const chart = `chart ${i} (${svg.getAttribute('aria-label')})`, frame = box(svg);
    const texts = [...svg.querySelectorAll('text')].map((e) => [e, box(e)]);
    const data = [...svg.querySelectorAll('g.data > *')].map((e) => [e, box(e)]);
    for (const [e, b] of texts) {
      if (b.x0 < frame.x0 - 0.5 || b.y0 < frame.y0 - 0.5 || b.x1 > frame.x1 + 0.5 || b.y1 > frame.y1 + 0.5)
        problems.push(`${chart}: ${name(e)} sticks out of the chart`);
      for (const [d, db] of data) if (overlap(b, db)) problems.push(`${chart}: ${name(e)} is over the data`);
    }
    texts.forEach(([e, b], j) => texts.slice(j + 1).forEach(([f, c]) => {
      if (overlap(b, c)) problems.push(`${chart}: ${name(e)} overlaps ${name(f)}`);
    }));
    for (const line of svg.querySelectorAll('g.marks > line')) {
      const l = box(line);
      for (const [e, b] of texts)
        if (l.x0 > b.x0 + 0.5 && l.x0 < b.x1 - 0.5 && Math.min(l.y1, b.y1) - Math.max(l.y0, b.y0) > 0.5)
          problems.push(`${chart}: a restart line crosses ${name(e)}`);
    }
    for (const legend of svg.querySelectorAll('g.legend'))
      for (const [d, db] of data) if (overlap(box(legend), db)) problems.push(`${chart}: the legend is over the data`);
  });
  const body = getComputedStyle(document.body), content = document.body.clientWidth
    - parseFloat(body.paddingLeft) - parseFloat(body.paddingRight);
  return {problems, charts: charts.length, content,
          widths: charts.map((s) => s.getBoundingClientRect().width),
          font: Math.min(...[...document.querySelectorAll('svg.chart text')].map((t) => box(t).y1 - box(t).y0)),
          overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth};
}"""


def _check_layout(page, path: Path, width: int, charts_expected: int) -> dict:
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(path.as_uri())
    found = page.evaluate(LAYOUT)
    assert found["problems"] == [], f"at {width} px:\n" + "\n".join(found["problems"])
    assert found["charts"] == charts_expected
    assert found["overflow"] <= 0, f"the page is {found['overflow']} px wider than a {width} px window"
    assert min(found["widths"]) >= found["content"] - 1, (found["widths"], found["content"])  # full width
    # Text boxes are about 1.15 em, rounded to whole pixels: 12 px is about an 11 px font.
    assert found["font"] >= 11.9, f"labels {found['font']:.1f} px tall at {width} px"
    return found


@pytest.mark.parametrize("width", [1400, 800])
def test_report_charts_are_laid_out_cleanly_in_chromium(browser, run, tmp_path, width):
    path = report.write(run, tmp_path / "report.html")
    found = _check_layout(browser, path, width, charts_expected=8)
    assert 1100 <= found["content"] <= 1200 if width == 1400 else found["content"] < 800
    labels = browser.locator("svg.chart text").all_text_contents()
    assert "restart 1, 7 steps lost" in labels and "tokens/s" in labels and "fraction of pairs" in labels
    browser.screenshot(path=tmp_path / f"report-{width}.png", full_page=True)


def _stress_page(path: Path) -> Path:
    """Charts that are hard to lay out: long legends, restarts a step apart, 1e-5 to 1e6, negative values."""
    steps = range(0, 200_001, 5000)
    marks = [charts.Mark(90_000, "restart 1, 1,200 steps lost", lost=(90_000, 91_200)),
             charts.Mark(95_000, "restart 2"), charts.Mark(100_000, "restart 3, 40 steps lost", lost=(1e5, 100_040)),
             charts.Mark(200_000, "restart 4")]
    figures = [
        ("learning rate", [charts.Series("lr", [(s, 3e-4 * min(1, s / 2e4) * (1 - s / 2.1e5)) for s in steps],
                                         "#2f6fdf")], {}),
        ("tokens/s", [charts.Series(f"series {i} with a long legend label", [(s, 1.2e6 + i * 4e4 * math.sin(s))
                                                                            for s in steps], "#e8590c")
                      for i in range(7)], {"y_zero": True}),
        ("reward margin", [charts.Series("margin", [(s, -2 + s / 4e4) for s in steps], "#2b9348"),
                           charts.Series("held-out", [(0, 0.5)], "#888", dashed=True, markers=True)], {}),
    ]
    body = "".join(charts.line_chart(series, y_title=title, marks=marks, **kw) for title, series, kw in figures)
    path.write_text(f"<!doctype html><meta charset=utf-8><style>{report._CSS}</style>{body}")
    return path


@pytest.mark.parametrize("width", [1400, 800])
def test_hard_charts_are_laid_out_cleanly_in_chromium(browser, tmp_path, width):
    _check_layout(browser, _stress_page(tmp_path / "stress.html"), width, charts_expected=3)


def test_report_out_that_cannot_take_a_page_is_bad_input_and_a_damaged_run_is_said_once(tmp_path):
    """`llmops report RUN --out FOLDER` (or a file in a folder that does not exist) was a traceback after the whole
    report had been built; a damaged status.json was printed twice (once as "from the files already here")."""
    from llmops_testing import llmops

    root = tmp_path / "runs"
    root.mkdir()
    run = RunDir(shutil.move(make_run(tmp_path / "a").path, root / "a-20270115-093000"))
    (tmp_path / "shots").mkdir()
    for out, problem in ((tmp_path / "shots", "is a folder"), (tmp_path / "nope" / "r.html", "does not exist")):
        res = llmops("report", run.id, "--runs-dir", str(root), "--out", str(out))
        assert res.returncode == 2 and problem in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not list((tmp_path / "shots").iterdir())
    ok = llmops("report", run.id, "--runs-dir", str(root), "--out", str(tmp_path / "shots" / "r.html"))
    assert ok.returncode == 0 and (tmp_path / "shots" / "r.html").read_text().startswith("<!doctype html>"), ok.stderr
    (run.path / "status.json").write_text("[]")
    bad = llmops("report", run.id, "--runs-dir", str(root))
    assert bad.returncode == 2 and bad.stderr.count("status.json is damaged") == 1, bad.stderr


def test_a_damaged_run_folder_is_named_and_hides_no_other_run(tmp_path):
    """Run folders get copied and edited: a status.json cut short read as PENDING, submitted just now; one of
    the wrong shape, or a metrics row without its time, ended `llmops status` of every run in a traceback; a
    folder named with brackets was shown as rich markup (`exp[old]` as `exp`)."""
    from llmops.errors import UserError
    from llmops_testing import llmops

    root = tmp_path / "runs"
    root.mkdir()
    for x in ("a", "b"):
        shutil.move(make_run(tmp_path / x).path, root / f"{x}-20270115-093000")
    good, bad = (RunDir(root / f"{x}-20270115-093000") for x in ("a", "b"))
    _write_jsonl(good.stage_dir("pretrain") / "metrics.jsonl",
                 _steps("pretrain", range(1, 11), restart=0, start=T0 + 20) + [{"step": 11, "loss": 1.0}, 5,
                                                                              {"step": "12", "time": T0}])
    assert [r["step"] for r in good.metrics("pretrain")] == list(range(1, 12))  # a row without time: no chart point
    assert next(s for s in report.summarize(good)["stages"] if s.name == "pretrain").rows.last == 10
    for damage in ('{"state": "SUCCEEDED", "submitted_', "[]", '{"state": "SUCCEEDED", "message": 5}'):
        (bad.path / "status.json").write_text(damage)
        with pytest.raises(UserError, match="status.json is damaged"):
            bad.read_status()
    one = llmops("status", bad.id, "--runs-dir", str(root))
    assert one.returncode == 2 and "status.json is damaged" in one.stderr and "Traceback" not in one.stderr
    every = llmops("status", "--runs-dir", str(root), env={"COLUMNS": "200"})
    assert every.returncode == 0, every.stderr
    assert good.id in every.stdout and "SUCCEEDED" in every.stdout and "UNREADABLE" in every.stdout

    old = tmp_path / "exp[old]"
    (old / "checkpoints" / "iter_0000010").mkdir(parents=True)
    listed = llmops("checkpoints", str(old / "checkpoints"), env={"COLUMNS": "200"})
    assert listed.returncode == 0 and "exp[old]" in listed.stdout, listed.stdout + listed.stderr


def test_rows_with_numbers_no_run_writes_are_left_out_of_status_and_report(tmp_path):
    """A 400-digit step was an OverflowError in `status` and `report`; a DPO figure that is text is not drawn."""
    run = make_run(tmp_path)
    dpo = run.stage_dir("dpo")
    with (dpo / "metrics.jsonl").open("a") as f:
        f.write('{"step": 1%s, "time": 1800000999.0}\n' % ("0" * 400))
        f.write('{"step": 61, "loss": 0.1, "accuracy": "high", "margin": 1e999, "time": 1800000999.0}\n')
    stage = next(s for s in report.summarize(run)["stages"] if s.name == "dpo")
    assert stage.rows.last == 61 and stage.final_loss == 0.1
    assert stage.rows.points("accuracy")[-1][0] == STEPS and stage.rows.points("margin")[-1][0] == STEPS
    assert report.stage_restarts(run, "dpo") == [] and [r["step"] for r in run.metrics("dpo")][-1] == 61
    assert "<h2>dpo</h2>" in report.render_html(report.summarize(run))


def test_a_loss_gone_to_nan_is_said_not_shown_as_missing(tmp_path):
    """A stage whose loss became NaN (the trainer writes bare NaN and Infinity) showed its final loss as "-" and a
    curve that just stopped; `llmops status` showed "-" too."""
    from llmops_testing import llmops

    run = make_run(tmp_path)
    sft = run.stage_dir("sft")
    rows = [r if r["step"] < 25 else {**r, "loss": math.nan if r["step"] % 2 else math.inf}
            for r in _steps("sft", range(1, STEPS + 1), restart=0, start=T0 + 110)]
    _write_jsonl(sft / "metrics.jsonl", rows)
    (sft / "progress.json").write_text(json.dumps(rows[-1]))
    page = report.render_html(report.summarize(run))
    section = page.split("<h2>sft</h2>")[1].split("</section>")[0]
    assert "loss first not finite (NaN or infinite) at step 25" in section
    assert "<td>sft</td><td>SUCCEEDED</td><td>60/60</td><td>not finite</td>" in page
    said = llmops("status", str(run.path), env={"COLUMNS": "200"})
    (line,) = [x for x in said.stdout.splitlines() if x.strip().startswith("sft")]
    assert " inf " in line, said.stdout


def test_bytes_that_are_not_utf8_in_a_run_file_are_a_damaged_row_or_a_damaged_status(tmp_path):
    """A metrics row or a status.json with a byte that is not UTF-8 (a disk fault, a hand edit) ended `status`
    and `report` in a UnicodeDecodeError."""
    from llmops.errors import UserError

    run = make_run(tmp_path)
    pre = run.stage_dir("pretrain")
    with (pre / "metrics.jsonl").open("ab") as f:
        f.write(b'{"step": 61, "loss": "\xff", "time": 1800000999.0}\n')
    assert [r["step"] for r in run.metrics("pretrain")] == list(range(1, STEPS + 1))
    assert report.stage_restarts(run, "pretrain")[0].startswith("restart 1: ")
    assert "<h2>pretrain</h2>" in report.render_html(report.summarize(run))
    (run.path / "status.json").write_bytes(b'{"state": "SUCCEEDED\xff"}')
    with pytest.raises(UserError, match="status.json is damaged"):
        run.read_status()


def test_status_of_a_long_run_that_never_restarted_does_not_read_its_metrics(tmp_path):
    """`llmops status RUN` read a stage's whole metrics.jsonl for its restart lines (400 MB for 200,000 rows);
    a stage that ran in one attempt has none to show."""
    import tracemalloc

    run = make_run(tmp_path)
    pre = run.stage_dir("pretrain")
    _write_jsonl(pre / "events.jsonl", [{"event": "start", "time": T0 + 18, "restart": 0, "process_started": T0}])
    rows = _steps("pretrain", range(1, 20_001), restart=0, start=T0 + 20, extra=lambda s: {"pad": "x" * 1000})
    _write_jsonl(pre / "metrics.jsonl", rows)
    assert (pre / "metrics.jsonl").stat().st_size > 20_000_000
    tracemalloc.start()
    try:
        assert report.stage_restarts(run, "pretrain") == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak
    # a restart the events file did not record (it was lost) still shows, from the metrics' last row
    (pre / "events.jsonl").unlink()
    _write_jsonl(pre / "metrics.jsonl", rows[:100] + _steps("pretrain", range(90, 121), restart=1, start=T0 + 200))
    assert report.stage_restarts(run, "pretrain") == ["restart 1: killed or crashed at step 100, 11 steps lost"]


def test_the_report_of_a_long_run_holds_its_figures_not_its_rows(tmp_path):
    """`llmops report` of three 200,000-step stages (45 MB of metrics each) held every row as a dict: 1.2 GB and
    20 s. It now reads the figures it draws into columns, a row at a time; a held-out curve of many points is
    drawn as its line, without a marker per point (40,000 of them were 4 MB of page)."""
    import tracemalloc

    run = make_run(tmp_path)
    pre = run.stage_dir("pretrain")
    first = _steps("pretrain", range(1, 30_001), restart=0, start=T0 + 20)
    second = _steps("pretrain", range(29_001, 40_001), restart=1, start=T0 + 20_000)  # 1,000 steps run again
    _write_jsonl(pre / "metrics.jsonl", first + second)
    _write_jsonl(pre / "eval.jsonl", [{"step": s, "loss": 3.0} for s in range(10, 40_001, 10)])
    _write_jsonl(pre / "events.jsonl", [{"event": "start", "time": T0 + 18, "restart": 0},
                                        {"event": "start", "time": T0 + 19_990, "restart": 1},
                                        {"event": "resumed", "time": T0 + 19_995, "restart": 1, "step": 29_000}])
    del first, second
    tracemalloc.start()
    try:
        stage = next(s for s in report.summarize(run)["stages"] if s.name == "pretrain")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12_000_000, peak  # the rows as dicts: 60 MB
    assert stage.rows.last == 40_000 and stage.steps == STEPS and stage.lost_steps == 1_000
    assert stage.rows.points("loss")[29_000][1] == pytest.approx(7.0 * math.exp(-29_001 / 40) + 0.05 * math.sin(29_001))
    assert [p[0] for p in stage.rows.points("loss")] == list(range(1, 40_001))
    assert report.stage_restarts(run, "pretrain") == [
        "restart 1: killed or crashed at step 30000; resumed from step 29000, 1,000 steps lost"]
    page = report.render_html(report.summarize(run))
    assert len(page) < 1_000_000 and "held-out loss, step 10:" not in page  # no marker per point
    assert page.count("<circle") < 250  # the other stages' few held-out points keep theirs


def test_a_long_run_is_drawn_with_a_few_points_per_pixel_and_keeps_its_spikes():
    """200,000 steps drew 200,000 points per line (a 4 MB page); a spike must still show."""
    import re

    points = [(float(s), 2.0 + math.sin(s / 500) + (9.0 if s == 123_457 else 0.0)) for s in range(1, 200_001)]
    svg = charts.line_chart([charts.Series("loss", points, "#2f6fdf")], y_title="loss")
    (drawn,) = re.findall(r'<polyline[^>]* points="([^"]*)"', svg)
    assert len(drawn.split()) <= 4_000 and len(svg) < 100_000
    ys = [float(p.split(",")[1]) for p in drawn.split()]
    top = min(ys)  # the spike is the highest value: the smallest SVG y (it grows downward)
    assert sorted(ys).count(top) == 1 and top < sorted(ys)[1] - 50


def test_a_report_written_to_a_device_or_pipe_is_written_into_it_never_renamed_over_it(run, tmp_path):
    """`llmops report RUN --out /dev/null` renamed the page over /dev/null, which became a regular file for
    every program on the machine. A FIFO stands for the device here."""
    import stat
    import threading

    from llmops.files import atomic_write

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()))
    reader.start()
    assert report.write(run, pipe) == pipe
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and got and got[0].startswith(b"<!doctype html>")
    with pytest.raises(IsADirectoryError, match="not a regular file"):
        atomic_write(pipe, "text")
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
