"""`llmops eval`: lm-evaluation-harness on a run's model, a checkpoint or a Hugging Face folder.

lm-eval runs in its own interpreter (`find_harness`): it pins python-dateutil below 3, which the Kubernetes
client in llmops's environment needs, so it cannot share that environment. There it runs `harness.py`, which
finds and loads the tasks first and says whether they are good; only then is a checkpoint exported (the same
folder `llmops export` writes, into a temporary folder), and lm-eval's ``hf`` model evaluates it. Nothing is
left behind but the results: the temporary folder goes whatever happens.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops.errors import EXIT_FAILED, UserError
from llmops.runs.models import Checkpoint, HFFolder

HARNESS = Path(__file__).with_name("harness.py")
LM_EVAL = "lm-eval[hf]==0.4.13"
INSTALL = (f"python3 -m venv ~/.local/share/llmops/lm-eval && ~/.local/share/llmops/lm-eval/bin/pip install "
           f"'{LM_EVAL}' torch 'transformers>=5.25,<6', then export "
           "LLMOPS_LM_EVAL=~/.local/share/llmops/lm-eval/bin/lm-eval (an environment of its own: lm-eval pins "
           "python-dateutil below 3, llmops's Kubernetes client needs 3 or newer)")
_BAR = re.compile(r"\d+%\|")  # a tqdm progress bar


class EvalFailed(UserError):
    """lm-eval started and then failed: exit 1, with the end of what it said."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class Tasks:
    """--tasks, sorted by kind: lm-eval's own names (glob patterns allowed), task YAML files, folders of them."""

    names: list[str]
    files: list[str]
    folders: list[str]


@dataclass(frozen=True)
class Settings:
    limit: int | None = None
    batch_size: int = 8
    num_fewshot: int | None = None
    device: str = "auto"
    verbose: bool = False


def parse_tasks(text: str) -> Tasks:
    """Each comma-separated item: an existing folder or YAML file (made absolute), else a task name. A path
    that does not exist is an error here, before lm-eval is started."""
    names, files, folders = [], [], []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            folders.append(str(path.resolve()))
        elif path.is_file():
            if path.suffix not in (".yaml", ".yml"):
                raise UserError(f"--tasks {item} is a file but not an lm-eval task YAML file",
                                "pass a task's .yaml file, a folder of them, or a task name")
            files.append(str(path.resolve()))
        elif path.suffix in (".yaml", ".yml") or "/" in item or item.startswith("."):
            raise UserError(f"--tasks {item}: no such file or folder",
                            "check the path (it is read from the current folder), e.g. "
                            "examples/eval/stdlib_docstrings.yaml from the repository's root")
        else:
            names.append(item)
    if not (names or files or folders):
        raise UserError("--tasks names no task", "pass e.g. --tasks examples/eval/stdlib_docstrings.yaml")
    return Tasks(names, files, folders)


def find_harness() -> Path:
    """The Python interpreter that has lm-eval: $LLMOPS_LM_EVAL (its `lm-eval` command, its python, or its
    virtual environment), else this interpreter if it has lm_eval, else the `lm-eval` command on PATH."""
    given = os.environ.get("LLMOPS_LM_EVAL")
    if given:
        path = Path(given).expanduser()
        python = _interpreter(path)
        if python is None:
            raise UserError(f"$LLMOPS_LM_EVAL is {given}, which is not lm-eval's command, python or environment",
                            f"point it at the lm-eval command of an lm-eval install, or install one: {INSTALL}")
        return python
    if importlib.util.find_spec("lm_eval") is not None:
        return Path(sys.executable)
    command = shutil.which("lm-eval") or shutil.which("lm_eval")
    python = _interpreter(Path(command)) if command else None
    if python is None:
        raise UserError("llmops eval needs lm-evaluation-harness (lm-eval), which is not installed here",
                        f"{INSTALL}; or set $LLMOPS_LM_EVAL to an existing install's lm-eval command")
    return python


def _interpreter(path: Path) -> Path | None:
    """The python of an lm-eval install, from its command (the script's #! line), a venv, or the python."""
    if path.is_dir():
        path = path / "bin" / "python"
    if not path.is_file():
        return None
    if path.name.startswith("python"):
        return path
    try:
        first = path.read_bytes()[:512].split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        first = ""
    shebang = Path(first[2:].strip().split(" ")[0]) if first.startswith("#!") else None
    if shebang is not None and shebang.name.startswith("python") and shebang.is_file():
        return shebang
    sibling = path.parent / "python"
    return sibling if sibling.is_file() else None


