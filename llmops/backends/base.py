"""The interface every backend implements (after TorchX's scheduler API)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from llmops.rundir import RunDir
from llmops.spec import RunSpec


@dataclass
class Request:
    """What a submit would do, inspectable before it happens (`--dry-run`)."""

    run: RunDir

    def files(self) -> dict[str, str]:
        """The artefacts a submit would create, by file name (scripts, manifests)."""
        raise NotImplementedError

    def render(self) -> str:
        """All artefacts as one text, for `--dry-run`."""
        return "".join(f"# ---- {name}\n{text}" for name, text in self.files().items())


class Backend(ABC):
    name: str

    @abstractmethod
    def dry_run(self, spec: RunSpec, run: RunDir) -> Request:
        """Build the request for a run without starting anything."""

    @abstractmethod
    def submit(self, request: Request) -> None:
        """Start the run described by the request; returns once it is accepted."""

    @abstractmethod
    def refresh(self, run: RunDir) -> None:
        """Bring status.json up to date with what the backend knows (no-op when it is live)."""

    @abstractmethod
    def logs(self, run: RunDir, *, follow: bool, stage: str = "pretrain") -> Iterator[str]:
        """The run's log lines, oldest first; with follow, until the run ends."""

    @abstractmethod
    def cancel(self, run: RunDir, *, force: bool = False) -> None:
        """Stop the run: checkpoint and exit (or kill at once with force)."""
