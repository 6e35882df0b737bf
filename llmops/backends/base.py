"""The interface every backend implements (after TorchX's scheduler API).

A backend owns what only it knows: its section of the spec and the
command-line options that override it (:attr:`Backend.options`, TorchX's
``run_opts``), the rules a spec must meet to run there
(:meth:`Backend.validate`, TorchX's ``_validate``), and how a run is built
(:meth:`Backend.dry_run`, in memory), started, followed and stopped. The
generic spec and CLI know no backend's details.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from llmops.errors import Problem, SpecError
from llmops.spec.base import SpecModel, problems_from

if TYPE_CHECKING:  # annotations only; the spec's model imports the backends' sections
    from llmops.runs.rundir import RunDir
    from llmops.spec.run import RunSpec


@dataclass(frozen=True)
class Option:
    """A command-line option of `submit` and `render` that sets one field of its backend's spec section."""

    field: str
    """The field of the section (`--<field>` on the command line, `-` for `_`)."""
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


@dataclass
class Request:
    """What a submit would do, built in memory and inspectable before it happens (`--dry-run`).

    It carries its backend's name and the resolved spec the run will keep (with
    the backend's own settings merged in), like TorchX's ``AppDryRunInfo``;
    nothing exists on disk until ``submit`` or ``render`` writes it.
    """

    backend: str
    spec: RunSpec
    run_path: Path
    """The run directory this request is for (created by submit or render, not by the dry run)."""
    secrets: dict[str, str] = field(default_factory=dict, repr=False, kw_only=True)
    """The values of spec.secrets, read by submit and resume only: a dry run and a render never hold them."""

    @property
    def run_id(self) -> str:
        return self.run_path.name

    def files(self) -> dict[str, str]:
        """The artefacts a submit would create, by path inside the run directory (scripts, manifests)."""
        raise NotImplementedError

    def render(self) -> str:
        """All artefacts as one text, for `--dry-run`."""
        return "".join(f"# ---- {name}\n{text}" for name, text in self.files().items())


class Backend(ABC):
    name: str
    section: type[SpecModel] | None = None
    """The backend's section of the run spec (the `RunSpec` field of the backend's name), if it has one."""
    options: tuple[Option, ...] = ()
    """Command-line options that override fields of that section for one submit."""

    def validate(self, spec: RunSpec) -> list[Problem]:
        """What is wrong with the spec for this backend, every problem at once (nothing is contacted)."""
        return []

    def shell_fields(self, spec: RunSpec) -> list[Problem]:
        """The spec's own fields that run commands of the user's choosing by design (setup lines, ssh options):
        refused in strict mode, for specs from CI and shared repositories (docs/trust-model.md)."""
        return []

    def with_options(self, spec: RunSpec, values: dict[str, str]) -> RunSpec:
        """The spec with command-line values set in this backend's section, validated like the file's own.

        The result is what the run directory records, so status, logs and cancel find the run later.
        """
        if not values:
            return spec
        current = getattr(spec, self.name)
        data = current.model_dump(exclude_unset=True) if current is not None else {}
        try:
            section = self.section.model_validate({**data, **values})
        except ValidationError as exc:
            raise SpecError("command line", problems_from(exc, self.section, prefix=[self.name],
                                                          fix="pass a valid value on the command line")) from None
        return spec.model_copy(update={self.name: section})

    @abstractmethod
    def dry_run(self, spec: RunSpec, run_path: Path) -> Request:
        """Build the request for a run in `run_path` without starting or writing anything."""

    @abstractmethod
    def submit(self, request: Request, run: RunDir) -> None:
        """Start the run described by the request in its (created) run directory; returns once accepted."""

    @abstractmethod
    def refresh(self, run: RunDir) -> None:
        """Bring status.json up to date with what the backend knows (no-op when it is live)."""

    @abstractmethod
    def logs(self, run: RunDir, *, follow: bool, stage: str = "pretrain", first_restart: int = 0) -> Iterator[str]:
        """The stage's log lines, oldest first, from attempt `first_restart` on; with follow, until it ends."""

    @abstractmethod
    def cancel(self, run: RunDir, *, force: bool = False) -> None:
        """Stop the run: checkpoint and exit (or kill at once with force)."""
