"""End to end on a real cluster (kind with cluster/k8s/overlays/kind, as .github/workflows/kind-e2e.yml
sets up): submit the tiny CPU run, delete a pod mid-run, and see the run resume and finish.

Needs a reachable cluster (the current kubeconfig context, or LLMOPS_K8S_CONTEXT) with the kind
overlay applied, and LLMOPS_K8S_IMAGE naming an image built from infra/docker/Dockerfile.cpu that
the cluster can run (`kind load docker-image`). Skips, saying which is missing, otherwise.
"""

from __future__ import annotations

import os
import time

import pytest
import yaml

from llmops import runner
from llmops.backends.k8s.api import Cluster
from llmops.backends.k8s.objects import RunNames
from llmops.errors import UserError
from llmops.runs.logs import parse_step_line
from llmops.runs.rundir import TERMINAL
from llmops.spec.load import parse_spec
from llmops_testing import REPO

pytestmark = pytest.mark.k8s
NAMESPACE = "llmops"


def _unavailable(reason: str) -> None:
    """Skip here; fail where CI promised a cluster (LLMOPS_K8S_REQUIRED=1), so a broken setup is not green."""
    if os.environ.get("LLMOPS_K8S_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    context = os.environ.get("LLMOPS_K8S_CONTEXT")
    try:
        c = Cluster.connect(context=context, namespace=NAMESPACE)
        c.call("reading the namespace", c.core.read_namespace, NAMESPACE)
    except UserError as exc:
        _unavailable(f"no reachable cluster with the llmops namespace: {exc.message}")
    if not os.environ.get("LLMOPS_K8S_IMAGE"):
        _unavailable("LLMOPS_K8S_IMAGE is not set (an image from infra/docker/Dockerfile.cpu the cluster can run)")
    return c


def _spec(tmp_path) -> dict:
    spec = yaml.safe_load((REPO / "examples" / "tiny-cpu.yaml").read_text())
    spec.update(name="e2e-tiny", backend="k8s", profile="kind",
                resources={"nodes": 2, "cpu": True, "processes_per_node": 2},
                restarts={"max_restarts": 2},
                k8s={"image": os.environ["LLMOPS_K8S_IMAGE"], "context": os.environ.get("LLMOPS_K8S_CONTEXT"),
                     "namespace": NAMESPACE, "cpu": "1", "memory": "3Gi", "shm_size": "512Mi"})
    spec["train"].update(steps=60, tensorboard=False)
    spec["checkpoint"] = {"interval": 10, "keep_last": 2}
    return spec


def _latest_step(run) -> int:
    steps = [p.step for line in runner.logs(run, follow=False) if (p := parse_step_line(line))]
    return max(steps, default=0)


def _wait(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(3)


def test_tiny_run_trains_survives_a_deleted_pod_and_resumes(cluster, tmp_path):
    run = runner.submit(runner.plan(parse_spec(_spec(tmp_path)), root=tmp_path / "runs"))
    names = RunNames.of(run.id, NAMESPACE)
    try:
        _wait(lambda: _latest_step(run) >= 12, timeout=900, what="training to pass step 12")
        victim = next(p for p in cluster.pods(names.selector)
                      if p.metadata.annotations.get("batch.kubernetes.io/job-completion-index") == "1"
                      and p.status.phase == "Running")
        cluster.delete("Pod", victim.metadata.name)  # SIGTERM: the gang checkpoints and exits 75
        _wait(lambda: runner.status(run).state in TERMINAL, timeout=900, what="the run to finish")
        final = runner.status(run)
        assert final.state == "SUCCEEDED", final.message
        assert final.restarts >= 1
        log = list(runner.logs(run, follow=False))
        assert any("resumed from" in line for line in log), "\n".join(log[-50:])
        assert _latest_step(run) == 60
    finally:
        cluster.delete_run(names.selector, jobset=False, grace=0)
