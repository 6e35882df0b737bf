"""The backends by name, and the command-line options they declare.

A backend's module loads only when a run uses it: the cluster SDKs
(kubernetes, submitit) come with it. Its options are declared in its light
``spec`` module, so that the CLI can offer them without loading the backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmops.backends.base import Option
from llmops.errors import UserError

if TYPE_CHECKING:
    from llmops.backends.base import Backend

NAMES = ("local", "slurm", "k8s")


def get_backend(name: str) -> Backend:
    """The backend named in a spec or on the command line."""
    if name == "local":
        from llmops.backends.local.backend import LocalBackend

        return LocalBackend()
    if name == "k8s":
        from llmops.backends.k8s.backend import K8sBackend

        return K8sBackend()
    if name == "slurm":
        from llmops.backends.slurm.backend import SlurmBackend

        return SlurmBackend()
    raise UserError(f"the '{name}' backend is not available in this version of llmops",
                    f"use one of {', '.join(NAMES)} (set backend: in the spec or pass --backend)")


def options() -> dict[str, tuple[Option, ...]]:
    """Each backend's command-line options (the local backend has none)."""
    from llmops.backends.k8s.spec import OPTIONS as K8S
    from llmops.backends.slurm.spec import OPTIONS as SLURM

    return {"slurm": SLURM, "k8s": K8S}
