"""Which model `llmops export` and `llmops generate` mean: a run, a checkpoint, or a Hugging Face folder.

Resolved here, without torch, so that a wrong name, a missing stage or a step
that was never saved is an exit-2 message before anything heavy is imported.
A checkpoint is only usable with the spec that trained it (its shape, its
tokenizer, its chat markers): it is found through the run the checkpoint lives
in, or the run its folder's owner file names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from llmops.errors import UserError
from llmops.runs import checkpoints as ck
from llmops.runs.rundir import RunDir, checkpoint_root, resolve_run
from llmops.spec import hf
from llmops.spec.align import ChatTokens
from llmops.spec.run import RunSpec

T = TypeVar("T")
READ_TRIES = 3  # a stage that prunes each checkpoint before a read ends is saving faster than it can be read


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint and what it takes to use it."""

    path: Path
    spec: RunSpec
    run: RunDir
    stage: str
    step: int
    tokenizer: str | None  # what the stage's data was tokenized with: a SentencePiece model's path, or hf:DIR
    template: ChatTokens | None  # the chat markers, for stages trained on conversations
    pinned: bool = False  # the user named this step (--step, or an iter_* folder); else the stage's latest

    @property
    def label(self) -> str:
        return f"{self.run.id} {self.stage} step {self.step}"


@dataclass(frozen=True)
class HFFolder:
    """A Hugging Face model folder (config.json and weights)."""

    path: Path

    @property
    def label(self) -> str:
        return str(self.path)


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
        or (path / "pytorch_model.bin").is_file())


def check_out(out: Path) -> None:
    """UserError unless `out` is free for an export: absent, or an empty folder (never overwritten); not a
    symbolic link (the export is renamed into place) nor the current folder; not inside a run's checkpoint
    folder (`llmops checkpoints` would take it for a failed save, and a prune could delete it)."""
    if out.is_symlink():
        raise UserError(f"--out {out} is a symbolic link", "name a new folder (export writes a folder of its own)")
    if out.resolve() == Path.cwd().resolve():
        raise UserError(f"--out {out} is the current folder", "name a new folder, e.g. --out ./model")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not an empty folder",
                        "name a new folder (export never overwrites one)")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: its parent folder does not exist", f"create {out.parent} first")
    here = out.parent.resolve()
    inside = next((p for p in (here, *here.parents) if (p / ck.OWNER).is_file() or (p / ck.TRACKER).is_file()
                   or (ck.step_of(p) is not None and (p / ck.MANIFEST).is_file())), None)
    if inside is not None:
        raise UserError(f"--out {out} is inside the checkpoint folder {inside}, which belongs to a run",
                        "name a folder outside the run's checkpoint folders, e.g. --out ./model")


def resolve(ref: str, *, runs_root: Path, stage: str | None = None, step: int | None = None,
            allow_hf: bool = False) -> Checkpoint | HFFolder:
    """The model `ref` names: a run (id, name or folder), a checkpoint root, one iter_* checkpoint, or (with
    `allow_hf`) a Hugging Face folder. UserError naming the fix for anything that is none of these."""
    path = Path(ref)
    if allow_hf and path.is_dir() and is_hf_folder(path):
        if stage is not None or step is not None:
            raise UserError(f"{ref} is a Hugging Face folder: it has no stages or steps",
                            "leave out --stage and --step")
        return HFFolder(path)
    if path.is_dir() and ck.step_of(path) is not None:
        if step is not None and step != ck.step_of(path):
            raise UserError(f"--step {step} contradicts {ref}", "name the run or checkpoint root with --step, "
                            "or the checkpoint folder alone")
        run, stage_of = _owner(path.parent, runs_root)
        return _checkpoint(run, stage_of, path, ck.verify(path), pinned=True)
    if path.is_dir() and ck.is_root(path):
        run, stage_of = _owner(path, runs_root)
        return _pick(run, stage_of, path, step)
    try:
        run = resolve_run(ref, runs_root)
    except UserError:
        what = "a run, a checkpoint" + (" or a Hugging Face model folder" if allow_hf else "")
        raise UserError(f"{ref!r} is not {what}",
                        "pass a run id or name (`llmops status` lists them), a run directory, a checkpoint root or "
                        "one of its iter_* folders" + (", or a folder with config.json and *.safetensors"
                                                       if allow_hf else "")) from None
    spec = run.read_spec()
    stages = spec.training_stages
    if stage is not None:
        if stage not in stages:
            raise UserError(f"--stage {stage}: run {run.id} has no such training stage",
                            f"pass one of {', '.join(stages)}")
        return _pick(run, stage, Path(checkpoint_root(spec, stage, run.path)), step)
    if step is not None:
        raise UserError(f"--step {step} needs --stage: run {run.id} has the stages {', '.join(stages)}",
                        f"add --stage, e.g. --stage {stages[-1]}")
    for name in reversed(stages):  # the last stage that saved something: the most trained model
        root = Path(checkpoint_root(spec, name, run.path))
        if ck.find_latest(root).path is not None:
            return _pick(run, name, root, None)
    raise UserError(f"run {run.id} has no complete checkpoint yet",
                    f"wait for it to save one (`llmops status {run.id}`), or resume it: llmops resume {run.id}")


