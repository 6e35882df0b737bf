"""Experiment tracking: a stage's metrics, the resolved spec and the stage's files, sent to MLflow and W&B.

Built around one rule: a tracker never holds up or fails training. So

* each tracker (``tracking.mlflow``, ``tracking.wandb``) has a thread of its own with a bounded buffer in
  front of it: :meth:`Tracker.log` appends a row and returns (microseconds, whatever the server does); the
  thread sends what has gathered about once a second, in batches (MLflow's ``log_batch`` takes up to 1,000
  values a request);
* a failed send is retried with backoff (1 s doubling to 30 s), the rows kept; the first failure prints one
  ``[llmops]`` line, not one per step, which tells a tracker that cannot be reached from one that answered and
  refused (credentials, a deleted experiment, an address that is no tracking server), with the fix; when the
  buffer is full the oldest rows are dropped and counted;
* :meth:`Tracker.close` gives the threads :data:`CLOSE_TIMEOUT` seconds to deliver the rest and the stage's
  files, then returns even if a request hangs (the threads are daemons and die with the process), and
  returns one outcome per tracker, which :class:`~llmops_model.train.metrics.StepLogger` writes to the
  stage's ``events.jsonl`` (``event: tracking``) for the run report;
* the client libraries are imported in the threads, only for the trackers the spec names: a missing one is
  caught before training by :func:`require` (exit 2 with the pip command), a slow import delays no step.

One llmops run is one tracking run, although pre-training, each align stage and each restart of any of them
are separate processes: every process finds the run the first one created (MLflow: the tag
``llmops.run_id``; W&B: the run id, with ``resume="allow"``) and logs its stage's metrics under the stage's
name (``pretrain/loss``, ``sft/eval_loss``, ``dpo/acc``) at the training step. What each tracker acknowledged
is recorded in ``stages/<stage>/tracking.json``: a restart resumes from a checkpoint and re-runs the steps
after it, and the steps already delivered are not sent again (the first values stay; metrics.jsonl has both).

`llmops eval` of a run's checkpoint adds its scores to the same tracking run afterwards
(:func:`log_evaluation`): ``<stage>/lm_eval/<task>/<metric>`` at the checkpoint's step, and the results
JSON as a file, without touching the run's status.

What the trackers get of the resolved spec leaves out the values of environment variables named like
credentials (``slurm.env.HF_TOKEN``): those belong under ``secrets:``, and one put in the spec by mistake is not
also published to everyone who can read the tracking server.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import yaml

from llmops import secrets
from llmops.errors import EXIT_OK, EXIT_REQUEUE, UserError
from llmops.runs.rundir import RunDir, atomic_write
from llmops.spec.run import TRACKING_INSTALL, MLflowTracking, RunSpec, TrackingSpec, WandbTracking

CLOSE_TIMEOUT = 5.0
"""Seconds :meth:`Tracker.close` waits for the last rows and the stage's files: the end of training never
waits longer for a tracker that is gone."""
CAPACITY = 20_000
"""Rows (logged steps and evaluations) buffered per tracker while it cannot be reached; then the oldest go."""
BATCH = 1000
"""Values per request at most (MLflow's log_batch limit)."""
INTERVAL = 1.0
"""Seconds between sends while training runs: rows gather into batches rather than one request per step."""
MAX_BACKOFF = 30.0
RUN_TAG = "llmops.run_id"
"""The MLflow tag that names the llmops run (the run directory's name) a tracking run belongs to."""

# Row keys that describe the row rather than measure the step; the rest of a row's numbers are metrics.
_BOOKKEEPING = {"step", "steps", "restart", "time", "stage", "method"}
# The step line's short names, so that the charts read like the log ("dpo/acc").
_SHORT = {"accuracy": "acc"}

_REFUSED_CHARS = re.compile(r"[^\w\-. /]")
"""Characters MLflow refuses in a metric's or parameter's name (W&B takes what MLflow takes)."""

Row = tuple[int, int, dict[str, float]]
"""A logged step: (step, time in milliseconds, metric name -> value)."""

_HTTP_ERROR = re.compile(r"API request to endpoint (\S+) failed with error code (\d+) != \d+\. Response body: '(.*)'")
"""How MLflow's client words an HTTP error whose answer is not JSON (a proxy's or a login page's)."""


def require(tracking: TrackingSpec) -> None:
    """UserError (exit 2) when a tracker the spec names has no client library here: every rank checks it at
    start, so the message is printed once and nothing has trained yet."""
    missing = tracking.missing_libraries()
    if missing:
        raise UserError(f"tracking: {' and '.join(missing)} asked for, but its client library is not installed "
                        "in this environment", f"{TRACKING_INSTALL} where the jobs run, or remove the tracker "
                        "from tracking:")


def metric_values(row: dict[str, Any], *, stage: str, prefix: str = "") -> dict[str, float]:
    """The row's numbers as tracker metrics named `<stage>/<prefix><name>`; bookkeeping keys and None left out."""
    return {f"{stage}/{prefix}{_SHORT.get(k, k)}": float(v) for k, v in row.items()
            if k not in _BOOKKEEPING and isinstance(v, int | float) and not isinstance(v, bool)}


class Tracker:
    """The trackers of one stage's process (on the logging rank only): :meth:`log` never blocks."""

    def __init__(self, spec: RunSpec, run_dir: Path, *, stage: str, info, capacity: int | None = None,
                 close_timeout: float | None = None, training: bool = True):
        """`training`: a stage's process, which marks the tracking run RUNNING and records what was delivered
        (see the module); False for a later addition (an evaluation), which does neither."""
        run = RunDir(run_dir)
        self.stage, self.info, self.training = stage, info, training
        self.close_timeout = CLOSE_TIMEOUT if close_timeout is None else close_timeout
        capacity = capacity or CAPACITY
        self.state_path = run.stage_dir(stage) / "tracking.json"
        self._state_lock = threading.Lock()
        delivered = _read_json(self.state_path) if training else {}
        shown, masked = secrets.shareable(_read_spec(run))
        if masked:
            info(f"tracking: the spec holds what look like credentials ({', '.join(masked)}); the trackers get "
                 f"{secrets.MASK} in their place. Fix: name them under secrets:, which keeps them out of spec.yaml too "
                 "(docs/trust-model.md#secrets)")
        sinks: list[_Sink] = []
        if spec.tracking.mlflow is not None:
            sinks.append(_MLflow(spec.tracking.mlflow, run=run, spec_name=spec.name, stage=stage, live=training,
                                 shown=shown, masked=bool(masked)))
        if spec.tracking.wandb is not None:
            sinks.append(_Wandb(spec.tracking.wandb, run=run, stage=stage, shown=shown, masked=bool(masked)))
        self.workers = [_Worker(s, capacity=capacity, info=info, delivered=self._delivered,
                                skip_through=int(delivered.get(s.name, {}).get("step", 0))) for s in sinks]
        for w in self.workers:
            w.start()

    def log(self, step: int, values: dict[str, float]) -> None:
        """Queue one step's metrics for every tracker (a step a tracker already has is left out)."""
        if values:
            row = (step, int(time.time() * 1000), values)
            for w in self.workers:
                w.put(row)

    def close(self, *, files: list[Path], code: int | None) -> list[dict[str, Any]]:
        """Deliver what is left and `files` (those that exist) within the close timeout, end the tracking run's
        part for this process (`code`: its exit code); one outcome per tracker, for the stage's events."""
        deadline = time.monotonic() + self.close_timeout
        for w in self.workers:
            w.stop(files=[f for f in files if f.is_file()], code=code, timeout=self.close_timeout)
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()) + 0.2)
        outcomes = [w.outcome() for w in self.workers]
        for o in outcomes:
            if o["state"] != "ok":
                self.info(f"tracking: {o['backend']} {o['state']}: {o['sent']} values sent, {o['dropped']} not "
                          f"delivered ({o['error']})")
        return outcomes

    def _delivered(self, backend: str, step: int) -> None:
        """Record that `backend` acknowledged every row up to `step` (called from the threads; a record that
        cannot be written costs a restart some repeated steps, nothing more)."""
        if not self.training:
            return
        with self._state_lock:
            state = _read_json(self.state_path)
            state[backend] = {"step": step, "time": time.time()}
            try:
                self.state_path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(self.state_path, json.dumps(state))
            except OSError:
                pass


