"""Submit, status, logs and cancel through the official client, against the fake API server
in conftest.py; and every way a submit can be refused: a clear message, exit code 2, and
nothing left behind on the cluster."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest

from llmops import runner
from llmops.errors import UserError
from llmops.runs.logs import parse_step_line
from llmops.spec.load import parse_spec
from llmops_testing import k8s_spec, llmops, tiny_spec, write_spec


def plan(tmp_path, **k8s):
    return runner.plan(parse_spec(k8s_spec(**k8s)), root=tmp_path / "runs")


def refused(tmp_path, **k8s) -> tuple[str, Path]:
    """The message of a refused submit, and the run directory it did not leave behind."""
    request = plan(tmp_path, **k8s)
    with pytest.raises(UserError) as info:
        runner.submit(request)
    assert not request.run_path.exists()
    return info.value.render(), request.run_path


def test_submit_applies_every_object_server_side(fake_cluster, tmp_path):
    run = runner.submit(plan(tmp_path))
    assert fake_cluster.kinds() == ["ConfigMap", "Job", "NetworkPolicy", "Service"]
    assert {manager for _, manager in fake_cluster.applies} == {"llmops"}
    status = run.read_status()
    assert status.state == "PENDING" and status.job_id == f"llmops/{run.id}"


def test_status_follows_pods_and_the_job_conditions(fake_cluster, tmp_path):
    run = runner.submit(plan(tmp_path))
    job_name = f"{run.id}-pretrain"
    fake_cluster.add("pods", f"{job_name}-0-x", fake_cluster.job_pod(job_name, 0, scheduled=False))
    st = runner.status(run)
    assert st.state == "PENDING" and "Insufficient cpu" in st.message
    for i in (0, 1):
        fake_cluster.add("pods", f"{job_name}-{i}-x", fake_cluster.job_pod(job_name, i, ignored=1))
    st = runner.status(run)
    assert (st.state, st.restarts) == ("RUNNING", 1) and "2/2 pod(s) running" in st.message
    fake_cluster.logs[f"{job_name}-1-x"] = "[step 1/4] loss=6.2 lr=1e-3\n"
    assert list(runner.logs(run, follow=False)) == ["[node1]:[step 1/4] loss=6.2 lr=1e-3"]
    assert parse_step_line(list(runner.logs(run, follow=False))[0]).step == 1
    job = fake_cluster.objects[("jobs", "llmops", job_name)]
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    st = runner.status(run)
    assert (st.state, st.exit_code) == ("SUCCEEDED", 0)


def test_a_failed_job_fails_the_run_with_the_controllers_reason(fake_cluster, tmp_path):
    run = runner.submit(plan(tmp_path))
    job = fake_cluster.objects[("jobs", "llmops", f"{run.id}-pretrain")]
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                     "message": "Container trainer for pod llmops/x failed with exit code 2 "
                                                "matching FailJob rule at index 0"}]}
    st = runner.status(run)
    assert st.state == "FAILED" and "exit code 2" in st.message and "PodFailurePolicy" in st.message


def test_cancel_deletes_the_runs_objects(fake_cluster, tmp_path):
    run = runner.submit(plan(tmp_path))
    final = runner.cancel(run, wait=10)
    assert final.state == "CANCELLED" and fake_cluster.kinds() == []


def test_resubmitting_a_run_replaces_the_old_objects(fake_cluster, tmp_path):
    run = runner.submit(plan(tmp_path))
    job = fake_cluster.objects[("jobs", "llmops", f"{run.id}-pretrain")]
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                     "message": "too many failures"}]}
    assert runner.status(run).state == "FAILED"
    first_uid = job["metadata"]["uid"]
    runner.resume(run)
    new_job = fake_cluster.objects[("jobs", "llmops", f"{run.id}-pretrain")]
    assert new_job["metadata"]["uid"] != first_uid and "status" not in new_job
    assert run.read_status().state == "PENDING"


def test_unreachable_api_server_is_a_clear_error_with_exit_2(tmp_path, kubeconfig_for):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = kubeconfig_for(tmp_path / "kubeconfig", f"https://127.0.0.1:{port}")
    spec = write_spec(tmp_path / "s.yaml", k8s_spec())
    res = llmops("submit", str(spec), "--runs-dir", str(tmp_path / "runs"), env={"KUBECONFIG": str(kubeconfig)})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"cannot reach the Kubernetes API server at https://127.0.0.1:{port}" in res.stderr
    assert "--context" in res.stderr
    assert not any((tmp_path / "runs").iterdir())  # nothing was submitted, so no run is left behind


def test_unknown_context_names_the_fix(fake_cluster, tmp_path):
    message, _ = refused(tmp_path, context="prod-eu")
    assert "context 'prod-eu'" in message and "kubectl config get-contexts" in message


def test_missing_namespace(fake_cluster, tmp_path):
    message, _ = refused(tmp_path, namespace="team-a")
    assert "namespace 'team-a' does not exist" in message and "kubectl apply -k cluster/k8s" in message
    assert fake_cluster.kinds("team-a") == []


def test_missing_claim(fake_cluster, tmp_path):
    message, _ = refused(tmp_path, checkpoint_pvc="ckpt")
    assert "PersistentVolumeClaim 'ckpt' (k8s.checkpoint_pvc) does not exist" in message
    assert fake_cluster.kinds() == []


def test_rbac_denial_is_found_before_anything_is_created(fake_cluster, tmp_path):
    fake_cluster.denied |= {("create", "jobs"), ("get", "pods/log")}
    spec = write_spec(tmp_path / "s.yaml", k8s_spec())
    res = llmops("submit", str(spec), "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    text = " ".join(res.stderr.split())
    assert "you may not" in text and "get pods/log" in text and "create jobs.batch" in text
    assert "llmops-submitter" in text
    assert fake_cluster.kinds() == []


def test_an_object_refused_mid_submit_takes_the_earlier_ones_with_it(fake_cluster, tmp_path):
    fake_cluster.refuse["jobs"] = (403, "Forbidden", 'admission webhook "policy.example" denied the request: '
                                   "GPU jobs need a cost-center label")
    message, _ = refused(tmp_path)
    assert "denied the request: GPU jobs need a cost-center label" in message
    assert fake_cluster.kinds() == []  # ConfigMap, Service and NetworkPolicy were deleted again


def test_an_object_the_server_created_but_did_not_confirm_is_taken_back_too(fake_cluster, tmp_path):
    """The apply's answer is lost (a gateway timeout) after the server wrote the Job: the rollback finds it by
    the run's label, or a workload would train on that no llmops command could see or cancel."""
    fake_cluster.fail_after_create["jobs"] = (504, "Timeout", "the server did not answer in time")
    message, _ = refused(tmp_path)
    assert "did not answer in time" in message
    assert fake_cluster.kinds() == []


