"""What the Slurm backend refuses in the settings themselves, whatever the cluster offers.

Whether the cluster can run the request (partitions, GPUs and CPUs per node)
is :func:`llmops.backends.slurm.cluster.check_fit`, asked of the profile when
the run is planned and of `sinfo` right before it is submitted.
"""

from __future__ import annotations

from llmops import shell
from llmops.backends.slurm.spec import SlurmSpec
from llmops.errors import Problem


def static_problems(slurm: SlurmSpec) -> list[Problem]:
    """Every reason the resolved `slurm:` settings cannot work, at once."""
    out: list[Problem] = []
    if slurm.login and not slurm.remote_root:
        out.append(Problem("slurm.remote_root", None, "is required with slurm.login (run directories must be "
                           "on the cluster's shared filesystem)", "set it, e.g. remote_root: /shared/$USER/llmops-runs"
                           " (the path itself, no variables)"))
    if slurm.container is not None and slurm.container_runtime == "none":
        out.append(Problem("slurm.container", slurm.container.image, "is set, but slurm.container_runtime is none "
                           "(this cluster runs no containers)", "remove slurm.container, or use a cluster with pyxis"))
    return out


def run_dir_problems(run_dir: str) -> list[Problem]:
    """The run directory as the cluster sees it goes into `#SBATCH --chdir/--output` lines, which cannot be
    quoted and in which sbatch expands `%` patterns: it must be a plain path."""
    if shell.plain_path(run_dir):
        return []
    return [Problem("runs directory", run_dir, "cannot be written into #SBATCH lines (it holds a space, a quote, "
                    "a % or another character outside letters, digits and _ . / + @ = , ~ -)",
                    "use a runs folder with a plain path: --runs-dir (or LLMOPS_RUNS_DIR), or slurm.remote_root")]