class _Sink:
    """One tracker's client: open (find or create the tracking run), send rows, close (files, status).
    Every method may raise; the worker retries."""

    name = ""
    where = ""

    def refusal(self, exc: Exception) -> str | None:
        """The fix, when `exc` is the tracker's answer refusing what was sent ("" when its answer says all there
        is to say); None when it was not reached or failed on its side, which retrying may mend."""
        return exc.fix if isinstance(exc, _Refused) else None

    def open(self) -> None: ...

    def send(self, rows: list[Row]) -> None: ...

    def close(self, files: list[Path], code: int | None) -> None: ...


class _Worker(threading.Thread):
    """Sends one sink's rows from a bounded buffer, retrying with backoff; never raises."""

    def __init__(self, sink: _Sink, *, capacity: int, info, delivered, skip_through: int):
        super().__init__(name=f"llmops-tracking-{sink.name}", daemon=True)
        self.sink, self.capacity, self.info, self.delivered = sink, capacity, info, delivered
        self.skip_through = skip_through
        self.rows: deque[Row] = deque()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.files: list[Path] = []
        self.code: int | None = None
        self.deadline, self.timeout = math.inf, CLOSE_TIMEOUT
        self.sent = self.dropped = self.in_flight = 0
        self.opened = self.closed = self.refused = False
        self.told: set[bool] = set()  # the kinds of failure said (refused or not): one line each, not one a step
        self.error: str | None = None

    def put(self, row: Row) -> None:
        if row[0] <= self.skip_through:
            return
        with self.lock:
            if len(self.rows) >= self.capacity:
                self.dropped += len(self.rows.popleft()[2])
            self.rows.append(row)

    def stop(self, *, files: list[Path], code: int | None, timeout: float) -> None:
        """Deliver the rest and `files`, and close, within `timeout` seconds; then the thread gives up."""
        self.files, self.code, self.timeout = files, code, timeout
        self.deadline = time.monotonic() + timeout
        self.stopping.set()

    def run(self) -> None:
        delay = 0.0
        while True:
            if not self.stopping.is_set():
                if delay or len(self.rows) < BATCH:
                    self.stopping.wait(delay or INTERVAL)
            elif delay:
                time.sleep(min(delay, 0.25, max(0.0, self.deadline - time.monotonic())))
            stopping = self.stopping.is_set()
            if stopping and (time.monotonic() >= self.deadline or self.refused):  # a refusal stands: no waiting
                return
            delay = 0.0 if self._attempt(self._cycle) else min(max(1.0, 2 * delay), MAX_BACKOFF)
            if stopping and delay == 0.0 and not self.rows:
                if self._attempt(lambda: self.sink.close(self.files, self.code)):
                    self.closed = True
                    return
                delay = 0.25

    def _cycle(self) -> None:
        """Open the tracking run if needed and send one batch; raises on a failure (the batch is kept)."""
        if not self.opened:
            self.sink.open()
            self.opened = True
        batch, count = [], 0
        with self.lock:
            while self.rows and count + len(self.rows[0][2]) <= BATCH or (self.rows and not batch):
                row = self.rows.popleft()
                batch.append(row)
                count += len(row[2])
            self.in_flight = count
        if not batch:
            return
        try:
            self.sink.send(batch)
        except BaseException:
            with self.lock:
                self.in_flight = 0
                self.rows.extendleft(reversed(batch))
                while len(self.rows) > self.capacity:
                    self.dropped += len(self.rows.popleft()[2])
            raise
        with self.lock:
            self.in_flight = 0
            self.sent += count
        self.delivered(self.sink.name, max(r[0] for r in batch))

    def _attempt(self, call) -> bool:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 (whatever the client raises, training goes on)
            try:
                fix = self.sink.refusal(exc)
            except Exception:  # noqa: BLE001
                fix = None
            self.refused = fix is not None
            what = _describe(exc).rstrip(".")
            self.error = what + (f". Fix: {fix}" if fix else "")
            if self.refused not in self.told:
                self.told.add(self.refused)
                said = "refused the request" if self.refused else "cannot be reached"
                with contextlib.suppress(Exception):  # not even a closed stdout may end the thread
                    self.info(f"tracking: {self.sink.name} at {self.sink.where} {said} ({what}); training goes on, "
                              f"up to {self.capacity:,} logged steps are buffered and retried"
                              + (f". Fix: {fix}" if fix else ""))
            return False
        self.refused = False
        return True

    def outcome(self) -> dict[str, Any]:
        """The `tracking` event's fields: state ok (everything delivered), degraded (reached, but rows or the
        stage's files missed), failed (never reached); sent and dropped count values."""
        with self.lock:
            left = sum(len(r[2]) for r in self.rows) + self.in_flight
            sent, dropped = self.sent, self.dropped + left
        state = "failed" if not self.opened else "degraded" if dropped or not self.closed else "ok"
        error = None if state == "ok" else self.error
        if state != "ok" and error is None:  # no request failed: one was still waiting for its answer
            error = "still connecting at the stage's end" if state == "failed" else \
                f"not finished within {self.timeout:g} s of the stage's end"
        return {"backend": self.sink.name, "state": state, "sent": sent, "dropped": dropped, "error": error}


