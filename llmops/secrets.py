"""Secrets a run's jobs need: read from the submitter's environment or files, at submit and at resume.

The spec names them (``secrets:``) and says where each is read; the values
exist only in memory here and, for the job, where its backend hands them
over: the local supervisor's environment, a mode-0600 ``secrets.env`` in the
run directory on a Slurm cluster, a Kubernetes Secret. They are never part of
``spec.yaml``, a rendered script, a ConfigMap, a dry run or a log.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmops.errors import UserError
from llmops.spec.run import RunSpec

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
