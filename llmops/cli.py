"""The `llmops` command line. Thin commands over library functions.

Exit codes: 0 ok, 1 the run failed (or was cancelled), 2 bad input, with a
one-paragraph message instead of a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from llmops import __version__
from llmops.backends.registry import options as backend_options
from llmops.errors import EXIT_BAD_INPUT, EXIT_FAILED, UserError

app = typer.Typer(
    name="llmops",
    help="From raw text to an aligned GPT on your own GPU clusters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
_state = {"debug": False, "strict": False, "verbose": False}

SpecArg = Annotated[Path, typer.Argument(help="Run spec (YAML).", show_default=False)]
RunArg = Annotated[str, typer.Argument(help="Run id, exact run name (its newest run) or run directory.")]
BackendOpt = Annotated[str | None, typer.Option(help="Override the spec's backend: local, slurm or k8s.")]
RunsDirOpt = Annotated[
    Path | None,
    typer.Option("--runs-dir", help="Where run directories live (env: LLMOPS_RUNS_DIR; default: ./runs)."),
]


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"llmops {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show every line the run's processes print (library warnings, torchrun's "
        "notices), not only llmops's own; the stage logs always keep them.")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse spec fields that run commands by design (Slurm setup lines, ssh options); "
        "for specs from CI or shared repositories (env: LLMOPS_STRICT=1).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug
    _state["strict"] = strict
    _state["verbose"] = verbose


def _with_backend_options(command):
    """Give a command every backend's own options (TorchX's run_opts), declared by the backends.

    The command receives the ones given as ``options``: {backend: {field: value}}. The generic CLI knows
    no backend's options; it only lists what each backend declares, under a help panel of its own.
    """
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "options"]
    owners: dict[str, tuple[str, str]] = {}
    added = []
    for backend, declared in backend_options().items():
        for option in declared:
            name = f"{backend}_{option.field}"
            owners[name] = (backend, option.field)
            added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
                str | None, typer.Option(option.flag, help=option.help, rich_help_panel=f"{backend} backend",
                                         show_default=False)]))

    @functools.wraps(command)
    def wrapper(**kwargs):
        given: dict[str, dict[str, str]] = {}
        for name, (backend, field) in owners.items():
            value = kwargs.pop(name)
            if value is not None:
                given.setdefault(backend, {})[field] = value
        return command(**kwargs, options=given)

    wrapper.__signature__ = signature.replace(parameters=kept + added)
    wrapper.__annotations__ = {p.name: p.annotation for p in kept + added}
    return wrapper


@app.command()
def validate(spec: SpecArg, backend: BackendOpt = None) -> None:
    """Check a run spec (and the backend's rules for it) and print its resolved form's summary."""
    from llmops import runner
    from llmops.spec.load import load_spec

    _, s = runner.check(load_spec(spec, backend=backend), strict=_state["strict"])
    summary = f"[green]ok[/green] {escape(str(spec))}: run '{s.name}' on {s.backend}, stages {' -> '.join(s.stages)}"
    if s.training_stages:
        summary += (f"; {s.resources.nodes} node(s) x {s.resources.procs_per_node} "
                    f"{'CPU process(es)' if s.resources.cpu else 'GPU(s)'}, "
                    f"TP={s.parallelism.tensor} PP={s.parallelism.pipeline} DP={s.data_parallel}, "
                    f"model {s.model.preset or 'custom'} ({s.model.num_layers}x{s.model.hidden_size})")
    if s.train is not None:
        summary += (f", {s.train.steps} steps of {s.train.global_batch_size} sequences "
                    f"({s.num_microbatches} micro-batch(es) per step)")
    out.print(summary)


@app.command()
def schema() -> None:
    """Print the run spec's JSON Schema (for editor completion)."""
    from llmops.spec.load import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command()
def run(
    spec: SpecArg,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Start the run and return at once.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would run; start nothing.")] = False,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Run a spec on this machine (the local backend) and follow it."""
    _submit(spec, backend="local", detach=detach, dry_run=dry_run, runs_dir=runs_dir)


@app.command()
@_with_backend_options
def submit(
    spec: SpecArg,
    backend: BackendOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the rendered request; submit nothing.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow the run after submitting.")] = False,
    runs_dir: RunsDirOpt = None,
    options: dict | None = None,
) -> None:
    """Submit a spec to its backend and return (use --follow to watch it)."""
    _submit(spec, backend=backend, detach=not follow, dry_run=dry_run, runs_dir=runs_dir, options=options)


@app.command()
@_with_backend_options
def render(
    spec: SpecArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write into (created if missing).")],
    backend: BackendOpt = None,
    options: dict | None = None,
) -> None:
    """Write what a submit would run (script or manifests) and the resolved spec, submitting nothing."""
    from llmops import runner
    from llmops.spec.load import load_spec

    request = runner.plan(load_spec(spec, backend=backend), path=out, options=options, strict=_state["strict"])
    for path in runner.render(request):
        sys.stdout.write(f"{path}\n")


@app.command()
def prepare(
    spec: SpecArg,
    phase: Annotated[str | None, typer.Option(
        help="Run one phase (clean, dedup, tokenizer, tokenize, finalize) instead of all.")] = None,
    shard: Annotated[int, typer.Option(min=0, help="The shard of --phase to run (0-based).")] = 0,
    num_shards: Annotated[int | None, typer.Option(
        min=1, help="Shards of the map phases; fixed by the first clean shard.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Processes (default: one per core).")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Work folder (default: <output.dir>/work).")] = None,
    resolved: Annotated[bool, typer.Option(
        "--resolved", hidden=True, help="SPEC is a run's resolved spec.yaml: read it as written.")] = False,
) -> None:
    """Prepare the spec's data: clean, filter, deduplicate, tokenize into Megatron indexed datasets."""
    from llmops.prepare import align_corpus
    from llmops.prepare.executor import prepare as run_prepare
    from llmops.prepare.stats import summary_table
    from llmops.spec.load import load_spec, read_resolved

    s = read_resolved(spec) if resolved else load_spec(spec)
    if s.prepare is None:
        raise UserError(f"{spec}: has no prepare: section", "add one (see examples/tiny-cpu.yaml)")
    # A run's prepare stage: the built-in alignment examples' parse of the standard library goes on a core that
    # prepare's serial steps leave idle, instead of on one rank of the first align stage while the others wait.
    whole = resolved and phase is None  # not one shard of a fanned-out preparation
    warming = align_corpus.warm_cache() if whole and any(a.data.builtin for a in s.align) else None
    try:
        report = run_prepare(s.prepare, phase=phase, shard=shard, num_shards=num_shards, workers=workers,
                             workdir=workdir)
    finally:
        if warming is not None:
            warming.wait()
    if report is not None:
        out.print(summary_table(report))
        out.print(f"wrote {s.prepare.output.dir}: {report['output']['documents']:,} documents, "
                  f"{report['output']['tokens']:,} tokens", markup=False)


def _submit(spec_path: Path, *, backend: str | None, detach: bool, dry_run: bool, runs_dir: Path | None,
            options: dict | None = None) -> None:
    from llmops import runner
    from llmops.runs.rundir import runs_root
    from llmops.spec.load import load_spec

    request = runner.plan(load_spec(spec_path, backend=backend), root=runs_root(runs_dir), options=options,
                          strict=_state["strict"])
    if dry_run:
        sys.stdout.write(request.render())
        return
    run_dir = runner.submit(request)
    err.print(f"run [bold]{escape(run_dir.id)}[/bold] started in {escape(_shown(run_dir.path))}")
    if detach:
        err.print(f"follow it with `llmops logs {run_dir.id} -f`; stop it with `llmops cancel {run_dir.id}`")
        sys.stdout.write(run_dir.id + "\n")
        return
    _follow(run_dir)


def _follow(run_dir, *, new_only: bool = False) -> None:
    from llmops import runner
    from llmops.runs.view import TerminalView

    view = TerminalView(out, verbose=_state["verbose"], debug=_state["debug"])
    try:
        final = runner.follow(run_dir, on_line=view.line, on_stage=view.stage, new_only=new_only)
    except KeyboardInterrupt:
        err.print("\n[yellow]interrupted: asking the run to checkpoint and stop...[/yellow]")
        final = runner.cancel(run_dir)
        _still_stopping(run_dir, final)
    _report_final(run_dir, final, view)


def _report_final(run_dir, final, view) -> None:
    """The run's outcome in one line, why it failed if it did, where its model is and what to do next."""
    from llmops.runs.checkpoints import find_latest
    from llmops.runs.rundir import checkpoint_root

    colour = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow"}.get(final.state, "white")
    took = f" in {_duration(final.ended_at - final.started_at)}" if final.ended_at and final.started_at else ""
    said = "" if final.state == "SUCCEEDED" and final.message in ("", "finished") else f": {final.message}"
    err.print(f"run {escape(run_dir.id)} [{colour}]{final.state.lower()}[/{colour}]{took}{escape(said)}")
    if final.state == "FAILED":
        for line in view.failure():
            err.print(Text(line, style="red" if not line.startswith(" ") else ""))
    deadline = time.time() + (5 if final.backend == "local" else 0)  # its supervisor writes it as it ends
    while not (run_dir.path / "report.html").exists() and time.time() < deadline:
        time.sleep(0.2)
    spec = run_dir.read_spec()
    trained = [s for s in spec.stages if s != "prepare" and final.stages.get(s, {}).get("state") == "SUCCEEDED"]
    if trained:
        found = find_latest(Path(checkpoint_root(spec, trained[-1], run_dir.path)))
        if found.path is not None:
            err.print(f"model:  {escape(_shown(found.path))} ({trained[-1]}, step {found.step})")
    if (run_dir.path / "report.html").exists():
        err.print(f"report: {escape(_shown(run_dir.path / 'report.html'))}")
    if final.state != "SUCCEEDED":
        err.print(f"logs:   {escape(_shown(run_dir.logs))}" + (" (`llmops logs` prints them whole)" if view.hidden
                                                               else ""))
        err.print(f"next:   llmops resume {run_dir.id}")
        # a stage that stopped on bad input (data, a tokenizer) is the user's to fix, as a bad spec is
        raise typer.Exit(EXIT_BAD_INPUT if final.exit_code == EXIT_BAD_INPUT else EXIT_FAILED)
    err.print(f"next:   llmops report {run_dir.id}\n        llmops checkpoints {run_dir.id}")


def _shown(path: Path) -> str:
    """A path as short as it can be said: relative to the working directory when it lies under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@app.command()
def status(
    run: Annotated[str | None, typer.Argument(help="Run id or name; all runs when left out.")] = None,
    runs_dir: RunsDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show one run's state and progress, or a table of all runs."""
    from dataclasses import asdict

    from llmops import runner
    from llmops.runs.rundir import Status, list_runs, resolve_run, runs_root

    root = runs_root(runs_dir)
    targets = [resolve_run(run, root)] if run else list_runs(root)
    rows = []
    for r in targets:
        try:
            st = runner.status(r)
        except UserError as exc:
            if run:  # the one run asked for: its backend's message is the answer
                raise
            try:  # one unreachable cluster, or one damaged run folder, must not hide the other runs
                st = r.read_status()
                st.message = f"(last known) {exc.message}"
            except UserError:
                st = Status(state="UNREADABLE", backend="-", message=exc.message, submitted_at=time.time())
                rows.append((r, st, None))
                continue
        rows.append((r, st, r.progress()))
    if as_json:
        sys.stdout.write(json.dumps([{"id": r.id, "path": str(r.path), **asdict(st), "progress": p}
                                     for r, st, p in rows], indent=1) + "\n")
        return
    if not rows:
        err.print(f"no runs under {escape(str(root))}")
        return
    cells = []
    for r, st, p in rows:
        step = f"{p['step']}/{p['steps']}" if p else "-"
        loss = f"{p['loss']:.4f}" if p and isinstance(p.get("loss"), float | int) else "-"  # nan: diverged
        cells.append([r.id, st.backend, st.state, step, loss, str(st.restarts), _age(st.submitted_at), st.message])
    _print_table(["run", "backend", "state", "step", "loss", "restarts", "age", "message"], cells,
                 drop=["backend", "restarts", "age", "loss"])
    if run and len(rows) == 1:
        _print_stages(*rows[0][:2])


def _print_stages(r, st) -> None:
    """One line per stage: its state, progress (step, tokens, loss) and restarts."""
    spec = r.read_spec()
    if len(spec.stages) < 2 and not st.stages:
        return
    cells = []
    for name in spec.stages:
        rec = st.stages.get(name, {})
        p = r.progress(name) if name != "prepare" else None
        step = f"{p['step']}/{p['steps']}" if p else "-"
        tokens = f"{p['tokens']:,}" if p and p.get("tokens") else "-"
        loss = f"{p['loss']:.4f}" if p and isinstance(p.get("loss"), float | int) else "-"  # nan: diverged
        state = rec.get("state") or ("PENDING" if st.state not in ("SUCCEEDED", "FAILED", "CANCELLED") else "-")
        cells.append([("> " if name == st.stage and st.state == "RUNNING" else "  ") + name, state, step, tokens,
                      loss, str(rec.get("restarts", 0)), rec.get("message", "")])
    _print_table(["stage", "state", "step", "tokens", "loss", "restarts", "message"], cells,
                 drop=["tokens", "restarts", "loss"])
    from llmops.runs.report import stage_restarts, stage_stragglers

    for name in spec.training_stages:
        for line in stage_restarts(r, name):
            out.print(Text(f"{name}: {line}", style="dim"))
        for line in stage_stragglers(r, name):
            out.print(Text(f"{name}: {line}", style="yellow"))


def _print_table(columns: list[str], rows: list[list[str]], *, drop: list[str]) -> None:
    """A table that fits the terminal: the columns in `drop` go, in that order, while it is too narrow; every
    other column is shown whole (ids stay copyable) and the last one, the message, folds, to no less than 24
    characters (a narrower terminal wraps the lines). Where the output is not a terminal (a pipe, a file, CI) and
    COLUMNS does not say a width, nothing folds: a row is one line, for grep (80 columns cut run ids)."""
    widths = {c: max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)}
    flexible = columns[-1]
    shown = list(columns)

    def needed(folded: bool) -> int:
        fixed = sum(widths[x] + 2 for x in shown if x != flexible)
        return fixed + (min(widths[flexible], 24) if folded else widths[flexible])

    piped = not out.is_terminal and not os.environ.get("COLUMNS")
    for c in drop:
        if piped or needed(folded=True) <= out.width:
            break
        shown.remove(c)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for c in columns:
        if c in shown:
            table.add_column(c, no_wrap=c != flexible, overflow="fold" if c == flexible else "ellipsis")
    for r in rows:
        # Cells are shown as written: run ids, messages and log text are never read as rich markup.
        table.add_row(*(Text(r[i]) for i, c in enumerate(columns) if c in shown))
    width = needed(folded=False) if piped else max(out.width, needed(folded=True))
    (out if width == out.width else Console(highlight=False, width=width)).print(table)  # print caps at out's


def _age(t: float) -> str:
    s = int(time.time() - t)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@app.command()
def logs(
    run: RunArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
    stage: Annotated[str | None, typer.Option(
        help="Which stage's logs: prepare, pretrain or an align stage's name (sft, dpo, or its `name:`); "
             "default: the stage running now, else the last one that ran.")] = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Print a run's logs (every restart, in order)."""
    from llmops import runner
    from llmops.runs.rundir import resolve_run, runs_root

    r = resolve_run(run, runs_root(runs_dir))
    try:
        for line in runner.logs(r, follow=follow, stage=stage):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@app.command()
def cancel(
    run: RunArg,
    force: Annotated[bool, typer.Option("--force", help="Kill at once instead of checkpointing first.")] = False,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Stop a run: it saves a checkpoint at the next step boundary and exits."""
    from llmops import runner
    from llmops.runs.rundir import resolve_run, runs_root

    r = resolve_run(run, runs_root(runs_dir))
    final = runner.cancel(r, force=force)
    err.print(f"run {escape(r.id)}: {final.state} {escape(final.message)}")
    _still_stopping(r, final)


def _still_stopping(run, final) -> None:
    """A run that has not stopped within the wait: say so and how to end it, exit 1 (nothing is killed unasked)."""
    from llmops.runs.rundir import TERMINAL

    if final.state not in TERMINAL:
        err.print(f"run {run.id} is still stopping (a step or a checkpoint save can take a while); check it with "
                  f"`llmops status {run.id}`, or kill it at once with `llmops cancel --force {run.id}`")
        raise typer.Exit(EXIT_FAILED)


@app.command()
def resume(
    run: RunArg,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Start and return at once.")] = False,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Start a stopped run again from its latest complete checkpoint."""
    from llmops import runner
    from llmops.runs.rundir import resolve_run, runs_root

    r = runner.resume(resolve_run(run, runs_root(runs_dir)))
    err.print(f"run [bold]{escape(r.id)}[/bold] resumed")
    if not detach:
        _follow(r, new_only=True)


@app.command()
def report(
    run: RunArg,
    out_path: Annotated[Path | None, typer.Option(
        "--out", help="Where to write it (default: RUN/report.html).")] = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Write the run's HTML report (loss curves, throughput, restarts) and print where the time went."""
    from llmops import runner
    from llmops.runs import report as rep
    from llmops.runs.rundir import resolve_run, runs_root

    r = resolve_run(run, runs_root(runs_dir))
    if out_path is not None:
        rep.check_out(out_path)
    stale = None
    try:
        runner.status(r)  # brings a remote run's files over first
    except UserError as exc:
        stale = exc
    summary = rep.summarize(r)  # a damaged run folder: its error alone (it was printed twice)
    if stale is not None:
        err.print(f"[yellow](from the files already here: {escape(stale.message)})[/yellow]")
    out.print(f"[bold]{escape(r.id)}[/bold]: {escape(summary['state'])} in {summary['wall']:.0f} s")
    stages = Table(box=None, header_style="bold")
    times = Table(box=None, header_style="bold", title="where the time went (s)", title_justify="left")
    for col in ("stage", "state", "step", "loss", "tokens/s", "restarts", "lost steps"):
        stages.add_column(col, no_wrap=True)
    for col in ("stage", "queue", "start-up", "training", "checkpointing", "lost work"):
        times.add_column(col, no_wrap=True, justify="right" if col != "stage" else "left")
    for s in summary["stages"]:
        if isinstance(s, rep.PrepareSummary):
            stages.add_row(Text(s.name), Text(s.state), "-", "-", "-", str(s.restarts), "-")
            times.add_row(Text(s.name), "-", "-", f"{s.seconds:.1f}" if s.seconds is not None else "-", "-", "-")
            continue
        stages.add_row(Text(s.name), Text(str(s.state)), f"{s.rows.last}/{s.steps}" if s.rows else "-",
                       f"{s.final_loss:.4f}" if s.final_loss is not None else "-",
                       f"{s.tokens_per_s:,.0f}" if s.tokens_per_s else "-", str(s.restarts), str(s.lost_steps))
        times.add_row(Text(s.name), *(f"{s.time[k]:.1f}" for k in ("queue", "startup", "training", "checkpointing",
                                                              "lost")))
    out.print(stages)
    out.print(times)
    if summary["evaluations"]:
        out.print(_scores_table([(f"{e.stage} step {e.step}", e.scores, bool(e.limit)) for e in summary["evaluations"]],
                                title="evaluations (llmops eval)"))
    path = rep.write(r, out_path)
    err.print(f"report: {path}")


def _scores_table(groups: list[tuple[str | None, list, bool]], title: str | None = None) -> Table:
    """lm-eval scores, one row per task and metric; `groups` are (checkpoint or None, scores, computed with
    --limit)."""
    table = Table(box=None, header_style="bold", title=title, title_justify="left")
    labelled = any(label for label, _, _ in groups)
    for col in (["checkpoint"] if labelled else []) + ["task", "metric", "value", "stderr", "questions"]:
        table.add_column(col, no_wrap=True, justify="right" if col in ("value", "stderr", "questions") else "left")
    for label, scores, limited in groups:
        for s in scores:
            # Text: task and metric names come from lm-eval's results, never read as rich markup
            table.add_row(*([Text(label or "-")] if labelled else []), Text(s.task), Text(s.metric), f"{s.value:.4f}",
                          f"± {s.stderr:.4f}" if s.stderr is not None else "-",
                          (f"{s.questions:,}" if s.questions is not None else "-") + (" (limit)" if limited else ""))
    return table


@app.command()
def checkpoints(
    target: Annotated[str, typer.Argument(help="A checkpoint root (holding iter_*), a run id, or a run directory.")],
    verify: Annotated[str | None, typer.Option(
        "--verify", help="Check one checkpoint in depth: its step number, or 'latest'.")] = None,
    stage: Annotated[str | None, typer.Option(help="For a run: one training stage's checkpoints.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    runs_dir: RunsDirOpt = None,
) -> None:
    """List checkpoints (step, TP/PP layout, size, completeness), and verify one."""
    from llmops.runs import checkpoints as ck
    from llmops.runs.rundir import runs_root

    roots = ck.roots(target, runs_root(runs_dir))
    if stage is not None:
        labels = [label for label, _ in roots]
        roots = [(label, root) for label, root in roots if label == stage]
        if not roots:
            raise UserError(f"--stage {stage}: {target} has no such training stage ({', '.join(labels)})",
                            f"pass one of {', '.join(labels)}")
    found = [(label, root, ck.describe(root)) for label, root in roots]
    if verify is not None:
        _verify_checkpoint(found, verify, as_json=as_json)
        return
    if as_json:
        sys.stdout.write(json.dumps([{"stage": label, "root": str(root), "checkpoints": [i.as_json() for i in infos]}
                                     for label, root, infos in found], indent=1) + "\n")
        return
    table = Table(box=None, header_style="bold")
    for col in ("stage", "step", "layout", "size", "saved", "state"):
        table.add_column(col, no_wrap=col != "state", overflow="fold")
    for label, root, infos in found:
        if not infos:
            table.add_row(Text(label), "-", "-", "-", "-", Text(f"no checkpoints in {root}"))
        for i in infos:
            layout = "tp{tp}-pp{pp}-dp{dp}".format(**i.layout) if i.layout else "-"
            saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.saved_at)) if i.saved_at else "-"
            if i.complete:
                state = "[green]latest[/green]" if i.latest else "complete"
            else:
                state = f"[red]{escape(i.problem)}[/red]"
            table.add_row(Text(label), str(i.step), Text(layout), _size(i.size), saved, state)
    out.print(table)


def _verify_checkpoint(found: list, which: str, *, as_json: bool) -> None:
    from llmops.runs import checkpoints as ck

    infos = [i for _, _, group in found for i in group]
    if which == "latest":
        chosen = [i for i in infos if i.latest]
    elif which.isdigit():
        chosen = [i for i in infos if i.step == int(which)]
    else:
        raise UserError(f"--verify {which!r} is not a step number or 'latest'", "pass e.g. --verify 40")
    if len(chosen) != 1:
        steps = ", ".join(str(i.step) for i in infos) or "none"
        raise UserError(f"--verify {which}: {'no' if not chosen else 'more than one'} checkpoint matches "
                        f"(steps here: {steps})", "pass one of those steps, and --stage for a run of several stages")
    info = chosen[0]
    problem = ck.verify_deep(info.path) if not info.path.name.endswith(".partial") else info.problem
    if as_json:
        sys.stdout.write(json.dumps({**info.as_json(), "verified": problem is None, "problem": problem}) + "\n")
    elif problem is None:
        out.print(f"[green]ok[/green] {escape(str(info.path))}: step {info.step}, every file and tensor range present")
    else:
        out.print(f"[red]broken[/red] {escape(str(info.path))}: {escape(problem)}", soft_wrap=True)
    if problem is not None:
        raise typer.Exit(EXIT_FAILED)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


StageOpt = Annotated[str | None, typer.Option(help="For a run: the training stage (default: the last that saved).")]
StepOpt = Annotated[int | None, typer.Option(help="The checkpoint's step (default: the stage's latest).")]


def _model_imports() -> None:
    """Before the model side is imported: transformers present, Megatron's notices off, W&B hidden (Megatron
    imports it)."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise UserError("this command needs transformers, which is not installed",
                        "pip install 'llmops[hf]' (transformers, tokenizers, safetensors)")
    from llmops_model.compat import mcore

    mcore.quiet_known_warnings()
    mcore.hide_wandb()


@app.command()
def export(
    target: Annotated[str, typer.Argument(
        help="A run (id, exact name or folder), a checkpoint root, or one iter_* checkpoint.", show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", help="The folder to write: new, or empty.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="hf: a Hugging Face transformers model folder.")] = "hf",
    stage: StageOpt = None,
    step: StepOpt = None,
    dtype: Annotated[str | None, typer.Option(
        help="bf16 or fp32 (default: the precision the model was trained in).")] = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Write a checkpoint of any TP/PP layout as a Hugging Face model folder.

    transformers loads it with AutoModelForCausalLM / AutoTokenizer and no custom code (GPT-style models as
    GPT-2, Llama-style ones as Llama), so vLLM and lm-evaluation-harness serve and evaluate it as they are.
    """
    from llmops.runs import models
    from llmops.runs.rundir import runs_root

    if fmt != "hf":
        raise UserError(f"--format {fmt!r} is not a format llmops exports", "pass --format hf")
    if dtype not in (None, "bf16", "fp32"):
        raise UserError(f"--dtype {dtype!r} is not bf16 or fp32", "pass --dtype bf16 or --dtype fp32")
    source = models.resolve(target, runs_root=runs_root(runs_dir), stage=stage, step=step)
    models.check_out(out_dir)
    _model_imports()
    from llmops_model.hf import export as hf_export

    source = hf_export.export(source, out_dir, dtype=dtype, info=_say)  # newer, if training deleted it meanwhile
    err.print(f"exported {escape(source.label)} to {escape(_shown(out_dir))}")
    err.print(f"load it: AutoModelForCausalLM.from_pretrained({str(out_dir)!r})", markup=False)
    if source.tokenizer is not None:  # no text goes into a model without one
        err.print(f"try it:  llmops generate {shlex.quote(str(out_dir))} --prompt 'Hello'", markup=False)


@app.command()
def generate(
    target: Annotated[str, typer.Argument(
        help="A run (id, exact name or folder), a checkpoint, or a Hugging Face model folder.", show_default=False)],
    prompt: Annotated[str | None, typer.Option(help="Text to complete (with --chat: the first message).")] = None,
    prompts: Annotated[Path | None, typer.Option(
        help='A JSONL file of {"prompt": text} or {"messages": [...]} lines to complete as a batch.')] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Where --prompts writes its completions (JSONL).")]
    = None,
    chat: Annotated[bool, typer.Option(help="Talk to the model through its chat template, turn by turn.")] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=1_000_000, help="Longest completion, in tokens.")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, max=100.0, help="0 is greedy (the same text each time).")]
    = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling (with a temperature).")] = 1.0,
    top_k: Annotated[int, typer.Option(min=0, help="Sample among the k likeliest tokens; 0 is all.")] = 0,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed of the sampling.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="Prompts per batch with --prompts.")] = 8,
    stage: StageOpt = None,
    step: StepOpt = None,
    device: Annotated[str, typer.Option(help="auto (a GPU if there is one), cpu or cuda.")] = "auto",
    compile_step: Annotated[bool, typer.Option(
        "--compile", help="GPU: a static KV cache and a compiled decoding step; a slow first call, then 1.6x "
        "(batch 1) to 2.9x (batch 32) the tokens/s: for batches and long completions.")] = False,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Complete a prompt with a trained model (streamed), chat with it, or complete a file of prompts."""
    from llmops.runs import models
    from llmops.runs.rundir import runs_root

    if sum(x is not None for x in (prompt, prompts)) + chat == 0:
        raise UserError("nothing to complete", "pass --prompt TEXT, --prompts FILE.jsonl --out FILE.jsonl, or --chat")
    if prompt is not None and not prompt:
        raise UserError("--prompt is empty", "give it some text to complete")
    if prompts is not None and (prompt is not None or chat):
        raise UserError("--prompts completes a file on its own", "leave out --prompt and --chat with --prompts")
    if (prompts is None) != (out_file is None):
        raise UserError("--prompts and --out go together", "pass both: --prompts IN.jsonl --out OUT.jsonl")
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {device!r} is not auto, cpu or cuda", "pass one of those")
    source = models.resolve(target, runs_root=runs_root(runs_dir), stage=stage, step=step, allow_hf=True)
    if out_file is not None and (out_file.exists() or out_file.is_symlink() or not out_file.parent.is_dir()):
        raise UserError(f"--out {out_file}: " + ("its folder does not exist" if not out_file.parent.is_dir() else
                                                 "it already exists"),
                        "name a new file in an existing folder (completions are never written over a file)")
    _model_imports()
    from llmops_model.hf import generate as gen

    rows = gen.read_prompts(prompts) if prompts is not None else None
    sampling = gen.Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            seed=seed)
    with gen.opened(source, device=gen.pick_device(device), compile=compile_step, info=_say) as model:
        if rows is not None:
            gen.run_batch(model, rows, sampling, batch_size=batch_size, out=out_file, info=_say)
        elif chat:
            _chat(model, sampling, first=prompt)
        else:
            _complete_one(model, model.encode(prompt), sampling, echo=prompt)


@app.command(name="eval")
def eval_(
    target: Annotated[str, typer.Argument(
        help="A run (id, exact name or folder), a checkpoint, or a Hugging Face model folder.", show_default=False)],
    tasks: Annotated[str, typer.Option(
        help="Comma-separated lm-eval tasks: its own names (hellaswag, arc_*), task YAML files, or folders of "
        "them (e.g. examples/eval/stdlib_docstrings.yaml).", show_default=False)],
    limit: Annotated[int | None, typer.Option(
        min=1, help="Only the first N questions of each task: a quick look, not a score to compare.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="Requests per forward pass.")] = 8,
    num_fewshot: Annotated[int | None, typer.Option(
        min=0, help="Solved examples put before each question (default: the task's own setting).")] = None,
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="Also write lm-eval's results JSON to this new file (a run's are kept in RUN/evals/).")]
    = None,
    stage: StageOpt = None,
    step: StepOpt = None,
    device: Annotated[str, typer.Option(help="auto (a GPU if lm-eval's torch sees one), cpu or cuda.")] = "auto",
    runs_dir: RunsDirOpt = None,
) -> None:
    """Evaluate a model with EleutherAI's lm-evaluation-harness; a run's results go into its report."""
    from llmops.runs import evaluations, models
    from llmops.runs.rundir import atomic_write, runs_root

    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {device!r} is not auto, cpu or cuda", "pass one of those")
    source = models.resolve(target, runs_root=runs_root(runs_dir), stage=stage, step=step, allow_hf=True)
    if out_file is not None and (out_file.exists() or out_file.is_symlink() or not out_file.parent.is_dir()):
        raise UserError(f"--out {out_file}: " + ("its folder does not exist" if not out_file.parent.is_dir() else
                                                 "it already exists"),
                        "name a new file in an existing folder (results are never overwritten)")
    from llmops_model.hf import evaluation
    from llmops_model.hf import folder as hf_folder

    hf_folder.check_source(source)  # before lm-eval is looked for: the model's own problems first
    task_list = evaluation.parse_tasks(tasks)
    python = evaluation.find_harness()
    if isinstance(source, models.Checkpoint):
        _model_imports()
    settings = evaluation.Settings(limit=limit, batch_size=batch_size, num_fewshot=num_fewshot, device=device,
                                   verbose=_state["verbose"])
    try:
        results, source = evaluation.evaluate(source, task_list, settings, python=python, info=_say)
    except KeyboardInterrupt:
        err.print("\n[yellow]interrupted: lm-eval stopped; nothing was written[/yellow]")
        raise typer.Exit(EXIT_FAILED) from None
    out.print(_scores_table([(None, evaluations.scores(results), limit is not None)]))
    if out_file is not None:
        atomic_write(out_file, json.dumps(results, indent=1) + "\n")
        err.print(f"results: {escape(_shown(out_file))}")
    if isinstance(source, models.Checkpoint):
        saved = evaluations.save(source.run, results)
        err.print(f"results: {escape(_shown(saved))} (in `llmops report {escape(source.run.id)}`)")
        _track_evaluation(source, evaluations.metrics(results), saved)


def _track_evaluation(source, scores: dict[str, float], saved: Path) -> None:
    """Send a run's evaluation to the trackers its spec names; the results are already saved, so a tracker
    that cannot be reached, or a missing client, is said and is no failure."""
    from llmops_model.train import tracking

    try:
        outcomes = tracking.log_evaluation(source.spec, source.run.path, stage=source.stage, step=source.step,
                                           scores=scores, files=[saved], info=_say)
    except UserError as exc:
        err.print(f"[yellow]not sent to the trackers: {escape(exc.message)}[/yellow] ({escape(exc.fix or '')})")
        return
    for o in outcomes:
        if o["state"] == "ok":
            err.print(f"sent to {o['backend']}: {o['sent']} scores as {escape(source.stage)}/lm_eval/... "
                      f"at step {source.step}")


def _say(line: str) -> None:
    err.print(line, markup=False, soft_wrap=True)  # as written: a command or a path stays one line to copy


def _complete_one(model, ids: list[int], sampling, *, echo: str | None) -> str:
    """Stream one completion to stdout as it is made; say on stderr how long it took and why it stopped."""
    def write(text: str) -> None:  # plain writes: a console would wrap and restyle the model's text
        sys.stdout.write(text)
        sys.stdout.flush()

    model.check_fits(len(ids), sampling.max_new_tokens)  # before the echo: stdout holds nothing on an error
    started = time.monotonic()
    if echo is not None:
        write(echo)
    (done,) = model.complete([ids], sampling, on_text=write)
    write("\n")
    took = time.monotonic() - started
    why = "end of sequence" if done.finish_reason == "stop" else f"--max-new-tokens {sampling.max_new_tokens}"
    err.print(f"[dim]{done.tokens} tokens in {took:.2f}s ({done.tokens / took:.1f} tokens/s), stopped at {why}"
              "[/dim]")
    return done.text


def _chat(model, sampling, *, first: str | None) -> None:
    """Turn by turn at a prompt, the conversation kept; an empty line or end of input ends it. A typed message
    too long for the model's context is refused and the chat goes on (--prompt's: exit 2)."""
    history: list[dict[str, str]] = []
    model.encode([{"role": "user", "content": "hi"}])  # no chat template: the error before the first prompt
    err.print("[dim]chat: an empty line or Ctrl-D ends it[/dim]")
    while True:
        typed = first is None
        if not typed:
            text, first = first, None
            sys.stdout.write(f"you> {text}\n")
        else:
            try:
                text = input("you> ")
            except EOFError:
                sys.stdout.write("\n")
                return
        if not text.strip():
            return
        try:
            history, turn, ids = _fit_chat(model, [*history, {"role": "user", "content": text}], sampling)
        except UserError as exc:
            if not typed:
                raise
            err.print(f"[red]error:[/red] {escape(exc.render())}", soft_wrap=True)
            continue
        sys.stdout.write("model> ")
        history.append({"role": "assistant", "content": _complete_one(model, ids, turn, echo=None)})


def _fit_chat(model, history: list[dict[str, str]], sampling):
    """The conversation, sampling and ids of the next turn within the model's context: the oldest exchanges
    are left out until a whole answer fits, then the answer is shortened to the room left, each said on
    stderr. UserError when the last message alone leaves no room."""
    import dataclasses

    ids, dropped, context = model.encode(history), 0, model.context
    while context is not None and len(ids) + sampling.max_new_tokens > context and len(history) > 1:
        history, dropped = history[2:], dropped + 1  # a user's message and its answer
        ids = model.encode(history)
    if dropped:
        err.print(f"[dim](the oldest {dropped} exchange(s) left out: the model's context is {context} tokens)[/dim]")
    if context is not None and len(ids) + sampling.max_new_tokens > context:
        if len(ids) >= context:
            raise UserError(f"the message takes {len(ids)} tokens with the chat template, and the model's context "
                            f"is {context}: no room for an answer", "write a shorter message")
        sampling = dataclasses.replace(sampling, max_new_tokens=context - len(ids))
        err.print(f"[dim](the answer is cut to {sampling.max_new_tokens} tokens: the model's context is {context} "
                  "tokens)[/dim]")
    return history, sampling, ids


@app.command()
def provision(
    cloud: Annotated[str, typer.Argument(help="aws or oci.")],
    nodes: Annotated[int, typer.Option("--nodes", help="Number of GPU nodes.")] = 1,
    gpu_type: Annotated[str | None, typer.Option(
        "--gpu-type", help="aws: instance type (p5.48xlarge); oci: bare-metal shape (BM.GPU.H100.8).")] = None,
    name: Annotated[str, typer.Option("--name", help="Cluster and profile name.")] = "llmops",
    region: Annotated[str | None, typer.Option(
        "--region", help="Region (default: $AWS_REGION on aws, $OCI_CLI_REGION on oci).")] = None,
    zone: Annotated[str | None, typer.Option(
        "--zone", help="Zone (aws) or availability domain (oci) of the GPU nodes.")] = None,
    reservation: Annotated[str | None, typer.Option(
        "--reservation", help="Capacity reservation to launch into (aws cr-..., oci OCID).")] = None,
    capacity_block: Annotated[bool, typer.Option(
        "--capacity-block", help="aws: the reservation is a Capacity Block for ML.")] = False,
    api_cidr: Annotated[list[str] | None, typer.Option(
        "--api-cidr", help="IPv4 CIDR (address/1-32, e.g. 203.0.113.0/24) allowed to reach the Kubernetes API "
                           "(repeatable); none keeps it private.")] = None,
    tenancy: Annotated[str | None, typer.Option("--tenancy", help="oci: tenancy OCID.")] = None,
    compartment: Annotated[str | None, typer.Option("--compartment", help="oci: compartment OCID.")] = None,
    gpu_image: Annotated[str | None, typer.Option("--gpu-image", help="oci: RDMA GPU image OCID.")] = None,
    home_region: Annotated[str | None, typer.Option(
        "--home-region", help="oci: tenancy home region (default: --region).")] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Show Terraform's plan; create nothing.")] = False,
    destroy: Annotated[bool, typer.Option("--destroy", help="Tear the cluster down.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Apply or destroy without asking first.")] = False,
    workdir: Annotated[Path | None, typer.Option(
        "--workdir",
        help="Cluster folder (default: $LLMOPS_CLUSTERS_DIR/<name>, else ~/.local/share/llmops/clusters/<name>).",
    )] = None,
) -> None:
    """Create a GPU cluster with Terraform (or --plan, --destroy); write its kubeconfig and profile."""
    from llmops.provision import terraform
    from llmops.provision.request import request_from_args

    req = request_from_args(cloud, nodes=nodes, gpu_type=gpu_type, name=name, region=region, zone=zone,
                                 reservation=reservation, capacity_block=capacity_block, api_cidrs=api_cidr,
                                 tenancy=tenancy, compartment=compartment, gpu_image=gpu_image,
                                 home_region=home_region, plan=plan, destroy=destroy, yes=yes, workdir=workdir)
    terraform.run(req, say=_say)  # plain text: paths and commands, never rich markup, never re-wrapped

def main() -> None:
    """Console entry point: maps errors to exit codes and one-paragraph messages.

    Click's own usage errors (unknown option, missing argument) already exit 2
    with a usage line; UserError from the library is rendered here.
    """
    try:
        app(standalone_mode=True)
    except UserError as exc:
        if _state["debug"]:
            raise
        err.print("[red]error:[/red]", exc.render().replace("[", "\\["), soft_wrap=True)
        sys.exit(exc.exit_code)
