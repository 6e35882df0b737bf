"""What the terminal shows of a run: llmops's own lines, fitted to the width; the rest stays in the log."""

from __future__ import annotations

import io

from rich.console import Console

from llmops.runs.view import TerminalView, eval_row, step_row

# What users found in a clean run's terminal, verbatim in shape: the CUDA build of torch on a CPU machine,
# Megatron's notice on every save, torchrun's per-process lines on a cancel, a library warning with its
# source line, and Inductor's warning with a traceback.
NOISE = [
    "No CUDA runtime is found, using CUDA_HOME='/usr/local/cuda'",
    "Overwriting old incomplete / corrupted checkpoint...",
    "W1203 22:08:17.123000 4242 torch/distributed/elastic/multiprocessing/api.py:900] Sending process 4243 "
    "closing signal SIGTERM",
    "E1203 22:08:18.456000 4242 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 75) "
    "local_rank: 0 (pid: 4243) of binary: python",
    "/venv/lib/python3.12/site-packages/transformer_engine/pytorch/module/base.py:631: UserWarning: "
    "Transformer Engine notice",
    "  warnings.warn(",
    "W1203 22:09:00.000000 4243 torch/_inductor/codecache.py:1000] Can't pickle local object "
    "'_choices_class.<locals>.Choices'",
    "Traceback (most recent call last):",
    '  File "torch/_inductor/codecache.py", line 10, in dumps',
    "AttributeError: Can't pickle local object '_choices_class.<locals>.Choices'",
]
OWN = [
    "[llmops] model tiny: 4 layers, hidden 64; 83,264 parameters in this process's shard; layout tp2-pp2-dp1",
    "[step 1/40] loss=6.940936 lr=7.500e-04 grad_norm=1.5406 tok/s=1961 time=0.522s",
    "[llmops] saved checkpoint step=10 in 0.33s to checkpoints/iter_0000010",
    "[eval 20/40] loss=0.987226 acc=0.2000 margin=-0.4837 prefers=0.4000 ref_prefers=0.4000",
    "error: align.data: 3 of 4 lines were quarantined",
]


def _view(width: int = 80, **kwargs) -> tuple[TerminalView, io.StringIO]:
    buf = io.StringIO()
    return TerminalView(Console(file=buf, width=width, highlight=False, color_system=None), **kwargs), buf


def test_training_stage_shows_only_llmops_lines():
    view, buf = _view()
    for line in NOISE[:5] + OWN[:2] + NOISE[5:] + OWN[2:]:
        view.line("pretrain", line)
    shown = buf.getvalue()
    for line in NOISE:
        assert line.strip() not in shown, line
    assert "83,264 parameters" in shown and "saved checkpoint step=10" in shown and "error: align.data" in shown
    assert "loss 6.9409" in shown and "held-out 20/40" in shown
    assert view.hidden == len(NOISE)
    assert all(len(line) <= 80 for line in shown.splitlines())


def test_an_error_is_shown_with_its_problems_and_its_fix():
    """A stage's error went to the terminal without its `Fix:` line (and a spec error without its problem list):
    the fix was only in the log."""
    view, buf = _view(width=200)
    for line in ["[default0]:error: align.data: 5 of 15 lines of d.jsonl were quarantined (malformed_json: 5)",
                 "[default0]:Fix: read runs/x/align-data-sft/quarantine.jsonl and fix the data",
                 "error: /x/spec.yaml: 2 problem(s) in the run spec:", "  - train.steps = 0: must be positive",
                 "  - train.lr = -1: must be positive", *NOISE[:2], "Fix: not an error's, this one",
                 "  - not an error's either"]:
        view.line("sft", line)
    shown = buf.getvalue()
    assert "Fix: read runs/x/align-data-sft/quarantine.jsonl" in shown and "train.lr = -1" in shown
    assert "not an error's" not in shown and view.hidden == 4


def test_verbose_shows_everything():
    view, buf = _view(verbose=True)
    for line in NOISE:
        view.line("pretrain", line)
    assert all(line.strip() in buf.getvalue() for line in NOISE) and view.hidden == 0


def test_prepare_lines_are_llmops_own_but_warnings_are_not():
    view, buf = _view()
    for line in ["prepare clean: started (0.0/12.1 MB)", "wrote data/tiny-cpu: 2,944 documents", NOISE[4], NOISE[5]]:
        view.line("prepare", line)
    shown = buf.getvalue()
    assert "prepare clean: started" in shown and "wrote data/tiny-cpu" in shown and "UserWarning" not in shown


def test_a_failure_is_explained_by_its_last_exception_line_and_debug_shows_the_traceback():
    quiet, _ = _view()
    debug, _ = _view(debug=True)
    for view in (quiet, debug):
        for line in NOISE + ["Traceback (most recent call last):", '  File "model/entrypoint.py", line 38, in main',
                             "    logging.basicConfig(level=...)", "ValueError: Unknown level: 'NOTALEVEL'",
                             "W1203 torchrun: workers failed"]:
            view.line("pretrain", line)
    assert quiet.failure() == ["ValueError: Unknown level: 'NOTALEVEL'"]
    assert debug.failure()[0].startswith("Traceback") and debug.failure()[-1].startswith("ValueError")
    assert len(debug.failure()) == 4


def test_step_rows_drop_columns_rather_than_wrap():
    fields = {"loss": "0.443873", "lr": "0.000e+00", "grad_norm": "2.1331", "tok/s": "5958", "acc": "1.0000",
              "margin": "0.6117", "mfu": "41.2%"}
    wide = step_row(40, 40, fields, 200).plain
    assert all(part in wide for part in ("40/40", "loss 0.4439", "acc 1.000", "margin 0.612", "lr 0.000e+00",
                                         "grad norm 2.133", "5,958 tok/s", "MFU 41.2%"))
    for width in (80, 60, 40):
        row = step_row(40, 40, fields, width).plain
        assert len(row) <= width and "40/40" in row and "loss 0.4439" in row, (width, row)
    narrow = step_row(40, 40, fields, 60).plain
    assert "grad norm" not in narrow and "acc 1.000" in narrow  # the least useful go first


def test_dpo_eval_row_says_what_its_figures_count():
    fields = {"loss": "0.987226", "acc": "0.2000", "margin": "-0.4837", "prefers": "0.4000", "ref_prefers": "0.3000"}
    row = eval_row(20, 40, fields, 80).plain
    assert "reward accuracy 0.20" in row and "chosen more likely 40% (starting weights: 30%)" in row
    assert all(len(line) <= 80 for line in row.splitlines())
    view, buf = _view()
    view.line("dpo", OWN[3])
    view.line("dpo", OWN[3])
    assert buf.getvalue().count("the held-out pairs whose chosen answer") == 1  # explained once