class _MLflow(_Sink):
    """MLflow through its client (mlflow-skinny): one run per llmops run, found by the tag RUN_TAG."""

    name = "mlflow"

    def __init__(self, cfg: MLflowTracking, *, run: RunDir, spec_name: str, stage: str, live: bool = True,
                 shown: dict[str, Any], masked: bool):
        self.cfg, self.run, self.stage, self.live = cfg, run, stage, live
        self.shown, self.masked = shown, masked
        self.experiment = cfg.experiment or spec_name
        self.where = cfg.uri
        self.client = None
        self.run_id: str | None = None

    def open(self) -> None:
        # The client retries a failed request 7 times with backoff (minutes) and waits 120 s for an answer;
        # the worker retries on its own, so unless the environment says otherwise a request fails fast.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        if self.cfg.uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # asked for by name: MLflow 3 deprecates it
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.cfg.uri)
        experiment_id = self._experiment(client)
        ours = self.run.id.replace("'", "")  # run ids are names and timestamps; never a quote
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{ours}'", max_results=1)
        run = found[0] if found else client.create_run(experiment_id, run_name=ours, tags={RUN_TAG: ours})
        if self.live and run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        if not run.data.params:  # the first process of the run: the resolved spec, as parameters and as a file
            from mlflow.entities import Param

            params = [Param(_REFUSED_CHARS.sub("_", k)[:250], v[:6000])  # the characters MLflow takes
                      for k, v in _flatten(self.shown).items()]
            for i in range(0, len(params), 100):  # log_batch's limit for parameters
                client.log_batch(run.info.run_id, params=params[i:i + 100])
            if not self.masked and self.run.spec_path.is_file():
                client.log_artifact(run.info.run_id, str(self.run.spec_path))
            elif self.masked:  # a copy without the credentials' values, under the same name
                with tempfile.TemporaryDirectory() as folder:
                    copy = Path(folder) / self.run.spec_path.name
                    copy.write_text(yaml.safe_dump(self.shown, sort_keys=False))
                    client.log_artifact(run.info.run_id, str(copy))
        self.client, self.run_id = client, run.info.run_id

    def refusal(self, exc: Exception) -> str | None:
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException):
            return super().refusal(exc)
        if "not in a valid JSON format" in str(exc) or exc.error_code == "ENDPOINT_NOT_FOUND":
            return (f"no MLflow tracking server answers at {self.where}: give tracking.mlflow.uri as the server's "
                    "address (http://host:5000, with the path of a proxy in front of it, if any)")
        status = exc.get_http_status_code()  # 500 for a request that got no answer
        if status in (401, 403):
            return ("the jobs need credentials this server accepts, in MLFLOW_TRACKING_TOKEN or "
                    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, named under secrets: "
                    "(docs/tracking.md#credentials)")
        return "" if 400 <= status < 500 and status not in (408, 429) else None

    def _experiment(self, client) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is not None and found.lifecycle_stage == "deleted":  # its name stays taken until purged
            raise _Refused(f"the experiment {self.experiment!r} is deleted on the server",
                           f"restore it (MLFLOW_TRACKING_URI={self.where} mlflow experiments restore "
                           f"--experiment-id {found.experiment_id}), or name another in tracking.mlflow.experiment")
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(self.experiment)
        except Exception:  # created meanwhile by another run of the same name
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def send(self, rows: list[Row]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(k, v, ts, step) for step, ts, values in rows for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, files: list[Path], code: int | None) -> None:
        for f in files:  # the stage's files under <stage>/, the run's (report.html) at the top
            folder = None if f.parent == self.run.path else self.stage
            self.client.log_artifact(self.run_id, str(f), artifact_path=folder)
        if code is not None:
            status = "FINISHED" if code == EXIT_OK else "KILLED" if code == EXIT_REQUEUE else "FAILED"
            self.client.set_terminated(self.run_id, status=status)


