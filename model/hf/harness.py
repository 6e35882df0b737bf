"""The part of `llmops eval` that runs inside lm-evaluation-harness's own interpreter.

lm-eval pins packages llmops's environment cannot take (python-dateutil below 3, which the Kubernetes client
needs), so it usually lives in a virtual environment of its own and this file is run there by path:
``python harness.py JOB``. It imports the standard library and lm_eval only, never llmops.

It speaks JSON lines on stdout to `llmops_model.hf.evaluation`; lm-eval's own logs and progress bars go to
stderr, which llmops filters. The steps, so that bad input is found before a checkpoint is exported:

1. index and load the tasks (names, YAML files, folders) and say ``ready`` with each task's size and the
   device; or say ``error`` (exit 2) naming the task and the fix;
2. wait for ``go`` on stdin (the model folder is written by then; end of input means stop);
3. evaluate with ``simple_evaluate`` and write its results, without the per-question samples, to the
   job's ``output``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

BAD_INPUT = 2


def say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def quiet(verbose: bool) -> None:
    """lm-eval's, transformers' and datasets' notices only with --verbose; progress bars always."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.simplefilter("ignore")
    for name in ("lm_eval", "datasets", "transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def task_specs(tm, job: dict) -> tuple[list[tuple[str, str]], dict | None]:
    """What to load, each with what the user gave for it: registered names (glob patterns allowed), YAML files,
    and the tasks and groups each folder defines (less the tasks its groups already hold). Or a problem:
    {message, fix}."""
    specs: list[tuple[str, str]] = []
    for name in job["names"]:
        matched = tm.match_tasks([name])
        if not matched:
            close = difflib.get_close_matches(name, tm.all_tasks, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            return [], {"message": f"--tasks {name}: lm-eval has no task, group or tag of that name",
                        "fix": f"{hint}`{Path(sys.executable).parent / 'lm-eval'} ls tasks` lists them; a local "
                               "task is passed as its YAML file or folder"}
        specs += [(m, name) for m in matched]
    for folder in job["folders"]:
        root = Path(folder).resolve()
        entries = {n: e for n, e in tm.task_index.items()
                   if e.yaml_path is not None and root in Path(e.yaml_path).resolve().parents
                   and e.kind.name in ("TASK", "GROUP")}
        held = {t for e in entries.values() if e.kind.name == "GROUP" for t in _children(e.cfg)}
        found = sorted(n for n in entries if n not in held)
        if not found:
            return [], {"message": f"--tasks {folder}: the folder holds no lm-eval task (no YAML file in it, or "
                                   "below it, has a `task:` or `group:` key)",
                        "fix": "pass a folder of lm-eval task YAML files, or a task's YAML file"}
        specs += [(n, folder) for n in found]
    specs += [(str(Path(path).resolve()), path) for path in job["files"]]
    seen: set[str] = set()
    return [(spec, given) for spec, given in specs if not (spec in seen or seen.add(spec))], None


def load_problem(given: str, exc: Exception, *, is_file: bool) -> dict:
    """What to tell the user when lm-eval cannot load a task it was given."""
    shape = isinstance(exc, KeyError) or "Unknown config shape" in str(exc)
    if is_file and shape:
        return {"message": f"--tasks {given} is not an lm-eval task: it has no `task:` or `group:` key",
                "fix": "pass a task YAML file (see examples/eval/stdlib_docstrings.yaml), a folder of them, or a "
                       "task name"}
    return {"message": f"--tasks {given}: lm-eval could not load it: {type(exc).__name__}: {exc}",
            "fix": "check the task's YAML and its code, and that its dataset is reachable (a Hub dataset needs the "
                   "network, or HF_DATASETS_OFFLINE=1 and a cached copy); --verbose shows lm-eval's own messages"}


def _children(cfg: dict | None) -> list[str]:
    tasks = (cfg or {}).get("task") or []
    return [t if isinstance(t, str) else t.get("task", "") for t in (tasks if isinstance(tasks, list) else [tasks])]


def device(name: str) -> tuple[str | None, dict | None]:
    import torch

    if name == "auto":
        return ("cuda" if torch.cuda.is_available() else "cpu"), None
    if name == "cuda" and not torch.cuda.is_available():
        return None, {"message": "--device cuda: lm-eval's torch sees no CUDA GPU",
                      "fix": "leave --device out (auto) or pass cpu; for a GPU, lm-eval's environment needs a "
                             "CUDA build of torch"}
    return name, None


def main() -> int:
    job = json.loads(sys.argv[1])
    quiet(job["verbose"])
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        say("error", message=f"{sys.executable} cannot import lm_eval ({exc})", fix=job["install"])
        return BAD_INPUT
    on, problem = device(job["device"])
    if problem is not None:
        say("error", **problem)
        return BAD_INPUT
    version = getattr(lm_eval, "__version__", "?")
    say("info", text=f"lm-eval {version}: finding the tasks" + (" (indexing its own 14,000 tasks: 15 to 30 s)"
                                                                 if job["names"] else ""))
    tm = TaskManager(include_path=job["folders"] or None, include_defaults=bool(job["names"]))
    specs, problem = task_specs(tm, job)
    if problem is not None:
        say("error", **problem)
        return BAD_INPUT
    sizes: dict[str, int | None] = {}
    for spec, given in specs:
        try:
            loaded = tm.load([spec])
        except Exception as exc:  # its config, its code or its dataset: said now, before anything is exported
            say("error", **load_problem(given, exc, is_file=given in job["files"]))
            return BAD_INPUT
        sizes.update({name: _size(task) for name, task in loaded["tasks"].items()})
        shots = job["num_fewshot"] or 0
        for name, task in loaded["tasks"].items():
            available = _shots(task)
            if shots > 0 and available is not None and shots > available:
                say("error", message=f"--num-fewshot {shots}: task {name} has {available} solved example(s) to "
                                     "put before a question", fix=f"pass --num-fewshot {available} or less")
                return BAD_INPUT
    say("ready", tasks=dict(sorted(sizes.items())), device=on, lm_eval=version)
    if sys.stdin.readline().strip() != "go":
        return 0
    from lm_eval import simple_evaluate

    model_args = dict(job["model_args"])
    if job["model"] == "hf":
        model_args.setdefault("dtype", "float32" if on == "cpu" else "auto")
    say("info", text=f"evaluating on {on}")
    results = simple_evaluate(model=job["model"], model_args=model_args, tasks=[s for s, _ in specs], task_manager=tm,
                              num_fewshot=job["num_fewshot"], batch_size=job["batch_size"], device=on,
                              limit=job["limit"], log_samples=False)
    if results is None:  # only the non-zero ranks of a multi-process run get None
        return 0
    results.pop("samples", None)
    from lm_eval.utils import handle_non_serializable

    Path(job["output"]).write_text(json.dumps(results, indent=1, default=handle_non_serializable) + "\n")
    say("done")
    return 0


def _shots(task) -> int | None:
    """How many few-shot examples a question can get: the task's few-shot pool, less the question itself where
    the pool is the split being evaluated (lm-eval then draws one more and drops it). None where unknown."""
    try:
        sampler = getattr(task, "sampler", None)
        if sampler is None:
            return 0 if task.fewshot_docs() is None else None
        same = task.fewshot_cfg.split == task.config.test_split
        return max(0, len(sampler.fewshot_docs()) - same)
    except Exception:  # another lm-eval version's insides: lm-eval says it, later
        return None


def _size(task) -> int | None:
    try:
        return len(task.eval_docs)
    except Exception:  # a task without test or validation docs says so when it runs
        return None


if __name__ == "__main__":
    sys.exit(main())
