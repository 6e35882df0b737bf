"""What llmops may delete or take over on a cluster: only what the run created (its uid label, its record in the
run folder), and what an interrupted submit, a cancel that fails half-way, or a finished run leaves behind."""

from __future__ import annotations

import pytest

from llmops import runner
from llmops.backends.k8s.api import Cluster
from llmops.errors import UserError
from llmops.runs.rundir import RunDir
from llmops.spec.load import parse_spec
from llmops_testing import k8s_spec

STAMP = "20250101-000000"


def plan(tmp_path, **k8s):
    return runner.plan(parse_spec(k8s_spec(**k8s)), root=tmp_path / "runs")


def _planned(tmp_path, folder: str, run_id: str, spec: dict | None = None):
    return runner.plan(parse_spec(spec or k8s_spec()), path=tmp_path / folder / run_id)


def _fail(fake_cluster, job: str) -> None:
    fake_cluster.objects[("jobs", "llmops", job)]["status"] = {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "too many failures"}]}


@pytest.mark.parametrize("first, second", [
    (f"shared-exp-{STAMP}", f"shared-exp-{STAMP}"),  # one spec, one second, two runs folders
    (f"r7b-sft-{STAMP}", f"7b-sft-{STAMP}"),  # a digit-first id is given an `r`, and meets this one
])
def test_a_fresh_submit_never_replaces_another_runs_objects(fake_cluster, tmp_path, first, second):
    alice = runner.submit(_planned(tmp_path, "alice", first))
    job = next(name for (r, _, name) in fake_cluster.objects if r == "jobs")
    for i in (0, 1):
        fake_cluster.add("pods", f"{job}-{i}-x", fake_cluster.job_pod(job, i))
    uid = fake_cluster.objects[("jobs", "llmops", job)]["metadata"]["uid"]
    request = _planned(tmp_path, "bob", second)
    with pytest.raises(UserError) as info:
        runner.submit(request)
    text = info.value.render()
    assert f"Job {job}" in text and "not run" in text and "new run id" in text and "rename the spec" in text
    assert not request.run_path.exists()
    assert fake_cluster.objects[("jobs", "llmops", job)]["metadata"]["uid"] == uid  # alice's Job, untouched
    assert len([k for k in fake_cluster.objects if k[0] == "pods"]) == 2
    assert runner.status(alice).state == "RUNNING"


def test_an_object_of_the_same_name_that_llmops_did_not_create_is_refused_and_kept(fake_cluster, tmp_path):
    """Forced server-side apply took it over, and a refused submit's rollback then deleted it by name."""
    request = plan(tmp_path)
    name = f"{request.run_id}-spec"
    fake_cluster.add("configmaps", name, {"metadata": {"labels": {"team": "other"}}, "data": {"theirs": "x"}})
    fake_cluster.managers[("configmaps", "llmops", name)] = "kubectl-create"
    with pytest.raises(UserError) as info:
        runner.submit(request)
    assert f"ConfigMap {name} exist(s) already" in info.value.render() and info.value.exit_code == 2
    theirs = fake_cluster.objects[("configmaps", "llmops", name)]
    assert theirs["data"] == {"theirs": "x"} and fake_cluster.kinds() == ["ConfigMap"]
    assert not request.run_path.exists()


def test_a_secret_of_the_same_name_is_refused_and_kept(fake_cluster, tmp_path, monkeypatch):
    """Submitters may not read secrets: the create's refusal is how it is found."""
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    request = runner.plan(parse_spec({**k8s_spec(), "secrets": ["HF_TOKEN"]}), root=tmp_path / "runs")
    fake_cluster.add("secrets", f"{request.run_id}-secrets", {"data": {"theirs": "eA=="}})
    with pytest.raises(UserError) as info:
        runner.submit(request)
    assert "this submit did not create it" in info.value.render()
    assert fake_cluster.objects[("secrets", "llmops", f"{request.run_id}-secrets")]["data"] == {"theirs": "eA=="}
    assert fake_cluster.kinds() == ["Secret"]


