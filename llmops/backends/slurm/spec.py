"""Configuration of the Slurm backend: the run spec's `slurm:` section and a profile's.

* :class:`SlurmSpec` is what a user writes in a run spec (partition, time
  limit, container, SSH login, ...). :mod:`llmops.spec.run` embeds it as
  ``RunSpec.slurm``, so this module stays light (pydantic only).
  :data:`OPTIONS` are the command-line flags that override its fields.
* :class:`SlurmProfile` is the ``slurm:`` section of a cluster profile: the
  site's defaults for those same settings plus facts about its nodes (GPUs
  per node, partitions) that let llmops refuse an impossible request before
  anything reaches the queue. :mod:`llmops.profiles` keeps the section
  free-form; :func:`parse_profile_section` types it here.

:func:`resolve` merges the two: the spec wins, lists and environments add up.
The result is written into the run directory's ``spec.yaml`` when the run is
planned, so restarts and resumes never read the profile again.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from llmops import shell
from llmops.backends.base import Option
from llmops.errors import Problem, SpecError
from llmops.spec.base import SpecModel, problems_from

# Slurm's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MOUNT = r"^[^:,]+:[^:,]+(:[a-z+]+)?$"
_MEM = r"^\d+[KMGT]?$"


def time_limit_seconds(value: str) -> int:
    """Seconds in a Slurm time limit (`30`, `4:00:00`, `2-00:00:00`), as sbatch reads it."""
    m = _TIME.match(value)
    if not m:
        raise ValueError(f"'{value}' is not a Slurm time limit (use minutes, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = m.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if b is None:  # M
        return int(a) * 60
    if c is None:  # M:S
        return int(a) * 60 + int(b)
    return (int(a) * 60 + int(b)) * 60 + int(c)  # H:M:S


class ContainerSpec(SpecModel):
    """A container for the training processes, started by pyxis/enroot (`srun --container-image`)."""

    image: str
    """Enroot image: a registry reference (`nvcr.io#nvidia/pytorch:24.07-py3`) or a `.sqsh` path on the nodes."""
    mounts: list[str] = Field(default_factory=list)
    """Bind mounts `SRC:DST[:FLAGS]`; the runs folder is always mounted at its own path."""
    workdir: str | None = None
    """Working directory inside the container; unset means the run directory."""

    @field_validator("mounts")
    @classmethod
    def _mount_syntax(cls, mounts: list[str]) -> list[str]:
        for m in mounts:
            shell.check_text(m, "mount")
            if not re.match(_MOUNT, m):
                raise ValueError(f"mount '{m}' is not SRC:DST or SRC:DST:FLAGS (flags like ro or ro+rprivate)")
        return mounts

    @field_validator("image")
    @classmethod
    def _image(cls, image: str) -> str:
        shell.check_text(image, "container image")
        if " " in image:
            raise ValueError(f"container image {image!r} holds a space; enroot image references have none")
        return image

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, workdir: str | None) -> str | None:
        return None if workdir is None else shell.check_absolute(workdir, "container workdir")


# The batch script's own variables (render.py), those llmops sets for its launcher and workers, and Slurm's: an
# `env` entry of one of these names would be exported over the script's value (MAX_RESTARTS lifting the
# restart limit, LLMOPS_STAGE training another stage, SLURM_RESTART_COUNT resetting the requeue count). llmops's
# settings for users (LLMOPS_WARM_START, LLMOPS_LOG_LEVEL, ...) stay theirs to set.
SCRIPT_VARIABLES = frozenset({"RUN_DIR", "STAGE", "MAX_RESTARTS", "FINISHED", "RESTART", "LOG", "NOTICE", "STOPPED",
                              "CODE", "SRUN", "CONTAINER", "REASON", "HEAD", "PORT", "LAST",
                              "LLMOPS_RESTART", "LLMOPS_STAGE", "LLMOPS_RESTART_BASE", "LLMOPS_STANDBY",
                              "LLMOPS_HEARTBEATS", "LLMOPS_PROCESS_STARTED", "LLMOPS_WARM_RUN_DIR",
                              "LLMOPS_SAMPLES_DEADLINE"})
RESERVED_PREFIXES = ("SLURM_",)


class SlurmSpec(SpecModel):
    """Where and how a run lands on a Slurm cluster (used when backend is slurm).

    Unset fields take the cluster profile's value, then Slurm's own default."""

    partition: str | None = None
    """Partition to submit to (`--partition`); unset: the profile's, else the cluster's default."""
    account: str | None = None
    """Account charged for the job (`--account`)."""
    qos: str | None = None
    """Quality of service (`--qos`)."""
    time: str | None = None
    """Time limit of each job (`--time`: minutes, HH:MM:SS or D-HH:MM:SS); a longer run requeues itself."""
    exclusive: bool | None = None
    """Whole nodes for the job (`--exclusive`); unset: exclusive for GPU runs, shared for CPU runs."""
    cpus_per_task: int | None = Field(None, ge=1, le=100_000)
    """CPUs for each node's task, i.e. for its torchrun agent and all its workers (`--cpus-per-task`)."""
    mem: str | None = Field(None, pattern=_MEM)
    """Memory per node (`--mem`, e.g. 64G); unset: Slurm's default (all of it on exclusive nodes)."""
    constraint: str | None = None
    """Node features the job needs (`--constraint`, e.g. `h100&ib`)."""
    gpu_type: str | None = None
    """GPU type in the request (`--gpus-per-node=h100:8`); unset requests any GPU."""
    gpu_request: Literal["gpus-per-node", "gres"] = "gpus-per-node"
    """How GPUs are requested: `--gpus-per-node` (select/cons_tres) or `--gres=gpu:N` (older sites)."""
    container: ContainerSpec | None = None
    """Run the training processes in this container image through pyxis; unset runs in the node's environment."""
    container_runtime: Literal["auto", "pyxis", "none"] = "auto"
    """auto: use pyxis when the nodes' srun has it, else warn and run without the container; none: no containers."""
    signal_lead: int = Field(300, ge=30, le=30 * 86400)
    """Seconds before the time limit that the job is sent SIGUSR1 to checkpoint and requeue; must cover one
    step plus a checkpoint save. Slurm checks time limits periodically, so it can arrive up to a minute earlier."""
    prepare_shards: int = Field(8, ge=1, le=100_000)
    """Array tasks of each map phase of data preparation (clean, tokenize), unless prepare.num_shards is set."""
    prepare_cpus_per_task: int = Field(4, ge=1, le=100_000)
    """CPUs of each data-preparation task (one shard each; the tokenizer trainer uses them all)."""
    python: str | None = None
    """Python with llmops installed on the nodes; unset: this interpreter (on the login node) or `python3` (SSH)."""
    setup: list[str] = Field(default_factory=list)
    """Shell lines the batch script runs before launching, e.g. `module load cuda` or `source venv/bin/activate`."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment for the training processes, on top of the profile's `env` (NCCL, EFA, InfiniBand)."""
    sbatch_args: list[str] = Field(default_factory=list)
    """Further sbatch options written as `#SBATCH` lines, e.g. `--reservation=big-run`."""
    login: str | None = None
    """SSH host of a login node (a name from your ~/.ssh/config); unset runs the Slurm commands on this machine."""
    remote_root: str | None = None
    """Folder for run directories on the cluster's shared filesystem; required with `login`."""
    ssh_options: list[str] = Field(default_factory=list)
    """Options for both ssh and scp, e.g. `[-F, site/ssh_config]` or `[-o, ProxyJump=bastion]`."""

    @field_validator("time")
    @classmethod
    def _time_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            time_limit_seconds(value)
        return value

    @field_validator("partition")
    @classmethod
    def _partition(cls, value: str | None) -> str | None:
        return None if value is None else shell.check_name(value, "partition", several=True)

    @field_validator("account", "qos", "gpu_type")
    @classmethod
    def _names(cls, value: str | None, info) -> str | None:
        return None if value is None else shell.check_name(value, info.field_name)

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: str | None) -> str | None:
        return None if value is None else shell.check_features(value, "constraint")

    @field_validator("python")
    @classmethod
    def _python(cls, value: str | None) -> str | None:
        return None if value is None else shell.check_text(value, "python")

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            shell.check_env_key(key)
            if key in SCRIPT_VARIABLES or key.startswith(RESERVED_PREFIXES):
                raise ValueError(f"{key} is set by the batch script itself (or by llmops or Slurm), and would be "
                                 "exported over its value; name the variable otherwise")
            if "\x00" in value:
                raise ValueError(f"the value of {key} holds a NUL character, which no environment can carry")
        return env

    @field_validator("sbatch_args")
    @classmethod
    def _long_options(cls, args: list[str]) -> list[str]:
        for a in args:
            shell.check_text(a, "sbatch option")
            if not a.startswith("--"):
                raise ValueError(f"'{a}' is not a long sbatch option (write it as --name=value)")
        return args

    @field_validator("login")
    @classmethod
    def _login(cls, value: str | None) -> str | None:
        if value is None:
            return None
        shell.check_text(value, "login")
        if value.startswith("-") or " " in value:
            raise ValueError(f"login {value!r} is not an SSH host (a name from ~/.ssh/config, or user@host); "
                             "options go in slurm.ssh_options")
        return value

    @field_validator("remote_root")
    @classmethod
    def _remote_root(cls, value: str | None) -> str | None:
        return None if value is None else shell.check_absolute(value, "remote_root")

    @field_validator("ssh_options", "setup")
    @classmethod
    def _no_control(cls, items: list[str], info) -> list[str]:
        for item in items:
            if info.field_name == "ssh_options" or "\x00" in item:
                shell.check_text(item, info.field_name)
        return items

    @field_validator("signal_lead")
    @classmethod
    def _lead_below_own_limit(cls, lead: int, info) -> int:
        """A section that sets both; with the cluster profile's values, :func:`resolve` checks what the job gets."""
        limit = info.data.get("time")
        if limit is not None and lead >= time_limit_seconds(limit):
            raise ValueError(f"is not below the time limit {limit}: the job would be told to stop as soon as it "
                             "starts")
        return lead

    @property
    def time_seconds(self) -> int | None:
        return None if self.time is None else time_limit_seconds(self.time)