def _owner(root: Path, runs_root: Path) -> tuple[RunDir, str]:
    """The run and stage that save into checkpoint root `root` (from its owner file, else the run around it)."""
    owner = ck.owner_of(root)
    if owner is not None:
        try:
            here = root.parent / "spec.yaml"
            run = RunDir(root.parent) if here.is_file() else resolve_run(owner["run"], runs_root)
            if Path(checkpoint_root(run.read_spec(), owner["stage"], run.path)).resolve() == root.resolve():
                return run, owner["stage"]
        except (OSError, KeyError, UserError):
            pass
    if (root.parent / "spec.yaml").is_file():
        run = RunDir(root.parent)
        spec = run.read_spec()
        for name in spec.training_stages:
            if Path(checkpoint_root(spec, name, run.path)).resolve() == root.resolve():
                return run, name
    raise UserError(f"{root} belongs to no run llmops can find, so its model shape and tokenizer are unknown",
                    "pass the run (its id, or its folder) with --stage and --step, or --runs-dir where it was started")


def _pick(run: RunDir, stage: str, root: Path, step: int | None) -> Checkpoint:
    """The stage's latest complete checkpoint, or the one at `step`. Only that folder is looked into: a stage
    still training may be deleting its older ones meanwhile."""
    if step is None:
        found = ck.find_latest(root)
        if found.path is None:
            raise UserError(f"{stage} of run {run.id} has no complete checkpoint in {root}",
                            "pass another --stage, or resume the run until it saves one")
        return _checkpoint(run, stage, found.path, None)
    path = ck.checkpoint_dir(root, step)
    if path.is_dir():
        return _checkpoint(run, stage, path, ck.verify(path), pinned=True)
    if path.with_name(path.name + ".partial").is_dir():
        return _checkpoint(run, stage, path, "being written, or left by a crash (a resume ignores it)")
    steps = ", ".join(str(s) for s, p in ck.list_checkpoints(root) if ck.verify(p) is None) or "none"
    raise UserError(f"--step {step}: {stage} of run {run.id} has no checkpoint at that step",
                    f"pass one of the complete steps ({steps}), or leave --step out for the latest")


def read(source: Checkpoint, reader: Callable[[Checkpoint], T], *,
         info: Callable[[str], None]) -> tuple[Checkpoint, T]:
    """`reader(source)`, and the checkpoint it read. A stage still training deletes its older checkpoints as it
    saves new ones (checkpoint.keep_last), possibly the one being read: when `reader` fails and the folder is
    gone or no longer complete (whatever the loader raised: a missing file, Megatron's CheckpointingException,
    torch's CheckpointException), the stage's then-latest checkpoint is read instead, or, for a step the user
    named, exit 2 says what happened."""
    for _ in range(READ_TRIES):
        try:
            return source, reader(source)
        except Exception:
            if _whole(source.path):
                raise  # a failure of its own
        gone = (f"{source.label} was deleted while it was read: the running stage keeps only its newest "
                "checkpoints (checkpoint.keep_last)")
        if source.pinned:
            raise UserError(gone, f"pass a step it still keeps (`llmops checkpoints {source.run.id}` lists them), "
                            "or leave --step out for the latest")
        newer = ck.find_latest(source.path.parent).path
        if newer is None:
            raise UserError(f"{gone}, and it has no complete checkpoint now",
                            f"retry once it has saved one (`llmops checkpoints {source.run.id}`)")
        source = _checkpoint(source.run, source.stage, newer, None)
        info(f"{gone}; reading the latest one, step {source.step}")
    raise UserError(f"run {source.run.id}'s {source.stage} stage deleted each of {READ_TRIES} checkpoints before "
                    "it could be read: it saves faster than the model loads",
                    f"pin a step it keeps longer (--step), or retry when the stage is done (`llmops status "
                    f"{source.run.id}`)")


def _whole(path: Path) -> bool:
    try:
        return path.is_dir() and ck.verify(path) is None
    except OSError:  # a file that went between two looks
        return False


def _checkpoint(run: RunDir, stage: str, path: Path, problem: str | None, *, pinned: bool = False) -> Checkpoint:
    if problem is not None:
        raise UserError(f"{path} is not a complete checkpoint: {problem}",
                        f"pick a complete one (`llmops checkpoints {run.id}` lists them)")
    spec = run.read_spec()
    step = ck.step_of(path)
    align = spec.align_stage(stage) if stage != "pretrain" else None
    return Checkpoint(path=path.absolute(), spec=spec, run=run, stage=stage, step=step,
                      tokenizer=_tokenizer(spec, align), template=align.template if align is not None else None,
                      pinned=pinned)


def _tokenizer(spec: RunSpec, align) -> str | None:
    """The tokenizer a stage was trained with, as a tokenizer reference (a SentencePiece model's path, or
    `hf:DIR`): the align stage's own, else the one saved with the Hugging Face model it started from, else
    the one prepare wrote or named."""
    candidates = [align.tokenizer] if align is not None else []
    for start in (spec.model.init_from, *(a.start_from for a in spec.align)):  # beside a Hugging Face model
        if hf.folder_of(start) is not None:
            candidates.append(hf.tokenizer_beside(hf.folder_of(start)))
    if spec.prepare is not None and spec.prepare.tokenizer is not None:
        candidates += [spec.prepare.tokenizer_path, spec.prepare.tokenizer.model]
    candidates += [a.tokenizer for a in spec.align]
    for c in candidates:
        if c and hf.tokenizer_exists(c):
            return c
    return None
