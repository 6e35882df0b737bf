"""Small file operations shared by the control plane and the workers; imports nothing heavy (the launcher and
the heartbeat use it)."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, text: str, *, mode: int | None = None) -> None:
    """Replace `path` with `text` in one step: a reader sees the old file or the new one, never a part. Never
    over a device, a pipe or a folder (renamed over, /dev/null would become a file). With `mode`, the file has
    it from its creation (a kubeconfig is never readable by others, not even briefly)."""
    if path.exists() and not path.is_file():
        raise IsADirectoryError(f"{path} is not a regular file; not replaced")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if mode is None:
            tmp.write_text(text)
        else:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
                f.write(text)
            os.chmod(tmp, mode)  # past the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    """A file's or a folder's contents (a folder's: its entries, such as a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
