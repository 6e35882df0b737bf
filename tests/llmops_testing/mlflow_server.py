"""A real MLflow tracking server on loopback, for the tracking tests.

The full ``mlflow`` (the server) caps pyarrow below llmops's and brings pandas and scikit-learn, so it lives in a
virtual environment of its own, found through $LLMOPS_MLFLOW (CI installs it, with MLflow's basic-auth app:
``mlflow[auth]``). Tests that need it skip without it, saying how to install it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

INSTALL = ("python3 -m venv DIR && DIR/bin/pip install 'mlflow[auth]==3.17.2', then set "
           "LLMOPS_MLFLOW=DIR/bin/mlflow (its own venv: it caps pyarrow below llmops's)")
ADMIN_PASSWORD = "llmops-tests-admin-7731"
"""The basic-auth server's admin password (everyone else may only read)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executable() -> str:
    """The server's `mlflow` executable; skips the test without one."""
    exe = os.environ.get("LLMOPS_MLFLOW")
    if not exe or not os.access(exe, os.X_OK):
        pytest.skip(f"the MLflow server is not installed: {INSTALL}")
    return exe


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def start(folder: Path, *, port: int | None = None, auth: bool = False) -> tuple[subprocess.Popen, str]:
    """A server (sqlite store, artifacts proxied into `folder`), up and healthy: (process, URI). With `auth`,
    MLflow's basic-auth app, whose admin has ADMIN_PASSWORD (skips where the app is not installed)."""
    exe = executable()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    args = []
    if auth:
        python = str(Path(exe).parent / "python")
        if subprocess.run([python, "-c", "import flask_wtf"], capture_output=True).returncode != 0:
            pytest.skip(f"MLflow's basic-auth app is not installed with the server: {INSTALL}")
        (folder / "auth.ini").write_text(
            f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{folder}/auth.db\n"
            f"admin_username = admin\nadmin_password = {ADMIN_PASSWORD}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(folder / "auth.ini"), MLFLOW_FLASK_SERVER_SECRET_KEY="llmops-tests")
        args = ["--app-name", "basic-auth"]
    port = port or free_port()
    with open(folder / "server.log", "w") as log:
        proc = subprocess.Popen(
            [exe, "server", *args, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--serve-artifacts",
             "--artifacts-destination", str(folder / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)  # its own group: uvicorn's
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while not healthy(uri):
        if proc.poll() is not None or time.time() > deadline:
            stop(proc)
            raise AssertionError((folder / "server.log").read_text()[-3000:])
        time.sleep(0.2)
    return proc, uri


def stop(proc: subprocess.Popen) -> None:
    """Kill the server at once: its store is a temporary folder, and a graceful stop waits seconds for the
    clients' kept-alive connections."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
