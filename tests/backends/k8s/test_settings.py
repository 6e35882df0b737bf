"""The k8s sections of specs and profiles, and the pod entrypoint's bookkeeping, without a cluster."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmops.backends.k8s import pod as k8s_pod
from llmops.backends.k8s.backend import K8sBackend
from llmops.backends.k8s.spec import parse_profile_section
from llmops.errors import SpecError
from llmops.spec.load import parse_spec
from llmops_testing import REPO, llmops, tiny_spec, write_spec


def test_control_plane_loads_the_kubernetes_client_only_when_the_backend_is_used():
    code = "import sys, llmops.cli, llmops.spec.load, llmops.runner; print('kubernetes' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.stdout.strip() == "False", res.stderr


def test_profile_section_names_unknown_keys_and_the_allowed_ones():
    with pytest.raises(SpecError) as info:
        parse_profile_section({"network": "efa", "efa_per_node": 4, "gpu_resources": "x"}, "profile p")
    text = info.value.render()
    assert "k8s.gpu_resources" in text and "gpu_resource" in text


def test_a_fabric_without_its_devices_is_refused():
    with pytest.raises(SpecError) as info:
        parse_profile_section({"network": "efa"}, "profile p")
    assert "efa_per_node" in info.value.render()
    with pytest.raises(SpecError) as info:
        parse_profile_section({"network": "rdma"}, "profile p")
    assert "rdma_resource" in info.value.render()


def test_command_line_overrides_are_validated_like_the_file():
    spec = parse_spec({**tiny_spec("x"), "backend": "k8s", "k8s": {"image": "i:1"}})
    overridden = K8sBackend().with_options(spec, {"namespace": "team-a"})
    assert overridden.k8s.namespace == "team-a" and overridden.k8s.image == "i:1"
    with pytest.raises(SpecError) as info:
        K8sBackend().with_options(spec, {"namespace": "Team_A"})
    assert "k8s.namespace" in info.value.render() and "command line" in info.value.render()


def test_the_kubernetes_options_are_offered_and_refused_for_another_backend(tmp_path):
    res = llmops("submit", "--help")
    assert res.returncode == 0 and "k8s backend" in res.stdout and "--namespace" in res.stdout
    spec = write_spec(tmp_path / "s.yaml", tiny_spec("x"))
    res = llmops("submit", str(spec), "--namespace", "team-a", "--dry-run", "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 2 and "--namespace" in res.stderr and "k8s backend" in res.stderr
    assert not (tmp_path / "runs").exists()


def test_schema_documents_the_k8s_section(tmp_path):
    res = llmops("schema")
    assert res.returncode == 0 and "Kueue LocalQueue in the namespace" in res.stdout


def test_unknown_k8s_key_is_named_with_a_suggestion(tmp_path):
    spec = {**tiny_spec("x"), "backend": "k8s", "k8s": {"image": "i:1", "namepsace": "a"}}
    res = llmops("validate", str(write_spec(tmp_path / "s.yaml", spec)))
    assert res.returncode == 2 and "k8s.namepsace" in res.stderr and "namespace" in res.stderr


def test_setup_writes_the_spec_once_and_refuses_another_runs(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "r1"
    monkeypatch.setenv("LLMOPS_RUN_DIR", str(run_dir))
    monkeypatch.setenv("LLMOPS_SPEC", "name: a\n")
    assert k8s_pod.main(["setup"]) == 0 and (run_dir / "spec.yaml").read_text() == "name: a\n"
    assert k8s_pod.main(["setup"]) == 0  # a restarted pod writes nothing new
    monkeypatch.setenv("LLMOPS_SPEC", "name: b\n")
    assert k8s_pod.main(["setup"]) == 2 and (run_dir / "spec.yaml").read_text() == "name: a\n"


def test_waiting_for_a_stage_that_never_finishes_gives_up(tmp_path):
    assert k8s_pod.wait_for_stage(tmp_path, "prepare-clean", 2, timeout=0.2, poll=0.05) == 2
    k8s_pod.done_marker(tmp_path, "prepare-clean", 0).parent.mkdir(parents=True)
    for i in (0, 1):
        k8s_pod.done_marker(tmp_path, "prepare-clean", i).write_text("")
    assert k8s_pod.wait_for_stage(tmp_path, "prepare-clean", 2, timeout=0.2, poll=0.05) == 0


@pytest.mark.parametrize("code, failures, failed", [
    (1, "2", True),    # the last retry crashed: the Job fails, the next stage must not wait
    (1, "0", False),   # retries left: the Job controller starts another pod
    (75, "2", False),  # checkpointed after SIGTERM: ignored, never the end of the stage
    (2, "0", True),    # bad input: FailJob at once
])
def test_a_stage_is_marked_failed_only_when_it_will_not_be_retried(tmp_path, monkeypatch, code, failures, failed):
    monkeypatch.setenv("LLMOPS_INDEX_FAILURES", failures)
    monkeypatch.setenv("LLMOPS_MAX_RESTARTS", "2")
    k8s_pod._leave_marker(tmp_path, "pretrain", 1, code, restart=int(failures))
    assert k8s_pod.failed_marker(tmp_path, "pretrain").exists() == failed
