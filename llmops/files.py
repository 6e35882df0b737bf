"""Small file operations shared by the control plane and the workers; imports nothing heavy (the launcher and
the heartbeat use it)."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: a reader sees the old file or the new one, never a part. Never
    over a device, a pipe or a folder (renamed over, /dev/null would become a file)."""
    if path.exists() and not path.is_file():
        raise IsADirectoryError(f"{path} is not a regular file; not replaced")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
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
