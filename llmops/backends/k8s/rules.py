"""What the Kubernetes backend refuses before it builds anything: a run its pods could not carry out.

Pods see nothing of the submitting machine. Each one mounts the shared claim
at ``k8s.mount_path``, and nothing else it writes outlives it: every path a
stage reads or writes (data, tokenizers, checkpoints, prepared output) must
lie under that mount, and the image that has llmops installed must be named.
"""

from __future__ import annotations

import posixpath
import re

from llmops.backends.k8s.spec import K8sProfile, K8sSpec
from llmops.errors import Problem
from llmops.spec.run import RunSpec

# What an image reference is made of ([registry[:port]/]name[:tag][@digest]); spaces, newlines and the like
# pass YAML and pydantic, and give pods that never pull.
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")
SHM = "/dev/shm"  # every pod's memory-backed volume (objects.pod_template)


def problems(spec: RunSpec, k8s: K8sSpec, profile: K8sProfile) -> list[Problem]:
    """Every reason the spec (its `k8s:` section resolved against the profile) cannot run on Kubernetes."""
    out: list[Problem] = []
    if k8s.image is None:
        out.append(Problem("k8s.image", None, "is required for backend: k8s",
                           "build an image from infra/docker/ and set k8s.image: <registry>/<name>:<tag>"))
    elif not _IMAGE.fullmatch(k8s.image):
        out.append(Problem("k8s.image", k8s.image, "is not an image reference (letters, digits and . _ - / : @ "
                           "only; no spaces or line breaks)", "write the reference alone, e.g. "
                           "registry.example.com/llmops:1.0"))
    out += _mount_path(k8s.mount_path)
    if k8s.run_as_user in (0, None) and not profile.allow_root:
        out.append(Problem("k8s.run_as_user", k8s.run_as_user, (
            "runs the containers as root" if k8s.run_as_user == 0 else
            "keeps the image's user, root in most images (the NGC PyTorch base included)") + ", which the cluster "
            "profile does not allow (allow_root)", "leave run_as_user at its default (1000), or set the image's "
            "non-root uid, or ask the platform team to set allow_root: true in the profile"))
    root = posixpath.normpath(k8s.mount_path).rstrip("/") + "/"
    for where, path in _paths(spec):
        # Normalised first: '/llmops/../etc' starts with '/llmops/' and is not on the volume.
        if path is not None and not posixpath.normpath(path).startswith(root):
            out.append(Problem(where, path, f"is not on the shared volume mounted at k8s.mount_path={k8s.mount_path}",
                               f"put it under {root} (pods see nothing else that outlives them)"))
    return out


def _mount_path(mount: str) -> list[Problem]:
    """A mount path the pods can have: a folder of its own, written plainly (the shared-volume rule compares
    paths with it, and `/` or `/llmops/..` would put every path on the volume)."""
    if mount == "/" or posixpath.normpath(mount) != mount:
        return [Problem("k8s.mount_path", mount, f"is not a folder below / written plainly (once '.' and '..' "
                        f"are resolved it is {posixpath.normpath(mount)!r})", "name the folder itself, e.g. /llmops")]
    if mount == SHM or mount.startswith(SHM + "/"):
        return [Problem("k8s.mount_path", mount, f"is where every pod mounts its memory-backed {SHM}, and the API "
                        "server refuses two volumes at one path", "mount the claim elsewhere, e.g. /llmops")]
    return []


def _paths(spec: RunSpec) -> list[tuple[str, str | None]]:
    """(field path, value) of every file or folder a stage of the spec reads or writes."""
    paths: list[tuple[str, str | None]] = [("checkpoint.dir", spec.checkpoint.dir)]
    if spec.data.indexed is not None:
        paths += [(f"data.indexed.paths.{i}", p) for i, p in enumerate(spec.data.indexed.paths)]
    if spec.prepare is not None:
        paths += [(f"prepare.input.paths.{i}", p) for i, p in enumerate(spec.prepare.input.paths)]
        paths.append(("prepare.output.dir", spec.prepare.output.dir))
    for i, a in enumerate(spec.align):
        where = "align" if len(spec.align) == 1 else f"align.{i}"
        paths += [(f"{where}.data.path", a.data.path), (f"{where}.tokenizer", a.tokenizer),
                  (f"{where}.start_from", a.start_from), (f"{where}.checkpoint_dir", a.checkpoint_dir)]
    return paths
