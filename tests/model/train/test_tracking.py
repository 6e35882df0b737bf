"""Experiment tracking against real trackers: an MLflow tracking server on loopback, W&B in offline mode.

The MLflow server is the full `mlflow` package, which pins packages llmops also uses, so it lives in a virtual
environment of its own: the tests find its `mlflow` executable through $LLMOPS_MLFLOW (CI installs it) and
skip without it. One server serves the module; the test of a tracker that is down starts it mid-way.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmops.runs.rundir import RunDir
from llmops.spec.load import parse_spec
from llmops_model.train import tracking
from llmops_model.train.metrics import StepLogger
from llmops_testing import llmops, losses, tiny_spec, wait_state, write_spec
from llmops_testing import mlflow_server as mlflow_test_server

mlflow = pytest.importorskip("mlflow", reason="the MLflow client: pip install 'llmops[tracking]'")
from mlflow.tracking import MlflowClient  # noqa: E402 (after the skip; imported once here, not in each tracker)


@pytest.fixture(scope="module")
def port() -> int:
    """The MLflow server's port: closed until a test asks for `mlflow_server`."""
    return mlflow_test_server.free_port()


@pytest.fixture(scope="module")
def mlflow_server(port: int, tmp_path_factory) -> str:
    """A real MLflow tracking server on loopback (sqlite store, artifacts proxied into tmp); its URI."""
    proc, uri = mlflow_test_server.start(tmp_path_factory.mktemp("mlflow-server"), port=port)
    yield uri
    mlflow_test_server.stop(proc)


def _run(tmp_path: Path, name: str, trackers: dict) -> tuple[RunDir, object]:
    """A run directory with the resolved spec, as submit leaves it, and that spec."""
    spec = parse_spec(tiny_spec(name, tracking=trackers))
    return RunDir.create(spec, tmp_path / f"{name}-20260101-000000"), spec


def _log_steps(tracker: tracking.Tracker, steps, *, stage: str, scale: float = 1.0) -> dict[int, float]:
    """Log a loss and lr per step the way StepLogger rows carry them; the losses by step."""
    sent = {}
    for step in steps:
        sent[step] = scale * 10.0 / step
        row = {"step": step, "steps": 99, "loss": sent[step], "lr": 1e-3, "grad_norm": None, "restart": 0,
               "stage": stage, "time": time.time()}
        tracker.log(step, tracking.metric_values(row, stage=stage))
    return sent


