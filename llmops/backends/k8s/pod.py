"""What runs inside a pod of a run: ``python -m llmops.backends.k8s.pod setup|run``.

The Kubernetes backend renders every pod with two containers that call this
module, configured only through environment variables (so the objects stay
plain data and a test can start the same processes with the same
environment, see ``tests/backends/k8s/test_pod_entrypoint.py``):

``setup`` (init container)
    Writes the resolved spec (``LLMOPS_SPEC``, from the run's ConfigMap) to
    ``spec.yaml`` in the run directory on the shared volume, once: every
    stage and restart then reads that file. Then, for a stage that follows
    another, waits until each index of the previous stage has left its
    completion marker, so that stages chain without the submitting laptop.
    Exits 2 when the previous stage failed or never finished.

``run`` (main container)
    Skips work that is already complete (a restarted JobSet re-creates
    finished stages), runs the stage: for training, once the rendezvous host
    resolves, ``llmops_model.launch`` (torchrun with the exit-code mapping,
    the c10d store on index 0); for data preparation, ``llmops prepare
    --phase P --shard <index> --num-shards N``. It forwards SIGTERM so the job can
    checkpoint, tees the output into ``logs/`` on the shared volume, and
    leaves a marker: ``stages/<stage>/<index>.done`` on success, or
    ``stages/<stage>.failed`` when the stage will not be retried, which the
    next stage's ``setup`` turns into a fast failure.

Exit codes are the launcher's: 0 done, 75 checkpointed after SIGTERM
(requeue), 2 bad input (fail fast), anything else a crash (retried).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from llmops.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_REQUEUE

POLL_SECONDS = 2.0  # a stat of a few marker files; cheap even on a parallel file system


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise SystemExit(f"[llmops] {name} is not set: this module runs in pods that llmops renders")
    return value


def _int_env(name: str, default: int = 0) -> int:
    """Integer from the environment; the downward API gives '' for an annotation that is not set yet."""
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def markers(run_dir: Path, stage: str) -> Path:
    return run_dir / "stages" / stage


def done_marker(run_dir: Path, stage: str, index: int) -> Path:
    return markers(run_dir, stage) / f"{index}.done"


def failed_marker(run_dir: Path, stage: str) -> Path:
    return run_dir / "stages" / f"{stage}.failed"


def stage_complete(run_dir: Path, stage: str, count: int) -> bool:
    return all(done_marker(run_dir, stage, i).exists() for i in range(count))


def _log(message: str) -> None:
    print(f"[llmops] {message}", flush=True)


def write_spec_once(run_dir: Path, text: str) -> None:
    """Put the resolved spec into the run directory unless it is there; refuse a different one."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    target = run_dir / "spec.yaml"
    if target.exists():
        if target.read_text() != text:
            raise _BadInput(f"{target} holds a different spec than this run's ConfigMap "
                            "(two runs share one run directory?); submit again for a fresh run id")
        return
    tmp = target.with_name(f".spec.yaml.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)  # pods of one stage may race here; they all write the same text


class _BadInput(Exception):
    pass


# Set by SIGTERM/SIGINT before the launcher runs. The pod's python is PID 1, to which the kernel delivers no
# signal it has no handler for: without one, a stop during `setup`'s wait or the rendezvous wait was lost (the
# pod sat out the grace period, or started training only to be killed without a checkpoint).
_STOP = threading.Event()


def _stop(signum, frame) -> None:
    _STOP.set()


def setup() -> int:
    run_dir = Path(_env("LLMOPS_RUN_DIR"))
    try:
        write_spec_once(run_dir, _env("LLMOPS_SPEC"))
    except _BadInput as exc:
        _log(str(exc))
        return EXIT_BAD_INPUT
    after = os.environ.get("LLMOPS_AFTER", "")
    if not after:
        return EXIT_OK
    previous, count = after.rsplit(":", 1)
    return wait_for_stage(run_dir, previous, int(count), timeout=_int_env("LLMOPS_WAIT_TIMEOUT", 7 * 86400))


def wait_for_stage(run_dir: Path, stage: str, count: int, *, timeout: float, poll: float = POLL_SECONDS) -> int:
    """Block until every index of `stage` is done (0), it failed or the wait timed out (2)."""
    deadline = time.monotonic() + timeout
    _log(f"waiting for stage '{stage}' ({count} index(es)) to finish")
    while True:
        if stage_complete(run_dir, stage, count):
            _log(f"stage '{stage}' finished; starting")
            return EXIT_OK
        failed = failed_marker(run_dir, stage)
        if failed.exists():
            _log(f"stage '{stage}' failed, so this stage will not run: {failed.read_text().strip()}")
            return EXIT_BAD_INPUT
        if time.monotonic() > deadline:
            _log(f"stage '{stage}' did not finish within {timeout:.0f}s (k8s.stage_wait_timeout); giving up")
            return EXIT_BAD_INPUT
        if _STOP.wait(poll):
            _log(f"stopped while waiting for stage '{stage}'")
            return EXIT_REQUEUE


def wait_for_host(host: str, *, timeout: float, poll: float = 1.0) -> bool:
    """The headless Service publishes pod 0's name only once the pod exists; wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.getaddrinfo(host, None)
            return True
        except socket.gaierror:
            if time.monotonic() > deadline or _STOP.wait(poll):
                return False


def launcher_argv(*, run_dir: Path, index: int) -> list[str]:
    """torchrun for this node: c10d rendezvous on the first pod, which hosts the store."""
    host, port = _env("LLMOPS_RDZV_HOST"), _env("LLMOPS_RDZV_PORT")
    timeout = _env("LLMOPS_RDZV_TIMEOUT", "900")
    return [
        sys.executable, "-m", "llmops_model.launch",
        "--nnodes", _env("LLMOPS_NNODES"), "--nproc-per-node", _env("LLMOPS_NPROC_PER_NODE"),
        "--node-rank", str(index),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{host}:{port}", "--rdzv-id", _env("LLMOPS_RDZV_ID"),
        # Say who hosts the store instead of letting torchrun guess from hostnames (which fails
        # with host networking); wait as long as pods may take to be scheduled and pull the image.
        "--rdzv-conf", f"is_host={1 if index == 0 else 0},join_timeout={timeout},read_timeout={timeout}",
        "--max-restarts", "0",
        str(run_dir),
    ]


def restart_number() -> int:
    """How many times this index ran before: the Job's per-index failure counts, or the JobSet's attempt."""
    return (_int_env("LLMOPS_INDEX_FAILURES") + _int_env("LLMOPS_INDEX_IGNORED_FAILURES")
            + _int_env("LLMOPS_JOBSET_RESTART"))


def prepare_argv(*, run_dir: Path, index: int) -> list[str]:
    """One shard of one data-preparation phase (llmops.prepare.pipeline's sharded interface)."""
    return [sys.executable, "-m", "llmops", "prepare", "--resolved", str(run_dir / "spec.yaml"),
            "--phase", _env("LLMOPS_PREPARE_PHASE"), "--shard", str(index), "--num-shards", _env("LLMOPS_NUM_SHARDS")]


def run() -> int:
    run_dir = Path(_env("LLMOPS_RUN_DIR"))
    stage, kind = _env("LLMOPS_STAGE"), _env("LLMOPS_STAGE_KIND", "torchrun")
    index = _int_env("JOB_COMPLETION_INDEX")
    # This stage runs again (a resumed run): an earlier attempt's verdict no longer stands, and the stages
    # waiting for it must wait for this one (they stopped at the old marker, failing the resumed run again).
    failed_marker(run_dir, stage).unlink(missing_ok=True)
    if kind == "prepare":
        # Shards are independent: only this index's own marker says its work is done.
        if done_marker(run_dir, stage, index).exists():
            _log(f"shard {index} of stage '{stage}' already finished; nothing to do")
            return EXIT_OK
        argv = prepare_argv(run_dir=run_dir, index=index)
    else:
        if stage_complete(run_dir, stage, _int_env("LLMOPS_NNODES", 1)):
            _log(f"stage '{stage}' already finished (markers in {markers(run_dir, stage)}); nothing to do")
            return EXIT_OK
        host = _env("LLMOPS_RDZV_HOST")
        if not wait_for_host(host, timeout=_int_env("LLMOPS_RDZV_TIMEOUT", 900)):
            if _STOP.is_set():
                _log("stopped before the launch: nothing to checkpoint")
                return EXIT_REQUEUE
            _log(f"the rendezvous host {host} does not resolve (is the headless Service there?)")
            return 1
        argv = launcher_argv(run_dir=run_dir, index=index)
    restart = restart_number()
    log = run_dir / "logs" / f"{stage}.restart-{restart}.node-{index}.log"
    code = _supervise(argv, log=log, env={**os.environ, "LLMOPS_RESTART": str(restart)})
    _leave_marker(run_dir, stage, index, code, restart=restart)
    return code


def _supervise(argv: list[str], *, log: Path, env: dict[str, str]) -> int:
    """Run argv, copying its output to stdout (kubectl logs) and to a file on the shared volume."""
    log.parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)

    def forward(signum, frame):  # the kubelet signals PID 1 only; torchrun passes it to the workers
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, forward)
    if _STOP.is_set():  # a stop that came while the child was being started (the launcher keeps it for its workers)
        child.send_signal(signal.SIGTERM)
    with open(log, "ab") as f:
        for line in iter(child.stdout.readline, b""):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            f.write(line)
            f.flush()
    return child.wait()