class SlurmProfile(SpecModel):
    """The `slurm:` section of a cluster profile: defaults for every run, and what the nodes offer."""

    defaults: SlurmSpec = SlurmSpec()
    """Values for the run spec's `slurm:` fields that a run does not set (partition, account, container, ...)."""
    partitions: list[str] | None = None
    """Partitions users may name; a run naming another is refused before submission."""
    gpus_per_node: int | None = Field(None, ge=0, le=64)
    """GPUs on each node; a run asking for more is refused before submission."""
    cpus_per_node: int | None = Field(None, ge=1, le=100_000)
    """CPUs on each node; a run asking for more CPU processes or cpus_per_task is refused."""


def parse_profile_section(data: dict[str, Any], source: str) -> SlurmProfile:
    """Validate a profile's free-form `slurm:` mapping, naming every bad key and how to fix it."""
    try:
        return SlurmProfile.model_validate(data or {})
    except ValidationError as exc:
        raise SpecError(source, problems_from(exc, SlurmProfile, prefix=["slurm"],
                                              fix="see `llmops schema` (the slurm section) for the allowed values")
                        ) from None


def resolve(spec: SlurmSpec | None, profile: SlurmProfile | None, profile_env: dict[str, str]) -> SlurmSpec:
    """The spec's settings over the profile's defaults; setup lines, mounts and environments add up.

    Idempotent: resolving an already resolved spec (a resume) against the same profile changes nothing.
    """
    own = spec.model_dump(exclude_unset=True) if spec is not None else {}
    base = profile.defaults.model_dump(exclude_unset=True) if profile is not None else {}
    merged = {**base, **own}
    merged["setup"] = _unique([*base.get("setup", []), *own.get("setup", [])])
    merged["env"] = {**profile_env, **base.get("env", {}), **own.get("env", {})}
    merged["sbatch_args"] = _unique([*base.get("sbatch_args", []), *own.get("sbatch_args", [])])
    site_container, own_container = base.get("container") or {}, own.get("container") or {}
    if own_container:
        mounts = [*site_container.get("mounts", []), *own_container.get("mounts", [])]
        merged["container"] = {**site_container, **own_container, "mounts": _unique(mounts)}
    try:
        out = SlurmSpec.model_validate(merged)
    except ValidationError as exc:  # each side was valid alone (a list of the profile's and the spec's, say)
        raise SpecError("the slurm settings with the cluster profile's defaults",
                        problems_from(exc, SlurmSpec, prefix=("slurm",))) from None
    # A lead that the spec or the profile sets is checked against the time in validation (_lead_below_own_limit);
    # what is left is the default lead, against the time the job gets (the spec's, the profile's, the command line's).
    if out.time is not None and out.signal_lead >= time_limit_seconds(out.time):
        raise SpecError("the slurm settings with the cluster profile's defaults", [Problem(
            "slurm.time", out.time, f"is not longer than slurm.signal_lead's default ({out.signal_lead} s): the "
            "job would be told to checkpoint and requeue as soon as it starts",
            "give a longer time limit, or a shorter slurm.signal_lead (it must cover one step and a checkpoint save)")])
    return out


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


OPTIONS = (
    Option("partition", "Partition to submit to."),
    Option("account", "Account charged for the jobs."),
    Option("qos", "Quality of service of the jobs."),
    Option("time", "Time limit of each job (minutes, HH:MM:SS or D-HH:MM:SS); a longer run requeues itself."),
)
