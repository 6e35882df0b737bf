"""Cluster profiles: what a platform team knows about its cluster, once, for every run.

A run spec names a profile (``profile: aws-p5``); the profile carries the
site facts users should not have to repeat: the network environment for
NCCL (EFA, InfiniBand/RDMA), and backend settings (Slurm partition and
container runtime, Kubernetes network attachments). Backends read the
section for themselves.

Profiles are YAML files named ``<name>.yaml``, found on this search path:

1. a path given directly (``profile: ./site/my-cluster.yaml``);
2. each folder in ``$LLMOPS_PROFILE_PATH`` (colon-separated);
3. ``~/.config/llmops/profiles/``;
4. this repository's ``cluster/slurm/profiles/`` and ``cluster/k8s/profiles/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmops.errors import SpecError, UserError
from llmops.spec.base import problems_from

_REPO_CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


class ClusterProfile(BaseModel):
    """A cluster's site facts. Backend sections are free-form here and typed by each backend."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """Profile name (matches the file name)."""
    description: str = ""
    """What cluster this describes."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment for every training process (NCCL, EFA/libfabric, InfiniBand settings)."""
    strict: bool = False
    """Refuse specs whose own fields run commands by design (Slurm setup lines, ssh options, ...): for clusters
    that take specs from CI or shared repositories. The profile's own settings are the platform team's."""
    slurm: dict[str, Any] = Field(default_factory=dict)
    """Slurm settings, read by the Slurm backend."""
    k8s: dict[str, Any] = Field(default_factory=dict)
    """Kubernetes settings, read by the Kubernetes backend."""


def search_path() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("LLMOPS_PROFILE_PATH", "").split(":") if p]
    dirs.append(Path.home() / ".config" / "llmops" / "profiles")
    dirs += [_REPO_CLUSTER / "slurm" / "profiles", _REPO_CLUSTER / "k8s" / "profiles"]
    return dirs


def available() -> dict[str, Path]:
    """Every profile name on the search path (earlier folders win)."""
    found: dict[str, Path] = {}
    for d in search_path():
        for f in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            found.setdefault(f.stem, f)
    return found


def load_profile(ref: str) -> ClusterProfile:
    """Load a profile by name or path; a clear error lists what exists when it is not found."""
    path = Path(ref)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = available().get(ref)  # type: ignore[assignment]
        if path is None:
            names = ", ".join(sorted(available())) or "none"
            raise UserError(f"cluster profile '{ref}' was not found (known profiles: {names})",
                            "check the name, or put <name>.yaml in ~/.config/llmops/profiles/ "
                            "or a folder listed in LLMOPS_PROFILE_PATH")
    try:
        data = yaml.safe_load(path.read_text()) or {}
        data.setdefault("name", path.stem)
        return ClusterProfile.model_validate(data)
    except yaml.YAMLError as exc:
        raise UserError(f"cluster profile {path} is not valid YAML: {exc}", "fix the file's syntax") from None
    except ValidationError as exc:
        raise SpecError(str(path), problems_from(exc, ClusterProfile, fix="see llmops/profiles.py for the fields")
                        ) from None