def _interrupt_at_the_job(monkeypatch, *, written: list | None = None):
    """Ctrl-C while the Job's apply waits for its answer (a slow admission webhook); the server wrote it, or (with
    `written`) writes it later, after the submit has taken back what it saw."""
    apply = Cluster.apply

    def interrupted(self, obj, **kw):
        if obj["kind"] == "Job" and written is not None:
            written.append(obj)
            raise KeyboardInterrupt
        apply(self, obj, **kw)
        if obj["kind"] == "Job":
            raise KeyboardInterrupt

    monkeypatch.setattr(Cluster, "apply", interrupted)
    return apply


def test_an_interrupted_submit_takes_back_what_it_created(fake_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    request = runner.plan(parse_spec({**k8s_spec(), "secrets": ["HF_TOKEN"]}), root=tmp_path / "runs")
    apply = _interrupt_at_the_job(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        runner.submit(request)
    assert fake_cluster.kinds() == []
    run = RunDir(request.run_path)
    st = runner.status(run)
    assert st.state == "CANCELLED" and "interrupted" in st.message and f"llmops resume {run.id}" in st.message
    monkeypatch.setattr(Cluster, "apply", apply)
    runner.resume(run)
    assert fake_cluster.kinds() == ["ConfigMap", "Job", "NetworkPolicy", "Secret", "Service"]
    assert runner.status(run).state == "PENDING"


def test_an_apply_that_lands_after_an_interrupted_submit_is_not_hidden(fake_cluster, tmp_path, monkeypatch):
    """The API server may finish a write whose client has gone: a run that reads as cancelled must not train."""
    request = plan(tmp_path)
    late: list[dict] = []
    apply = _interrupt_at_the_job(monkeypatch, written=late)
    with pytest.raises(KeyboardInterrupt):
        runner.submit(request)
    run = RunDir(request.run_path)
    assert runner.status(run).state == "CANCELLED" and fake_cluster.kinds() == []
    monkeypatch.setattr(Cluster, "apply", apply)
    Cluster.connect(context="fake", namespace="llmops").apply(late[0])  # it lands now
    st = runner.status(run)
    assert st.state == "PENDING" and "did not finish" in st.message and f"llmops cancel {run.id}" in st.message
    assert runner.cancel(run, wait=5).state == "CANCELLED" and fake_cluster.kinds() == []
    assert runner.status(run).state == "CANCELLED"


def test_an_interrupted_submit_that_could_not_take_back_is_shown_and_cancelled_truthfully(fake_cluster, tmp_path,
                                                                                          monkeypatch):
    """The Job trained while status said PENDING forever, resume refused and cancel waited 122 s for nothing."""
    request = plan(tmp_path)
    apply = _interrupt_at_the_job(monkeypatch)
    fake_cluster.fail_delete["jobs"] = (503, "ServiceUnavailable", "the server is shutting down")
    with pytest.raises(KeyboardInterrupt):
        runner.submit(request)
    monkeypatch.setattr(Cluster, "apply", apply)
    fake_cluster.fail_delete.clear()
    run = RunDir(request.run_path)
    (run.path / "status.json").unlink()  # lost as well: still the k8s backend's run
    st = runner.status(run)
    assert (st.state, st.backend, st.job_id) == ("PENDING", "k8s", f"llmops/{run.id}")
    assert "its submit did not finish" in st.message and f"llmops cancel {run.id}" in st.message
    final = runner.cancel(run, wait=5)
    assert final.state == "CANCELLED" and fake_cluster.kinds() == []
    runner.resume(run)
    assert runner.status(run).state == "PENDING" and "Job" in fake_cluster.kinds()


def _running(fake_cluster, tmp_path):
    run = runner.submit(plan(tmp_path))
    job = f"{run.id}-pretrain"
    for i in (0, 1):
        fake_cluster.add("pods", f"{job}-{i}-x", fake_cluster.job_pod(job, i))
    assert runner.status(run).state == "RUNNING"
    return run, job


def test_a_cancel_that_did_not_reach_the_workload_leaves_status_truthful(fake_cluster, tmp_path):
    run, job = _running(fake_cluster, tmp_path)
    fake_cluster.fail_delete["jobs"] = (500, "InternalError", "etcdserver: leader changed")
    with pytest.raises(UserError) as info:
        runner.cancel(run, wait=0)
    assert "did not reach all of its objects" in info.value.render()
    assert f"`llmops cancel {run.id}` again" in info.value.render()
    fake_cluster.fail_delete.clear()
    st = runner.status(run)
    assert st.state == "RUNNING" and f"llmops cancel {run.id}` again" in st.message
    fake_cluster.objects[("jobs", "llmops", job)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert runner.status(run).state == "SUCCEEDED"  # it ended before a cancel reached it: that is its outcome


def test_a_cancel_that_failed_half_way_is_finished_by_cancelling_again(fake_cluster, tmp_path):
    run, _ = _running(fake_cluster, tmp_path)
    fake_cluster.fail_delete["networkpolicies"] = (500, "InternalError", "etcdserver: leader changed")
    with pytest.raises(UserError):
        runner.cancel(run, wait=0)
    fake_cluster.fail_delete.clear()
    st = runner.status(run)  # the Job and its pods are gone: the run is cancelled, and what is left is named
    assert st.state == "CANCELLED" and f"NetworkPolicy {run.id}-intra-run" in st.message, st.message
    assert f"llmops cancel {run.id}" in st.message
    final = runner.cancel(run, wait=0)
    assert final.state == "CANCELLED" and fake_cluster.kinds() == []
    runner.resume(run)
    assert runner.status(run).state == "PENDING"


def test_a_finished_run_removes_what_it_no_longer_needs_and_cancel_removes_the_rest(fake_cluster, tmp_path,
                                                                                   monkeypatch):
    """The Secret (the tokens), ConfigMap, Service and NetworkPolicy stayed for good; the Job stays for its
    logs until the TTL, and when the TTL cannot be set, `llmops cancel` (as advised) removes it."""
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    spec = {**k8s_spec(ttl_after_finished=600), "secrets": ["HF_TOKEN"]}
    run = runner.submit(runner.plan(parse_spec(spec), root=tmp_path / "runs"))
    job = f"{run.id}-pretrain"
    fake_cluster.add("pods", f"{job}-0-x", fake_cluster.job_pod(job, 0))
    fake_cluster.logs[f"{job}-0-x"] = "[step 4/4] loss=1.0\n"
    fake_cluster.objects[("jobs", "llmops", job)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    fake_cluster.refuse["jobs"] = (500, "InternalError", "etcdserver: request timed out")
    st = runner.status(run)
    assert st.state == "SUCCEEDED" and f"`llmops cancel {run.id}` deletes it" in st.message
    assert fake_cluster.kinds() == ["Job", "Pod"]
    assert list(runner.logs(run, follow=False)) == ["[node0]:[step 4/4] loss=1.0"]
    fake_cluster.refuse.clear()
    final = runner.cancel(run, wait=0)
    assert final.state == "SUCCEEDED" and fake_cluster.kinds() == []


def test_resume_builds_from_the_profile_as_it_was_at_submit(fake_cluster, tmp_path, monkeypatch):
    """Resume read the profile again, relative to the current folder: refused elsewhere, changed if edited."""
    project = tmp_path / "proj"
    (project / "site").mkdir(parents=True)
    (project / "site" / "ours.yaml").write_text("k8s:\n  network: none\n")
    monkeypatch.chdir(project)
    spec = {**k8s_spec(), "profile": "site/ours.yaml"}
    run = runner.submit(runner.plan(parse_spec(spec), root=tmp_path / "runs"))
    _fail(fake_cluster, f"{run.id}-pretrain")
    assert runner.status(run).state == "FAILED"
    (project / "site" / "ours.yaml").write_text("k8s:\n  network: none\nenv:\n  NCCL_DEBUG: TRACE\n")
    monkeypatch.chdir(tmp_path)
    runner.resume(run)
    env = fake_cluster.objects[("jobs", "llmops", f"{run.id}-pretrain")]["spec"]["template"]["spec"][
        "containers"][0]["env"]
    assert not any(e["name"] == "NCCL_DEBUG" for e in env)
