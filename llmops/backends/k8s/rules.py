"""What the Kubernetes backend refuses before it builds anything: a run its pods could not carry out.

Pods see nothing of the submitting machine. Each one mounts the shared claim
at ``k8s.mount_path``, and nothing else it writes outlives it: every path a
stage reads or writes (data, tokenizers, checkpoints, prepared output) must
lie under that mount, and the image that has llmops installed must be named.
"""

from __future__ import annotations

import posixpath

from llmops.backends.k8s.spec import K8sProfile, K8sSpec
from llmops.errors import Problem
from llmops.spec.run import RunSpec


def problems(spec: RunSpec, k8s: K8sSpec, profile: K8sProfile) -> list[Problem]:
    """Every reason the spec (its `k8s:` section resolved against the profile) cannot run on Kubernetes."""
    out: list[Problem] = []
    if k8s.image is None:
        out.append(Problem("k8s.image", None, "is required for backend: k8s",
                           "build an image from infra/docker/ and set k8s.image: <registry>/<name>:<tag>"))
    if k8s.run_as_user == 0 and not profile.allow_root:
        out.append(Problem("k8s.run_as_user", 0, "runs the containers as root, which the cluster profile does not "
                           "allow (allow_root)", "leave run_as_user at its default (1000), or ask the platform team "
                           "to set allow_root: true in the profile"))
    root = posixpath.normpath(k8s.mount_path).rstrip("/") + "/"
    for where, path in _paths(spec):
        # Normalised first: '/llmops/../etc' starts with '/llmops/' and is not on the volume.
        if path is not None and not posixpath.normpath(path).startswith(root):
            out.append(Problem(where, path, f"is not on the shared volume mounted at k8s.mount_path={k8s.mount_path}",
                               f"put it under {root} (pods see nothing else that outlives them)"))
    return out


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