def test_more_gpus_than_any_node_offers(fake_cluster, tmp_path):
    fake_cluster.nodes = [fake_cluster.node("gpu-1", cpu="96", memory="1Ti", **{"nvidia.com/gpu": "8"})]
    spec = k8s_spec()
    spec.update(resources={"nodes": 2, "gpus_per_node": 16}, parallelism={"tensor": 2, "pipeline": 2})
    spec["train"]["global_batch_size"] = 16  # micro-batch 2 x data-parallel 8
    request = runner.plan(parse_spec(spec), root=tmp_path / "runs")
    with pytest.raises(UserError) as info:
        runner.submit(request)
    text = info.value.render()
    assert "needs 16 nvidia.com/gpu, but no node offers that much (the most any node has is 8)" in text
    assert "gpus_per_node" in text and fake_cluster.kinds() == []


def test_jobset_flavor_needs_the_jobset_api(fake_cluster, tmp_path):
    fake_cluster.installed.discard("jobsets")
    message, _ = refused(tmp_path, flavor="jobset")
    assert "JobSet API (jobset.x-k8s.io/v1alpha2) is not installed" in message and "indexed-job" in message
    assert fake_cluster.kinds() == []


def test_a_queue_that_does_not_exist(fake_cluster, tmp_path):
    message, _ = refused(tmp_path, queue="gpu-team")
    assert "Kueue LocalQueue 'gpu-team'" in message and fake_cluster.kinds() == []