def _the_run(client: MlflowClient, experiment: str, run_id: str):
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.RUN_TAG}` = '{run_id}'")
    assert len(found) == 1, f"one MLflow run per llmops run, found {len(found)}"
    return found[0]


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    history = client.get_metric_history(run_id, key)
    assert len({m.step for m in history}) == len(history), f"{key}: a step sent twice"
    return {m.step: m.value for m in history}


def test_a_tracker_that_is_down_never_holds_training_up(tmp_path, monkeypatch, capsys):
    """Nothing listens: logging returns at once, close() within its bound, the event says what was lost."""
    monkeypatch.setattr(tracking, "CAPACITY", 10)
    monkeypatch.setattr(tracking, "CLOSE_TIMEOUT", 1.5)
    run, spec = _run(tmp_path, "down", {"mlflow": {"uri": f"http://127.0.0.1:{mlflow_test_server.free_port()}"}})
    logger = StepLogger(spec, run.path, enabled=True, world_size=1, restart=0)
    slowest = 0.0
    for step in range(1, 31):
        began = time.perf_counter()
        logger.track(step, {"loss": 1.0 / step, "lr": 1e-3})
        slowest = max(slowest, time.perf_counter() - began)
    assert slowest < 0.005, f"a log call took {slowest * 1e3:.1f} ms"
    began = time.monotonic()
    logger.event("exit", code=0, step=30)
    logger.close()
    assert time.monotonic() - began < 1.5 + 1.0
    events = [json.loads(line) for line in (run.stage_dir("pretrain") / "events.jsonl").read_text().splitlines()]
    (event,) = [e for e in events if e["event"] == "tracking"]
    assert event["backend"] == "mlflow" and event["state"] == "failed"
    assert event["sent"] == 0 and event["dropped"] == 60  # 30 steps x (loss, lr): 20 pushed out, 10 never sent
    assert "Connection refused" in event["error"]
    assert capsys.readouterr().out.count("[llmops] tracking: mlflow at http://127.0.0.1:") == 1  # once, not per step

    with socket.socket() as silent:  # a server that takes connections and never answers: requests hang
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        run, spec = _run(tmp_path, "hung", {"mlflow": {"uri": f"http://127.0.0.1:{silent.getsockname()[1]}"}})
        tracker = tracking.Tracker(spec, run.path, stage="pretrain", info=print)
        _log_steps(tracker, range(1, 6), stage="pretrain")
        began = time.monotonic()
        (outcome,) = tracker.close(files=[], code=0)
        assert time.monotonic() - began < 1.5 + 1.0
    assert outcome == {"backend": "mlflow", "state": "failed", "sent": 0, "dropped": 10,
                       "error": "still connecting at the stage's end"}


def test_buffered_metrics_arrive_when_the_server_comes_up(tmp_path, port, monkeypatch, request):
    """The server comes up mid-way: what was buffered arrives through the retries, before the stage ends."""
    mlflow_test_server.executable()
    assert not mlflow_test_server.healthy(f"http://127.0.0.1:{port}"), \
        "runs before the other MLflow tests: the server is not up yet"
    monkeypatch.setattr(tracking, "MAX_BACKOFF", 1.0)  # retried every second once the server is up
    monkeypatch.setattr(tracking, "CLOSE_TIMEOUT", 5.0)
    run, spec = _run(tmp_path, "late", {"mlflow": {"uri": f"http://127.0.0.1:{port}"}})
    said: list[str] = []
    tracker = tracking.Tracker(spec, run.path, stage="pretrain", info=said.append)
    early = _log_steps(tracker, range(1, 11), stage="pretrain")
    time.sleep(1.5)  # a few failed attempts
    uri = request.getfixturevalue("mlflow_server")
    late = _log_steps(tracker, range(11, 21), stage="pretrain")
    client = MlflowClient(uri)
    deadline = time.time() + 30
    while time.time() < deadline:
        exp = client.get_experiment_by_name("late")
        found = exp and client.search_runs([exp.experiment_id])
        if found and len(client.get_metric_history(found[0].info.run_id, "pretrain/loss")) == 20:
            break
        time.sleep(0.3)
    (outcome,) = tracker.close(files=[], code=0)
    assert outcome == {"backend": "mlflow", "state": "ok", "sent": 40, "dropped": 0, "error": None}
    assert _history(client, _the_run(client, "late", run.id).info.run_id, "pretrain/loss") == early | late
    assert sum("cannot be reached" in line for line in said) == 1, said


def test_stages_and_restarts_make_one_mlflow_run(tmp_path, mlflow_server):
    """Pre-training preempted and restarted, then SFT: one MLflow run, every step once, spec and files."""
    run, spec = _run(tmp_path, "stages", {"mlflow": {"uri": mlflow_server, "experiment": "llmops-tests"}})
    said: list[str] = []
    pretrain = run.stage_dir("pretrain")
    pretrain.mkdir(parents=True)
    (pretrain / "metrics.jsonl").write_text('{"step": 1}\n')

    first = tracking.Tracker(spec, run.path, stage="pretrain", info=said.append)
    losses_ = _log_steps(first, range(1, 6), stage="pretrain")
    assert first.close(files=[pretrain / "metrics.jsonl"], code=75)[0]["state"] == "ok"  # preempted at step 5
    restarted = tracking.Tracker(spec, run.path, stage="pretrain", info=said.append)
    again = _log_steps(restarted, range(4, 9), stage="pretrain", scale=2.0)  # resumed from a checkpoint at 3
    losses_ |= {s: v for s, v in again.items() if s > 5}
    assert restarted.close(files=[pretrain / "metrics.jsonl"], code=0)[0]["sent"] == 6  # steps 6-8, not 4-5

    sft = run.stage_dir("sft")
    sft.mkdir(parents=True)
    (sft / "metrics.jsonl").write_text('{"step": 2}\n')
    (run.path / "report.html").write_text("<html>report</html>")
    stage = tracking.Tracker(spec, run.path, stage="sft", info=said.append)
    sft_losses = _log_steps(stage, (1, 2), stage="sft")
    stage.log(2, tracking.metric_values({"loss": 0.25, "accuracy": 0.75}, stage="sft", prefix="eval_"))
    assert stage.close(files=[sft / "metrics.jsonl", sft / "eval.jsonl", run.path / "report.html"], code=0) == [
        {"backend": "mlflow", "state": "ok", "sent": 6, "dropped": 0, "error": None}]
    assert said == []

    client = MlflowClient(mlflow_server)
    found = _the_run(client, "llmops-tests", run.id)
    run_id = found.info.run_id
    assert found.info.status == "FINISHED" and found.info.run_name == run.id
    assert _history(client, run_id, "pretrain/loss") == losses_
    assert _history(client, run_id, "pretrain/lr") == dict.fromkeys(range(1, 9), 1e-3)
    assert _history(client, run_id, "sft/loss") == sft_losses
    assert _history(client, run_id, "sft/eval_loss") == {2: 0.25}
    assert _history(client, run_id, "sft/eval_acc") == {2: 0.75}
    assert "pretrain/grad_norm" not in found.data.metrics and "pretrain/restart" not in found.data.metrics
    params = found.data.params
    assert params["name"] == "stages" and params["train.steps"] == "4" and params["model.hidden_size"] == "64"
    assert params["tracking.mlflow.uri"] == mlflow_server
    files = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for folder in ("pretrain", "sft") for a in client.list_artifacts(run_id, folder)}
    assert files == {"spec.yaml", "report.html", "pretrain", "sft", "pretrain/metrics.jsonl", "sft/metrics.jsonl"}
    got = Path(client.download_artifacts(run_id, "spec.yaml", str(tmp_path)))
    assert yaml.safe_load(got.read_text()) == yaml.safe_load(run.spec_path.read_text())
    assert Path(client.download_artifacts(run_id, "sft/metrics.jsonl", str(tmp_path))).read_text() == '{"step": 2}\n'


def test_training_sends_every_step_to_mlflow(tmp_path, mlflow_server):
    """The real training process (one CPU process, four steps) with tracking: the loss of every step, and the
    run's report as written at its end (a stage sent what was on disk when it ended: none, or an earlier
    attempt's report, "CANCELLED" on a FINISHED run)."""
    spec = tiny_spec("tracked", tracking={"mlflow": {"uri": mlflow_server}})
    res = llmops("run", str(write_spec(tmp_path / "tracked.yaml", spec)), "--runs-dir", str(tmp_path / "runs"),
                 "--detach")
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "runs" / res.stdout.strip().splitlines()[-1]
    wait_state(run_dir, {"SUCCEEDED"})
    client = MlflowClient(mlflow_server)
    found = _the_run(client, "tracked", run_dir.name)
    assert _history(client, found.info.run_id, "pretrain/loss") == pytest.approx(losses(run_dir), rel=1e-6)
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]
    events = [json.loads(line) for line in (run_dir / "stages" / "pretrain" / "events.jsonl").read_text().splitlines()]
    assert [e for e in events if e["event"] == "tracking"] == [
        {"event": "tracking", "time": pytest.approx(time.time(), abs=300), "restart": 0, "backend": "mlflow",
         "state": "ok", "sent": len(found.data.metrics) * 4, "dropped": 0, "error": None}]
    deadline = time.time() + 30  # sent by the supervisor after it wrote the report, as the run ended
    while "report.html" not in {a.path for a in client.list_artifacts(found.info.run_id)} and time.time() < deadline:
        time.sleep(0.5)
    sent = Path(client.download_artifacts(found.info.run_id, "report.html", str(tmp_path / "got")))
    assert sent.read_text() == (run_dir / "report.html").read_text() and "SUCCEEDED" in sent.read_text()


def _wandb_records(path: Path) -> list:
    """The records of a `.wandb` file: W&B's LevelDB-style log (7-byte header, 32 KiB blocks of chunks with a
    7-byte header each: crc32, length, type full/first/middle/last) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, out, pending = path.read_bytes(), 32768, 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def test_wandb_offline_run_files_hold_the_history(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the W&B client: pip install 'llmops[tracking]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-dir").mkdir()
    run, spec = _run(tmp_path, "offline", {"wandb": {"project": "llmops-tests", "mode": "offline"}})
    sent = {}
    for stage, steps in (("pretrain", (1, 2, 3)), ("sft", (1, 2))):
        time.sleep(1 - time.time() % 1)  # W&B names a process's folder by the second it started
        folder = run.stage_dir(stage)
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text(f'{{"stage": "{stage}"}}\n')
        tracker = tracking.Tracker(spec, run.path, stage=stage, info=print)
        sent[stage] = _log_steps(tracker, steps, stage=stage)
        assert tracker.close(files=[folder / "metrics.jsonl"], code=0) == [
            {"backend": "wandb", "state": "ok", "sent": 2 * len(steps), "dropped": 0, "error": None}]

    folders = sorted((tmp_path / "wandb-dir" / "wandb").glob(f"offline-run-*-{tracking.wandb_id(run.id)}"))
    assert len(folders) == 2  # one per process, one run id: `wandb sync` makes them one run
    got: dict[str, dict[int, float]] = {}
    for folder in folders:
        records = _wandb_records(next(folder.glob("*.wandb")))
        (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert header.run_id == run.id and header.project == "llmops-tests"
        config = {i.key: json.loads(i.value_json) for i in header.config.update}
        assert config["name"] == "offline" and config["train"]["steps"] == 4
        rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                for r in records if r.WhichOneof("record_type") == "history"]
        (stage,) = {key.split("/")[0] for row in rows for key in row if not key.startswith("_")}
        got[stage] = {row[f"{stage}/step"]: row[f"{stage}/loss"] for row in rows}
        assert (folder / "files" / stage / "metrics.jsonl").read_text() == f'{{"stage": "{stage}"}}\n'
        assert (folder / "files" / "spec.yaml").is_file()
    assert got == sent


def test_bad_tracking_sections_exit_2_with_the_fix(tmp_path):
    def validate(trackers: dict, *, code: str = "") -> subprocess.CompletedProcess:
        path = write_spec(tmp_path / "spec.yaml", tiny_spec("bad", tracking=trackers))
        if not code:
            return llmops("validate", str(path))
        return subprocess.run([sys.executable, "-c", f"import sys; {code}; sys.argv = ['llmops', 'validate', "
                               f"{str(path)!r}]\nfrom llmops.cli import main; main()"], capture_output=True, text=True)

    res = validate({"mlflow": {"uri": "ftp://tracker:5000"}})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "tracking.mlflow.uri = 'ftp://tracker:5000': is not an http(s)://host[:port] URI" in res.stderr
    res = validate({"mlflow": {"uri": "http://me:secret@tracker:5000"}})
    assert res.returncode == 2 and "holds credentials" in res.stderr
    res = validate({"mlflow": {"uri": "http://tracker:5000", "token": "x"}})
    assert res.returncode == 2 and "tracking.mlflow.token: is not a known field" in res.stderr
    res = validate({"wandb": {"project": "p", "mode": "shared"}})
    assert res.returncode == 2 and "tracking.wandb.mode = 'shared'" in res.stderr and "online" in res.stderr
    res = validate({"mlflow": {"uri": "http://tracker:5000"}}, code="sys.modules['mlflow'] = None")
    assert res.returncode == 2 and "pip install 'llmops[tracking]'" in res.stderr, res.stderr
    assert validate({"mlflow": {"uri": "https://tracker"}, "wandb": {"project": "p"}}).returncode == 0


def test_an_evaluation_of_a_run_without_trackers_sends_nothing(tmp_path):
    """`llmops eval RUN` of a spec with no `tracking:` section (the default) crashed after saving its scores."""
    from llmops_model.train.tracking import log_evaluation

    spec = parse_spec(tiny_spec("untracked"))
    assert spec.tracking is None
    assert log_evaluation(spec, tmp_path, stage="pretrain", step=2, scores={"acc": 0.5}, files=[],
                          info=print) == []
