"""Backends: where a run executes. Each one turns a spec into a request (dry run)
that can render itself, submits that request, and reports status, logs and
cancels through the same interface (:class:`llmops.backends.base.Backend`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmops.errors import UserError

if TYPE_CHECKING:  # base imports llmops.spec, which imports k8s_spec from this package
    from llmops.backends.base import Backend


def get_backend(name: str) -> Backend:
    """The backend named in a spec or on the command line; SDKs load only here."""
    if name == "local":
        from llmops.backends.local import LocalBackend

        return LocalBackend()
    if name == "k8s":
        from llmops.backends.k8s import K8sBackend

        return K8sBackend()
    if name == "slurm":
        from llmops.backends.slurm import SlurmBackend

        return SlurmBackend()
    raise UserError(f"the '{name}' backend is not available in this version of llmops",
                    "use backend: local (set it in the spec or pass --backend local)")
