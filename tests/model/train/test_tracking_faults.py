"""Experiment tracking when the user or the tracker gets something wrong, against a real MLflow server on loopback
and the real W&B client: an address copied from the browser, a deleted experiment, an address that is no
tracking server, missing credentials, and credentials put in the spec.

The rule: a mistake in the spec is exit 2 before anything runs; a tracker that refuses what it is sent is said
in one line that names the fix (not "cannot be reached"), and the end of the stage does not wait for it; no
credential reaches a tracker. The server is llmops_testing.mlflow_server's (its own virtual environment, found
through $LLMOPS_MLFLOW; the tests that need it skip without it).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from llmops.errors import UserError
from llmops.runs.rundir import RunDir
from llmops.spec.load import parse_spec
from llmops_model.train import tracking
from llmops_testing import llmops, tiny_spec, write_spec
from llmops_testing import mlflow_server as mlflow_test_server

pytest.importorskip("mlflow", reason="the MLflow client: pip install 'llmops[tracking]'")
from mlflow.tracking import MlflowClient  # noqa: E402 (after the skip)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> str:
    proc, uri = mlflow_test_server.start(tmp_path_factory.mktemp("mlflow-server"))
    yield uri
    mlflow_test_server.stop(proc)


def _tracker(tmp_path: Path, name: str, trackers: dict, *, close_timeout: float | None = None,
             **overrides) -> tuple[tracking.Tracker, RunDir, list[str]]:
    """A run directory as submit leaves it, and the tracker of its pre-training stage; what it said."""
    spec = parse_spec(tiny_spec(name, tracking=trackers, **overrides))
    run = RunDir.create(spec, tmp_path / f"{name}-20260101-000000")
    said: list[str] = []
    tracker = tracking.Tracker(spec, run.path, stage="pretrain", info=said.append, close_timeout=close_timeout)
    return tracker, run, said


def _refused_then_closed(tracker: tracking.Tracker, said: list[str], steps: int = 5) -> tuple[dict, float]:
    """Log `steps` losses; once the tracker has said it was refused (as training would go on), close the stage:
    its one outcome and the seconds close() took."""
    for step in range(1, steps + 1):
        tracker.log(step, {"pretrain/loss": 1.0 / step})
    deadline = time.monotonic() + 60
    while not said and time.monotonic() < deadline:
        time.sleep(0.1)
    began = time.monotonic()
    (outcome,) = tracker.close(files=[], code=0)
    return outcome, time.monotonic() - began


def test_an_mlflow_address_copied_from_the_browser_exits_2_before_training(tmp_path):
    """The UI's address of a page (http://host:5000/#/experiments/3) passed validation, and every request then
    fetched the UI's HTML: tracking failed for the whole run with "cannot be reached"."""
    uri = "http://mlflow.internal:5000/#/experiments/3"
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec("ui", tracking={"mlflow": {"uri": uri}}))
    res = llmops("validate", str(spec))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"tracking.mlflow.uri = '{uri}': has a ?query or #fragment" in res.stderr
    assert "give the tracking server's address alone, e.g. http://host:5000" in res.stderr
    with pytest.raises(UserError) as refused:
        parse_spec(tiny_spec("ui", tracking={"mlflow": {"uri": "http://mlflow.internal:5000/?o=1"}}))
    assert "has a ?query or #fragment" in refused.value.render()


def test_a_deleted_experiment_is_said_with_the_fix_and_not_waited_for(tmp_path, mlflow_server):
    """An experiment deleted in the UI keeps its name: creating a run in it is refused for good. It read as
    "cannot be reached", the fix unsaid, and every stage's end waited its 5 s for it."""
    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment("deleted-by-hand")
    client.delete_experiment(experiment_id)
    tracker, _, said = _tracker(tmp_path, "deleted", {"mlflow": {"uri": mlflow_server,
                                                                 "experiment": "deleted-by-hand"}})
    outcome, took = _refused_then_closed(tracker, said)
    fix = f"mlflow experiments restore --experiment-id {experiment_id}), or name another in tracking.mlflow.experiment"
    assert outcome["state"] == "failed" and outcome["dropped"] == 5
    assert "the experiment 'deleted-by-hand' is deleted on the server. Fix: restore it" in outcome["error"]
    assert fix in outcome["error"]
    (line, *_) = said
    assert line.startswith(f"tracking: mlflow at {mlflow_server} refused the request (the experiment "), said
    assert fix in line and "cannot be reached" not in " ".join(said)
    assert took < tracking.CLOSE_TIMEOUT / 2, f"close() waited {took:.1f} s for a refusal"