class _Wandb(_Sink):
    """Weights & Biases through `wandb`: the run id is the llmops run's, resumed by each process."""

    name = "wandb"

    def __init__(self, cfg: WandbTracking, *, run: RunDir, stage: str, shown: dict[str, Any], masked: bool):
        self.cfg, self.run, self.stage = cfg, run, stage
        self.shown, self.masked = shown, masked
        self.where = f"project {cfg.project} ({cfg.mode})"
        self.wb = None

    def refusal(self, exc: Exception) -> str | None:
        from wandb import errors

        if isinstance(exc, errors.AuthenticationError) or (isinstance(exc, errors.UsageError)
                                                           and "api key" in str(exc).lower()):
            return ("the jobs need WANDB_API_KEY, named under secrets: (docs/tracking.md#credentials), or "
                    "tracking.wandb.mode: offline and `wandb sync` later")
        return "" if isinstance(exc, errors.UsageError) else super().refusal(exc)

    def open(self) -> None:
        import wandb

        # console off: W&B would otherwise wrap stdout, where the step lines are parsed from.
        settings = wandb.Settings(console="off", init_timeout=30)
        folder = None if os.environ.get("WANDB_DIR") else str(self.run.path)  # offline runs stay with the run
        self.wb = wandb.init(project=self.cfg.project, entity=self.cfg.entity, id=wandb_id(self.run.id),
                             name=self.run.id, resume="allow", mode=self.cfg.mode, dir=folder,
                             config=self.shown, settings=settings)
        # Each stage counts its own steps: its metrics are charted against <stage>/step, not W&B's one step.
        self.wb.define_metric(f"{self.stage}/step")
        self.wb.define_metric(f"{self.stage}/*", step_metric=f"{self.stage}/step")
        if self.masked:  # a copy without the credentials' values, in W&B's own folder for the run
            copy = Path(self.wb.dir) / self.run.spec_path.name
            copy.write_text(yaml.safe_dump(self.shown, sort_keys=False))
            self.wb.save(str(copy), base_path=self.wb.dir, policy="now")
        elif self.run.spec_path.is_file():
            self.wb.save(str(self.run.spec_path), base_path=str(self.run.path), policy="now")

    def send(self, rows: list[Row]) -> None:
        for step, _, values in rows:
            self.wb.log({**values, f"{self.stage}/step": step})

    def close(self, files: list[Path], code: int | None) -> None:
        for f in files:
            self.wb.save(str(f), base_path=str(f.parent if f.parent == self.run.path else f.parent.parent),
                         policy="now")
        self.wb.finish(exit_code=code or 0)
        import wandb

        wandb.teardown()  # W&B's service and threads end here, not when the process does (a later fork stays safe)