def _leave_marker(run_dir: Path, stage: str, index: int, code: int, *, restart: int) -> None:
    if code == EXIT_OK:
        done_marker(run_dir, stage, index).parent.mkdir(parents=True, exist_ok=True)
        done_marker(run_dir, stage, index).write_text(f"{time.time()}\n")
        return
    counted = _int_env("LLMOPS_INDEX_FAILURES") + _int_env("LLMOPS_JOBSET_RESTART")
    last_attempt = counted + 1 > _int_env("LLMOPS_MAX_RESTARTS")
    if code < 0:  # stopped by a signal (a cancel, a drain): not a verdict on the stage
        return
    if code == EXIT_BAD_INPUT or (code != EXIT_REQUEUE and last_attempt):
        reason = "bad input" if code == EXIT_BAD_INPUT else "no restarts left"
        failed_marker(run_dir, stage).parent.mkdir(parents=True, exist_ok=True)
        failed_marker(run_dir, stage).write_text(
            f"index {index} exited {code} on attempt {restart} ({reason}); see logs/{stage}.restart-{restart}."
            f"node-{index}.log\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"setup": setup, "run": run}
    if len(argv) != 1 or argv[0] not in commands:
        print("usage: python -m llmops.backends.k8s.pod setup|run (configured by LLMOPS_* variables)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    return commands[argv[0]]()


if __name__ == "__main__":
    sys.exit(main())