def test_following_logs_streams_every_pod_until_the_run_ends(fake_cluster, tmp_path):
    run = runner.submit(plan(tmp_path))
    job_name = f"{run.id}-pretrain"
    for i in (0, 1):
        fake_cluster.add("pods", f"{job_name}-{i}-x", fake_cluster.job_pod(job_name, i))
        fake_cluster.logs[f"{job_name}-{i}-x"] = f"hello from {i}\n[step 4/4] loss=1.0\n"
    fake_cluster.objects[("jobs", "llmops", job_name)]["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}]}
    lines = list(runner.logs(run, follow=True))
    assert sorted(lines) == ["[node0]:[step 4/4] loss=1.0", "[node0]:hello from 0",
                             "[node1]:[step 4/4] loss=1.0", "[node1]:hello from 1"]
    assert run.read_status().state == "SUCCEEDED"


def test_a_failed_stage_removes_the_stages_waiting_for_it(fake_cluster, tmp_path):
    spec = k8s_spec()
    spec["prepare"] = {"input": {"paths": ["/llmops/raw/*.jsonl"]}, "output": {"dir": "/llmops/data/c"},
                       "tokenizer": {"vocab_size": 512}, "num_shards": 2}
    run = runner.submit(runner.plan(parse_spec(spec), root=tmp_path / "runs"))
    jobs = sorted(name for (r, _, name) in fake_cluster.objects if r == "jobs")
    assert len(jobs) == 6
    fake_cluster.objects[("jobs", "llmops", f"{run.id}-prepare-dedup")]["status"] = {"conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit code 2"}]}
    fake_cluster.objects[("jobs", "llmops", f"{run.id}-prepare-clean")]["status"] = {"conditions": [
        {"type": "Complete", "status": "True"}]}
    st = runner.status(run)
    assert st.state == "FAILED" and "stage 'prepare-dedup' failed" in st.message
    left = sorted(name.removeprefix(f"{run.id}-") for (r, _, name) in fake_cluster.objects if r == "jobs")
    assert left == ["prepare-clean", "prepare-dedup"]  # kept for their logs; the waiting ones are gone


SECRET = "hf_s3cr3t-value-that-must-not-leak"


def test_kubernetes_gets_a_secret_object_at_submit_only(fake_cluster, tmp_path, monkeypatch):
    """Pods read it by reference; the rendered objects, the ConfigMap and the run directory never hold it."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    spec = {**tiny_spec("k8s-secret"), "backend": "k8s", "k8s": {"image": "llmops:dev"}, "secrets": ["HF_TOKEN"]}
    request = runner.plan(parse_spec(spec), root=tmp_path / "runs")
    assert SECRET not in request.render()
    env = request.objects[-1]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": f"{request.run_id}-secrets",
                                                               "key": "HF_TOKEN"}}} in env
    run = runner.submit(request)
    stored = fake_cluster.objects[("secrets", "llmops", f"{run.id}-secrets")]
    assert base64.b64decode(stored["data"]["HF_TOKEN"]).decode() == SECRET
    assert SECRET not in "".join(p.read_text() for p in run.path.rglob("*") if p.is_file())
    assert SECRET not in fake_cluster.objects[("configmaps", "llmops", f"{run.id}-spec")]["data"]["spec.yaml"]
    runner.cancel(run, wait=0)
    assert ("secrets", "llmops", f"{run.id}-secrets") not in fake_cluster.objects


def _prepare_spec(**k8s) -> dict:
    spec = k8s_spec(**k8s)
    spec["prepare"] = {"input": {"paths": ["/llmops/raw/*.jsonl"]}, "output": {"dir": "/llmops/data/c"},
                       "tokenizer": {"vocab_size": 512}, "num_shards": 2}
    return spec


def test_stages_removed_after_they_finished_do_not_fail_the_stages_after_them(fake_cluster, tmp_path):
    """k8s.ttl_after_finished removes each finished Job once llmops has seen it end: an earlier stage's Job gone
    while a later one runs finished, and the run goes on (it read as 'deleted outside llmops', FAILED)."""
    request = runner.plan(parse_spec(_prepare_spec(ttl_after_finished=0)), root=tmp_path / "runs")
    # no Job carries the TTL: each gets it once llmops has seen it end
    assert [o["spec"].get("ttlSecondsAfterFinished") for o in request.objects if o["kind"] == "Job"] == [None] * 6
    run = runner.submit(request)
    prepare = sorted(name for (r, _, name) in fake_cluster.objects if r == "jobs" and "-prepare-" in name)
    for name in prepare:
        fake_cluster.objects[("jobs", "llmops", name)]["status"] = {"conditions": [
            {"type": "Complete", "status": "True"}]}
    assert fake_cluster.expire_finished() == []  # finished, unseen: kept
    job_name = f"{run.id}-pretrain"
    for i in (0, 1):
        fake_cluster.add("pods", f"{job_name}-{i}-x", fake_cluster.job_pod(job_name, i))
    assert runner.status(run).state == "RUNNING"
    assert sorted(fake_cluster.expire_finished()) == prepare  # seen: the TTL took their Jobs
    st = runner.status(run)
    assert st.state == "RUNNING" and "stage 'pretrain'" in st.message, st.message
    fake_cluster.objects[("jobs", "llmops", job_name)]["status"] = {"conditions": [
        {"type": "Complete", "status": "True"}]}
    assert runner.status(run).state == "SUCCEEDED"


def test_an_earlier_stage_that_failed_is_not_taken_for_finished_when_the_ttl_is_set(fake_cluster, tmp_path):
    """With k8s.ttl_after_finished, a failed earlier stage's Job was removed before llmops saw it, and the later
    stages' Jobs made it read as finished: nothing stopped them, and they waited up to 7 days."""
    run = runner.submit(runner.plan(parse_spec(_prepare_spec(ttl_after_finished=0)), root=tmp_path / "runs"))
    first = f"{run.id}-prepare-clean"
    fake_cluster.objects[("jobs", "llmops", first)]["status"] = {"conditions": [
        {"type": "Failed", "status": "True", "reason": "FailedIndexes", "message": "Job has failed indexes"}]}
    assert fake_cluster.expire_finished() == []  # the TTL controller: nothing of it may go unseen
    st = runner.status(run)
    assert st.state == "FAILED" and "stage 'prepare-clean' failed (FailedIndexes)" in st.message, st.message
    left = sorted(name.removeprefix(f"{run.id}-") for (r, _, name) in fake_cluster.objects if r == "jobs")
    assert left == ["prepare-clean"]  # the stages waiting for it are stopped
    assert fake_cluster.expire_finished() == [first]  # seen and recorded: now it may go