def test_an_address_that_is_no_tracking_server_says_so(tmp_path, mlflow_server):
    """A path the server does not serve (the UI's /mlflow, a proxy's prefix left out) answers 404 with a web page."""
    tracker, _, said = _tracker(tmp_path, "nopath", {"mlflow": {"uri": f"{mlflow_server}/mlflow"}})
    outcome, took = _refused_then_closed(tracker, said)
    assert outcome["state"] == "failed"
    assert "HTTP 404 from /api/2.0/mlflow/experiments/get-by-name: a web page, not an API" in outcome["error"]
    assert f"Fix: no MLflow tracking server answers at {mlflow_server}/mlflow" in outcome["error"]
    assert "<" not in outcome["error"]  # the page itself is left out
    assert said[0].startswith(f"tracking: mlflow at {mlflow_server}/mlflow refused the request (MlflowException: "
                              "HTTP 404"), said
    assert took < tracking.CLOSE_TIMEOUT / 2


def test_missing_wandb_credentials_name_the_secret(tmp_path, monkeypatch, request):
    """W&B online without an API key: the real client refuses at once. It said "cannot be reached" and `wandb
    login`, which a batch job cannot do; the fix is the key under secrets: (or offline mode)."""
    wandb = pytest.importorskip("wandb", reason="the W&B client: pip install 'llmops[tracking]'")
    request.addfinalizer(wandb.teardown)  # a failed start leaves W&B's settings (this test's HOME) in the process
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings of this machine's user
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker, _, said = _tracker(tmp_path, "nokey", {"wandb": {"project": "llmops-tests"}})
    outcome, _ = _refused_then_closed(tracker, said)
    assert outcome["state"] == "failed"
    assert "Fix: the jobs need WANDB_API_KEY, named under secrets:" in outcome["error"], outcome
    assert "tracking.wandb.mode: offline" in outcome["error"]
    assert said[0].startswith("tracking: wandb at project llmops-tests (online) refused the request"), said


def test_missing_mlflow_credentials_name_the_secrets(tmp_path, monkeypatch):
    """A server with MLflow's basic auth and jobs without credentials (not named under secrets:): HTTP 401."""
    (tmp_path / "server").mkdir()
    proc, uri = mlflow_test_server.start(tmp_path / "server", auth=True)
    try:
        for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(name, raising=False)
        tracker, _, said = _tracker(tmp_path, "noauth", {"mlflow": {"uri": uri}})
        outcome, took = _refused_then_closed(tracker, said)
        assert outcome["state"] == "failed" and "HTTP 401" in outcome["error"], outcome
        assert ("Fix: the jobs need credentials this server accepts, in MLFLOW_TRACKING_TOKEN or "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, named under secrets:") in outcome["error"]
        assert said[0].startswith(f"tracking: mlflow at {uri} refused the request"), said
        assert took < tracking.CLOSE_TIMEOUT / 2

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")  # as secrets: hands them to the jobs
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_test_server.ADMIN_PASSWORD)
        tracker, _, said = _tracker(tmp_path, "withauth", {"mlflow": {"uri": uri}},
                                    close_timeout=30.0)  # the server hashes the password at every request
        for step in range(1, 6):
            tracker.log(step, {"pretrain/loss": 1.0 / step})
        (outcome,) = tracker.close(files=[], code=0)
        assert outcome == {"backend": "mlflow", "state": "ok", "sent": 5, "dropped": 0, "error": None}
        experiments = str(MlflowClient(uri).search_experiments())
        assert mlflow_test_server.ADMIN_PASSWORD not in experiments, "a credential reached the server"
    finally:
        mlflow_test_server.stop(proc)