def evaluate(source: Checkpoint | HFFolder, tasks: Tasks, settings: Settings, *, python: Path,
             info: Callable[[str], None] = print) -> tuple[dict[str, Any], Checkpoint | HFFolder]:
    """lm-eval's results for `source` on `tasks`, with an ``llmops`` key saying what was evaluated and how, and
    what was evaluated: `source`, or its stage's newer checkpoint where a stage still training deleted it
    meanwhile. `source` has passed :func:`llmops_model.hf.folder.check_source` (the CLI checks it before it
    looks for lm-eval)."""
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="llmops-eval-") as tmp:
        work = Path(tmp)
        folder = source.path if isinstance(source, HFFolder) else work / "model"
        job = {"names": tasks.names, "files": tasks.files, "folders": tasks.folders, "verbose": settings.verbose,
               "device": settings.device, "limit": settings.limit, "batch_size": settings.batch_size,
               "num_fewshot": settings.num_fewshot, "output": str(work / "results.json"), "install": INSTALL,
               "model": "hf", "model_args": {"pretrained": str(folder.resolve()), "trust_remote_code": False}}
        with _Harness(python, job, cwd=work, verbose=settings.verbose, info=info) as harness:
            ready = harness.until("ready")
            sizes = ", ".join(f"{name} ({n:,} questions)" if n is not None else name
                              for name, n in ready["tasks"].items())
            info(f"tasks: {sizes}" + (f"; at most {settings.limit} each (--limit)" if settings.limit else ""))
            if isinstance(source, Checkpoint):
                source = _export(source, folder, device=ready["device"], info=info)
            harness.go()
            harness.until("done")
        results = json.loads((work / "results.json").read_text())
    results["llmops"] = {
        "model": source.label, "run": source.run.id if isinstance(source, Checkpoint) else None,
        "stage": getattr(source, "stage", None), "step": getattr(source, "step", None),
        "checkpoint": str(source.path.absolute()), "tasks": tasks.names + tasks.files + tasks.folders,
        "limit": settings.limit,
        "num_fewshot": settings.num_fewshot, "batch_size": settings.batch_size, "device": ready["device"],
        "lm_eval": ready.get("lm_eval"), "evaluated_at": started, "seconds": round(time.time() - started, 1)}
    return results, source


def _export(ck: Checkpoint, folder: Path, *, device: str, info: Callable[[str], None]) -> Checkpoint:
    """The folder `llmops export` would write: fp32 for a CPU, the precision it was trained in for a GPU."""
    import torch

    from llmops_model.hf import export

    folder.mkdir()
    dtype = torch.float32 if device == "cpu" else export.DTYPES[export.default_dtype(ck)]
    return export.write(ck, folder, dtype=dtype, info=info)


class _Harness:
    """harness.py in lm-eval's interpreter: JSON events on its stdout, its stderr relayed (filtered)."""

    def __init__(self, python: Path, job: dict, *, cwd: Path, verbose: bool, info: Callable[[str], None]):
        self.info = info
        self.tail: deque[str] = deque(maxlen=20)
        self.proc = subprocess.Popen([str(python), str(HARNESS), json.dumps(job)], cwd=cwd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.relay = threading.Thread(target=_relay, args=(self.proc.stderr, self.tail),
                                      kwargs={"verbose": verbose, "tty": sys.stderr.isatty()}, daemon=True)
        self.relay.start()

    def __enter__(self) -> _Harness:
        return self

    def __exit__(self, failed, *_) -> None:
        if failed is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)  # done: it is only exiting
        if self.proc.poll() is None:
            self.proc.kill()  # an error or Ctrl-C on this side: lm-eval stops with it
        self.proc.wait()
        self.relay.join(timeout=5)

    def go(self) -> None:
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()

    def until(self, wanted: str) -> dict:
        """Read events until `wanted`; an error event becomes exit 2, an early end exit 1."""
        for raw in self.proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                self.tail.append(raw.decode(errors="replace").rstrip())  # a library printing to stdout
                continue
            if event.get("event") == wanted:
                return event
            if event.get("event") == "error":
                raise UserError(event["message"], event.get("fix"))
            if event.get("event") == "info":
                self.info(event["text"])
        code = self.proc.wait()
        self.relay.join(timeout=5)
        said = "\n".join(self.tail) or "(nothing)"
        raise EvalFailed(f"lm-eval stopped (exit {code}) before it was done; the end of what it said:\n{said}",
                         "--verbose shows all of lm-eval's output; llmops --debug eval ... shows this side's")


def _relay(stream: io.BufferedReader, tail: deque, *, verbose: bool, tty: bool) -> None:
    """lm-eval's stderr: all of it with --verbose; else only its progress bars, on a terminal. Every line is
    kept in `tail` for the message if it fails."""
    pending = b""
    while chunk := stream.read1(65536):
        pending += chunk
        *done, pending = re.split(rb"(?<=[\r\n])", pending)
        for piece in done:
            text = piece.decode(errors="replace")
            line = text.strip("\r\n")
            bar = bool(_BAR.search(line))
            if line.strip() and not bar:
                tail.append(line)
            if verbose or (tty and bar):
                sys.stderr.write(text)
                sys.stderr.flush()