def log_evaluation(spec: RunSpec, run_dir: Path, *, stage: str, step: int, scores: dict[str, float],
                   files: list[Path], info) -> list[dict[str, Any]]:
    """Add an evaluation of a stage's checkpoint to the run's trackers: each score as
    `<stage>/lm_eval/<name>` at the checkpoint's step, `files` under `<stage>/`; one outcome per tracker
    ([] when the spec names none). Never raises for a tracker that is down: the outcome says so."""
    if spec.tracking is None or (spec.tracking.mlflow is None and spec.tracking.wandb is None):
        return []
    require(spec.tracking)
    tracker = Tracker(spec, run_dir, stage=stage, info=info, training=False)
    tracker.log(step, {f"{stage}/lm_eval/{_REFUSED_CHARS.sub('_', k)}": v for k, v in scores.items()})
    return tracker.close(files=files, code=None)


def log_report(spec: RunSpec, run_dir: Path, *, info) -> list[dict[str, Any]]:
    """Send the run's report, written once the run has ended, to its tracking run (in place of any earlier
    one); one outcome per tracker, [] when the spec names none or there is no report. A stage cannot send it:
    when a stage ends, the report on disk is the previous attempt's or none (a FINISHED run showed
    "CANCELLED 10/20"). Never raises for a tracker that is down: the outcome says so."""
    report = run_dir / "report.html"
    if spec.tracking is None or (spec.tracking.mlflow is None and spec.tracking.wandb is None) or not report.is_file():
        return []
    require(spec.tracking)
    tracker = Tracker(spec, run_dir, stage=spec.training_stages[-1], info=info, training=False)
    return tracker.close(files=[report], code=None)


