"""What the Slurm backend refuses in the settings themselves, whatever the cluster offers.

Whether the cluster can run the request (partitions, GPUs and CPUs per node)
is :func:`llmops.backends.slurm.cluster.check_fit`, asked of the profile when
the run is planned and of `sinfo` right before it is submitted.
"""

from __future__ import annotations

from llmops.backends.slurm.spec import SlurmSpec
from llmops.errors import Problem


def static_problems(slurm: SlurmSpec) -> list[Problem]:
    """Every reason the resolved `slurm:` settings cannot work, at once."""
    out: list[Problem] = []
    if slurm.login and not slurm.remote_root:
        out.append(Problem("slurm.remote_root", None, "is required with slurm.login (run directories must be "
                           "on the cluster's shared filesystem)", "set it, e.g. remote_root: /shared/$USER/llmops-runs"
                           " (the path itself, no variables)"))
    if slurm.remote_root and not slurm.remote_root.startswith("/"):
        out.append(Problem("slurm.remote_root", slurm.remote_root, "is not an absolute path",
                           "give the folder's full path on the cluster"))
    if slurm.container is not None and slurm.container_runtime == "none":
        out.append(Problem("slurm.container", slurm.container.image, "is set, but slurm.container_runtime is none "
                           "(this cluster runs no containers)", "remove slurm.container, or use a cluster with pyxis"))
    return out