def test_credentials_in_the_spec_never_reach_the_trackers(tmp_path, mlflow_server, monkeypatch):
    """A token put in slurm.env (or exported in slurm.setup) instead of secrets: is in spec.yaml already; the
    trackers published it to everyone who reads the experiment: as a parameter, in the spec.yaml artifact,
    in W&B's config. Now they get *** in its place, and the stage says which fields held one."""
    pytest.importorskip("wandb", reason="the W&B client: pip install 'llmops[tracking]'")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "env-token-3c3c")  # as secrets: hands it over: sent as a header
    (tmp_path / "wandb-dir").mkdir()
    secrets = ("hf_spec-token-1a1a", "wandb-spec-key-2b2b", "env-token-3c3c")
    tracker, run, said = _tracker(
        tmp_path, "leaky", {"mlflow": {"uri": mlflow_server}, "wandb": {"project": "llmops-tests", "mode": "offline"}},
        close_timeout=60.0,  # both clients start in this one close: on two busy cores W&B's alone takes seconds
        secrets=["MLFLOW_TRACKING_TOKEN"],
        slurm={"env": {"HF_TOKEN": secrets[0], "NCCL_DEBUG": "WARN"},
               "setup": [f"export WANDB_API_KEY='{secrets[1]}'", "module load cuda"]})
    assert secrets[0] in run.spec_path.read_text()  # the user's mistake, as the run directory holds it
    outcomes = tracker.close(files=[], code=0)
    assert [o["state"] for o in outcomes] == ["ok", "ok"], outcomes

    client = MlflowClient(mlflow_server)
    (found,) = client.search_runs([client.get_experiment_by_name("leaky").experiment_id])
    params = found.data.params
    assert params["slurm.env.HF_TOKEN"] == "***" and params["slurm.env.NCCL_DEBUG"] == "WARN"
    assert params["slurm.setup"] == '["export WANDB_API_KEY=***", "module load cuda"]'
    assert params["secrets.MLFLOW_TRACKING_TOKEN.env"] == "null"  # the names stay: they are what to set
    uploaded = Path(client.download_artifacts(found.info.run_id, "spec.yaml", str(tmp_path))).read_text()
    shown = yaml.safe_load(uploaded)
    assert shown["slurm"]["env"] == {"HF_TOKEN": "***", "NCCL_DEBUG": "WARN"} and shown["name"] == "leaky"
    sent = uploaded + str(found.data.params) + str(found.data.tags) + str(client.search_experiments())
    folders = list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert folders
    for path in (p for folder in folders for p in folder.rglob("*") if p.is_file()):
        sent += path.read_bytes().decode("latin-1")
    for secret in secrets:
        assert secret not in sent
    assert said == ["tracking: the spec holds what look like credentials (slurm.setup[0], slurm.env.HF_TOKEN); the "
                    "trackers get *** in their place. Fix: name them under secrets:, which keeps them out of "
                    "spec.yaml too (docs/trust-model.md#secrets)"]


def test_a_stage_that_fails_still_closes_its_tracking_run_as_failed(tmp_path, monkeypatch):
    """The trackers were closed only on a stage's way out when it succeeded or was preempted: a stage that
    ended in an error (here its checkpoint folder holds another's checkpoints, exit 2) left the MLflow run
    RUNNING for good, or never made, and wrote no `tracking` event. The store is MLflow's file store."""
    import json

    store = f"file://{tmp_path}/mlruns"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "iter_0000004").write_text("not ours")
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(
        "fails", steps=4, checkpoint={"interval": 4, "dir": str(folder)}, restarts={"max_restarts": 0},
        tracking={"mlflow": {"uri": store}}))
    res = llmops("run", str(spec), "--runs-dir", str(tmp_path / "runs"), timeout=300)
    said = " ".join((res.stdout + res.stderr).split())  # the terminal's lines wrapped
    assert res.returncode == 2 and "holds checkpoints llmops did not write" in said, said
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(store)
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.status == "FAILED"
    (stage,) = (tmp_path / "runs").glob("fails-*/stages/pretrain")
    events = [json.loads(line) for line in (stage / "events.jsonl").read_text().splitlines()]
    assert [e["state"] for e in events if e["event"] == "tracking"] == ["ok"], events
