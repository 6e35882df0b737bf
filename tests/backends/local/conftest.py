"""Shared by the local backend's tests."""

from __future__ import annotations

import signal

import pytest


@pytest.fixture(autouse=True)
def _pytest_keeps_its_signal_handlers():
    """Some tests run a supervisor in this process, which takes SIGTERM and SIGINT as a cancel of its run: after
    each test they are pytest's again (a Ctrl-C, or CI's SIGTERM, must stop the suite, not touch a stale run)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
