"""Secrets a run's jobs need: read from the submitter's environment or files, at submit and at resume.

The spec names them (``secrets:``) and says where each is read; the values
exist only in memory here and, for the job, where its backend hands them
over: the local supervisor's environment, a mode-0600 ``secrets.env`` in the
run directory on a Slurm cluster, a Kubernetes Secret. They are never part of
``spec.yaml``, a rendered script, a ConfigMap, a dry run or a log.

A credential put in the spec by mistake (``slurm.env: {HF_TOKEN: ...}``) is
not published further: :func:`shareable` is the spec as the experiment
trackers get it, such values masked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from llmops.errors import UserError
from llmops.spec.run import RunSpec

MASK = "***"
"""What the trackers get in place of a credential's value (see :func:`shareable`)."""
_CREDENTIAL = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|(?:^|_)(?:API)?KEY(?:_|$)")
"""An environment variable's name that says it holds a credential: HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY."""
_ASSIGNMENT = re.compile(r"\b([A-Z_][A-Z0-9_]*)=(\"[^\"]*\"|'[^']*'|\S+)")
"""NAME=value in a line of shell (`export HF_TOKEN=...` in slurm.setup)."""
FILE = "secrets.env"
"""On Slurm: the file in the run directory that the batch script reads (mode 0600, never pulled back)."""


def read(spec: RunSpec) -> dict[str, str]:
    """Each secret's value, or UserError (exit 2) naming the first one that cannot be read and the fix."""
    values = {}
    for name, source in spec.secrets.items():
        if source.file is not None:
            path = Path(source.file).expanduser()
            try:
                values[name] = path.read_text().removesuffix("\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"secrets.{name}: cannot read {path} ({getattr(exc, 'strerror', exc)})",
                                "check the file, or read the secret from your environment instead") from None
        else:
            var = source.env or name
            if var not in os.environ:
                raise UserError(f"secrets.{name}: ${var} is not set in your environment",
                                f"export {var}=... before submitting (or resuming), or give secrets.{name}.file")
            values[name] = os.environ[var]
        if "\x00" in values[name]:
            raise UserError(f"secrets.{name}: the value holds a NUL character, which no environment can carry",
                            "check where it is read from")
    return values


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """`NAME=value` lines for a POSIX shell (`set -a; . FILE`), created with mode 0600 (never wider)."""
    from llmops.shell import quote

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write("".join(f"{k}={quote(v)}\n" for k, v in sorted(values.items())))


def shareable(data: Any, where: str = "") -> tuple[Any, list[str]]:
    """`data` (the resolved spec) as the trackers get it, and where it held credentials: the value of an
    environment variable named like one (`slurm.env.HF_TOKEN`, `export WANDB_API_KEY=...` in a setup line) is
    MASK. Credentials belong under `secrets:`; one put in the spec is not also published on the tracker."""
    if isinstance(data, dict):
        out, masked = {}, []
        for key, value in data.items():
            here = f"{where}.{key}" if where else str(key)
            if isinstance(value, str) and _is_credential(str(key)):
                out[key], inner = MASK, [here]
            else:
                out[key], inner = shareable(value, here)
            masked += inner
        return out, masked
    if isinstance(data, list):
        pairs = [shareable(v, f"{where}[{i}]") for i, v in enumerate(data)]
        return [v for v, _ in pairs], [m for _, inner in pairs for m in inner]
    if isinstance(data, str):
        text = _ASSIGNMENT.sub(lambda m: f"{m[1]}={MASK}" if _is_credential(m[1]) else m[0], data)
        return text, [where] if text != data else []
    return data, []


def _is_credential(name: str) -> bool:
    """Whether an environment variable's name (upper case, as the spec's names of fields never are) says that it
    holds a credential."""
    return re.fullmatch(r"[A-Z_][A-Z0-9_]*", name) is not None and _CREDENTIAL.search(name) is not None