def wandb_id(run_id: str) -> str:
    """The W&B run id of an llmops run: its id with anything W&B refuses in an id made a dash."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)[:128]


def _read_spec(run: RunDir) -> dict[str, Any]:
    """The resolved spec as written at submit (every stage and restart sends the same), or {} if unreadable."""
    try:
        data = yaml.safe_load(run.spec_path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys; lists and scalars as JSON text (`train.lr: "0.003"`)."""
    if isinstance(data, dict) and data:
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data if isinstance(data, str) else json.dumps(data)} if prefix else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class _Refused(Exception):
    """A tracker's refusal that llmops recognises itself (a deleted experiment), with the fix."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix


def _describe(exc: Exception) -> str:
    """The exception in one short line: its start and its end, where a wrapped cause ends (MLflow names the
    root cause last: "... [Errno 111] Connection refused')."); a web page in an answer is left out."""
    text = " ".join(str(exc).split())
    if isinstance(exc, _Refused):
        return text
    answer = _HTTP_ERROR.fullmatch(text)
    if answer:  # MLflow's words for an HTTP error whose body is no JSON
        page = answer[3].lstrip().startswith("<")
        text = f"HTTP {answer[2]} from {answer[1]}: {'a web page, not an API' if page else answer[3]}"
    text = re.sub(r"\. Response body: '\s*<.*", ": a web page, not an API's answer", text)
    if len(text) > 300:
        text = f"{text[:150]} ... {text[-150:]}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
