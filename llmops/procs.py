"""Process helpers shared by the local backend and the per-node launcher, through psutil (Linux and macOS)."""

from __future__ import annotations

import psutil


def children(pid: int) -> list[int]:
    """Direct children of a process (none when it is gone)."""
    try:
        return [p.pid for p in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def descendants(pid: int) -> list[int]:
    """Children, grandchildren and so on (torchrun's workers live in sessions of their own, so signalling
    the launcher's process group does not reach them)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists, but is not ours to inspect
        return True
