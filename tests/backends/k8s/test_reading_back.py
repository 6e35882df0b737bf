"""Reading a run back from what the cluster says: status messages for pods that will not run, counters that are
not numbers, and followed logs whose stream breaks."""

from __future__ import annotations

import threading

from llmops import runner
from llmops.spec.load import parse_spec
from llmops_testing import tiny_spec


def _submitted(fake_cluster, tmp_path):
    spec = tiny_spec("tiny-k8s", tp=2, pp=2, procs=2, restarts={"max_restarts": 2})
    spec.update(backend="k8s", resources={"nodes": 2, "cpu": True, "processes_per_node": 2},
                k8s={"image": "llmops:dev"})
    run = runner.submit(runner.plan(parse_spec(spec), root=tmp_path / "runs"))
    return run, f"{run.id}-pretrain"


def test_status_says_why_a_pod_that_is_not_pending_keeps_the_stage_waiting(fake_cluster, tmp_path):
    """A pod stuck terminating on a lost node, or evicted with no replacement yet, gave `1/2 pod(s) running; `."""
    run, job = _submitted(fake_cluster, tmp_path)
    fake_cluster.add("pods", f"{job}-0-a", fake_cluster.job_pod(job, 0))
    lost = fake_cluster.job_pod(job, 1)
    lost["metadata"]["deletionTimestamp"] = "2025-01-01T00:10:00Z"
    fake_cluster.add("pods", f"{job}-1-a", lost)
    st = runner.status(run)
    assert st.message == ("stage 'pretrain': 1/2 pod(s) running; node 1: terminating since "
                          "2025-01-01T00:10:00+00:00; its replacement waits"), st.message
    evicted = fake_cluster.job_pod(job, 1)
    evicted["status"] = {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}
    fake_cluster.add("pods", f"{job}-1-a", evicted)
    st = runner.status(run)
    assert st.message == ("stage 'pretrain': 1/2 pod(s) running; node 1: its pod failed (Evicted: The node was low "
                          "on resource: memory.), no replacement yet"), st.message
    fake_cluster.add("pods", f"{job}-1-b", fake_cluster.job_pod(job, 1, scheduled=False))  # the replacement
    assert "Insufficient cpu" in runner.status(run).message and "Evicted" not in runner.status(run).message


def test_counters_on_a_pod_that_are_not_numbers_do_not_crash_status(fake_cluster, tmp_path):
    run, job = _submitted(fake_cluster, tmp_path)
    for i in (0, 1):
        pod = fake_cluster.job_pod(job, i)
        pod["metadata"]["annotations"].update({"batch.kubernetes.io/job-index-failure-count": "one",
                                               "batch.kubernetes.io/job-completion-index": "x" * 400})
        fake_cluster.add("pods", f"{job}-{i}-a", pod)
    st = runner.status(run)
    assert (st.state, st.restarts) == ("RUNNING", 0)
    fake_cluster.logs[f"{job}-0-a"] = "hello\n"
    assert list(runner.logs(run, follow=False)) == ["[node0]:hello"]


def test_a_followed_log_cut_mid_way_is_followed_again_without_loss_or_repeats(fake_cluster, tmp_path):
    """A proxy cuts the stream mid-line: the rest of the log was lost for good, with a thread's traceback."""
    run, job = _submitted(fake_cluster, tmp_path)
    fake_cluster.add("pods", f"{job}-0-a", fake_cluster.job_pod(job, 0))
    lines = [f"[step {i}/4] loss={7 - i}.0" for i in range(1, 5)]
    fake_cluster.logs[f"{job}-0-a"] = "".join(f"{line}\n" for line in lines)
    line_bytes = len("2025-01-01T00:00:00.000000000Z ") + len(lines[0]) + 1
    fake_cluster.cut_follow[f"{job}-0-a"] = [line_bytes + 12, 2 * line_bytes + 3]  # twice, each mid-line
    errors = []
    hook, threading.excepthook = threading.excepthook, errors.append
    try:
        fake_cluster.objects[("jobs", "llmops", job)]["status"] = {"conditions": [
            {"type": "Complete", "status": "True"}]}
        got = list(runner.logs(run, follow=True))
    finally:
        threading.excepthook = hook
    assert got == [f"[node0]:{line}" for line in lines] and errors == []
    assert fake_cluster.cut_follow[f"{job}-0-a"] == []  # both streams were cut