def test_a_run_stays_on_the_cluster_it_was_submitted_to_when_the_current_context_changes(fake_cluster, tmp_path):
    """Submitted without --context, the run keeps the context that was current then: `kubectl config
    use-context dev` afterwards must not make status look for it on dev (no Jobs there: FAILED)."""
    import os

    import yaml

    run = runner.submit(plan(tmp_path))
    assert run.read_spec().k8s.context == "fake"
    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # a port where nothing answers
    config["clusters"].append({"name": "dev", "cluster": {"server": f"http://127.0.0.1:{dead.getsockname()[1]}"}})
    config["contexts"].append({"name": "dev", "context": {"cluster": "dev", "user": "me", "namespace": "llmops"}})
    config["current-context"] = "dev"
    Path(os.environ["KUBECONFIG"]).write_text(yaml.safe_dump(config))
    try:
        st = runner.status(run)
    finally:
        dead.close()
    assert st.state == "PENDING", st.message


@pytest.mark.parametrize("flavor", ["indexed-job", "jobset"])
def test_the_ttl_takes_a_runs_last_workload_only_after_llmops_has_seen_its_end(fake_cluster, tmp_path, flavor):
    """k8s.ttl_after_finished on the workload that holds the run's outcome (the last stage's Job, the JobSet):
    a run not looked at within the TTL after its end read as gone, FAILED. It is set once the end is recorded,
    by its own field manager, and leaves the rest of the object as llmops applied it."""
    spec = k8s_spec(ttl_after_finished=600, flavor=flavor)
    request = runner.plan(parse_spec(spec), root=tmp_path / "runs")
    workloads = [o for o in request.objects if o["kind"] in ("Job", "JobSet")]
    assert [o["spec"].get("ttlSecondsAfterFinished") for o in workloads] == [None]
    run = runner.submit(request)
    resource, name = ("jobsets", run.id) if flavor == "jobset" else ("jobs", f"{run.id}-pretrain")
    workload = fake_cluster.objects[(resource, "llmops", name)]
    workload["status"] = {"conditions": [{"type": "Completed" if flavor == "jobset" else "Complete",
                                          "status": "True"}]}
    assert fake_cluster.expire_finished() == []  # finished, unseen: the cluster keeps it
    st = runner.status(run)
    assert (st.state, st.message) == ("SUCCEEDED", "finished"), st.message
    kept = fake_cluster.objects[(resource, "llmops", name)]
    assert kept["spec"]["ttlSecondsAfterFinished"] == 600 and kept["status"] == workload["status"]
    assert kept["spec"]["replicatedJobs" if flavor == "jobset" else "template"] == workload["spec"][
        "replicatedJobs" if flavor == "jobset" else "template"]
    assert (resource, "llmops-ttl") in fake_cluster.applies
    assert fake_cluster.expire_finished() == [name]
    assert runner.status(run).state == "SUCCEEDED"  # recorded: the workload's removal changes nothing
