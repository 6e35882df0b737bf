"""What a person following a run sees: llmops's own lines, fitted to the terminal.

A stage's log holds everything its processes printed: llmops's lines, and
also library warnings, torchrun's per-process notices, Megatron's logging and,
when something breaks, tracebacks. The log keeps all of it (``llmops logs``
prints it whole); the terminal shows only what llmops itself says, unless
``--verbose`` asks for the rest:

* training stages: the lines llmops's processes mark as theirs (``[llmops]``,
  the ``[step ...]`` and ``[eval ...]`` lines, ``error:``), an allow-list, so
  a new library's notices never reach the terminal;
* data preparation, which prints only through llmops's own console: every line
  but the recognisable noise (Python warnings, tracebacks).

Step lines are redrawn as a row that fits the terminal: when it is narrow,
the least useful columns go (grad norm first, loss last) rather than the row
wrapping. When a stage fails, the last exception line of the hidden output is
kept to say why (``--debug`` prints the whole traceback).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

from llmops.runs.logs import parse_step_line

OWN_PREFIX = "[llmops] "
EVAL_LINE = re.compile(r"^\[eval (\d+)/(\d+)\] (.*)$")
# torchrun --tee/--log-line-prefix style "[default0]:" or "[rank0]:" in front of a worker's line.
PROCESS_PREFIX = re.compile(r"^\[[A-Za-z_]*\d+\]:")
PYTHON_WARNING = re.compile(r"^\S.*:\d+: \w*Warning: |^\s+warnings\.warn\(")

# Columns of a step row, most useful first; a narrow terminal drops them from the end.
STEP_COLUMNS = ("step", "loss", "acc", "margin", "tok/s", "pct", "mfu", "lr", "grad_norm")


@dataclass
class Column:
    text: str
    style: str = ""


def _number(value: str, digits: int) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except ValueError:
        return value


def _tokens(value: str) -> str:
    try:
        return f"{float(value):,.0f}"
    except ValueError:
        return value


def step_row(step: int, steps: int, fields: dict[str, str], width: int) -> Text:
    """One training step as a row of at most `width` characters."""
    cells = {
        "step": Column(f"{step:>{len(str(steps)) + 1}}/{steps}", "bold"),
        "pct": Column(f"{100 * step / max(steps, 1):3.0f}%"),
        "loss": Column(f"loss {_number(fields.get('loss', '-'), 4)}", "cyan"),
        "lr": Column(f"lr {fields.get('lr', '-')}"),
        "grad_norm": Column(f"grad norm {_number(fields.get('grad_norm', '-'), 3)}"),
        "tok/s": Column(f"{_tokens(fields.get('tok/s', '-'))} tok/s"),
    }
    if "mfu" in fields:
        cells["mfu"] = Column(f"MFU {fields['mfu']}")
    for key in ("acc", "margin"):
        if key in fields:
            cells[key] = Column(f"{key} {_number(fields[key], 3)}", "cyan")
    order = ["step", "pct", "loss", "acc", "margin", "lr", "grad_norm", "tok/s", "mfu"]
    shown = [k for k in order if k in cells]
    for drop in reversed(STEP_COLUMNS):  # least useful first
        if _width(cells, shown) <= width or len(shown) <= 2:
            break
        if drop in shown and drop not in ("step", "loss"):
            shown.remove(drop)
    row = Text()
    for i, key in enumerate(shown):
        if i:
            row.append("  ")
        row.append(cells[key].text, style=cells[key].style)
    return row


def _width(cells: dict[str, Column], shown: list[str]) -> int:
    return sum(len(cells[k].text) for k in shown) + 2 * (len(shown) - 1)


def eval_row(step: int, steps: int, fields: dict[str, str], width: int) -> Text:
    """A held-out evaluation, in words; DPO's preference figures go on a line of their own when narrow."""
    parts = [f"held-out {step}/{steps}", f"loss {_number(fields.get('loss', '-'), 4)}"]
    if "acc" in fields:
        parts.append(f"reward accuracy {_number(fields['acc'], 2)}")
    if "margin" in fields:
        parts.append(f"margin {_number(fields['margin'], 3)}")
    text = "  ".join(parts)
    if "prefers" in fields:
        ref = f" (starting weights: {_percent(fields['ref_prefers'])})" if "ref_prefers" in fields else ""
        more = f"chosen more likely {_percent(fields['prefers'])}{ref}"
        text += ("  " if len(text) + 2 + len(more) <= width else "\n  ") + more
    return Text(text, style="magenta")


def _percent(value: str) -> str:
    try:
        return f"{100 * float(value):.0f}%"
    except ValueError:
        return value


class TerminalView:
    """Prints a run's log lines as a person wants them: llmops's own, fitted to `console`'s width."""

    def __init__(self, console: Console, *, verbose: bool = False, debug: bool = False, keep: int = 400):
        self.console, self.verbose, self.debug = console, verbose, debug
        self.hidden = 0
        self.recent: deque[str] = deque(maxlen=keep)  # the hidden lines, for a failure's explanation
        self.explained_prefers = False
        self.in_error = False  # after an `error: ` line: its problem list and `Fix: ` line belong to it

    def stage(self, name: str, index: int, total: int) -> None:
        self.console.rule(Text(f"{name} ({index}/{total})", style="bold"), align="left", style="dim")

    def line(self, stage: str, raw: str) -> None:
        line = PROCESS_PREFIX.sub("", raw, count=1)
        if self.in_error and line.startswith(("Fix: ", "  - ")):
            self.console.print(Text(line), soft_wrap=True)
            return
        self.in_error = line.startswith("error: ")
        width = max(self.console.width, 40)
        parsed = parse_step_line(line)
        if parsed is not None:
            self.console.print(step_row(parsed.step, parsed.steps, parsed.fields, width), no_wrap=True,
                               overflow="ellipsis")
            return
        m = EVAL_LINE.match(line.strip())
        if m:
            fields = dict(kv.split("=", 1) for kv in m.group(3).split() if "=" in kv)
            self.console.print(eval_row(int(m.group(1)), int(m.group(2)), fields, width))
            if "prefers" in fields and not self.explained_prefers:
                self.explained_prefers = True
                self.console.print(Text("  (chosen more likely: the held-out pairs whose chosen answer the "
                                        "model finds more likely than the rejected one)", style="dim"))
            return
        if line.startswith(OWN_PREFIX):
            self.console.print(Text(line[len(OWN_PREFIX):]))
            return
        if line.startswith("error: ") or (stage == "prepare" and not _noise(line)):
            self.console.print(Text(line))
            return
        if self.verbose:  # as the process wrote it, whole
            self.console.print(Text(line), soft_wrap=True)
            return
        self.hidden += 1
        self.recent.append(line)

    def failure(self) -> list[str]:
        """What the hidden lines say about a failure: the last traceback (whole with debug), else nothing."""
        lines = list(self.recent)
        start = max((i for i, x in enumerate(lines) if x.startswith("Traceback (most recent call last)")),
                    default=None)
        if start is None:
            return []
        block = [lines[start]]
        for x in lines[start + 1:]:
            block.append(x)
            if x and not x.startswith((" ", "\t")) and not x.startswith("Traceback"):
                break  # the exception line ends the traceback
        return block if self.debug else block[-1:]


def _noise(line: str) -> bool:
    return bool(PYTHON_WARNING.match(line)) or line.startswith(("Traceback (most recent call last)", "  File "))
