"""cluster/k8s as `kubectl apply -k` sees it: every overlay builds, passes the official
schemas strictly, and keeps the security properties the backend relies on."""

from __future__ import annotations

import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from llmops.backends.k8s.spec import K8sSpec
from llmops_testing import REPO

CLUSTER = REPO / "cluster" / "k8s"
OVERLAYS = sorted(p.name for p in (CLUSTER / "overlays").iterdir() if (p / "kustomization.yaml").exists())
VERSIONS = ["1.30", kubernetes_validate.latest_version()]


def kustomize(path) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    res = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def test_the_overlays_are_the_ones_the_docs_name():
    assert OVERLAYS == ["aws", "kind", "oci"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_output_passes_the_official_schema_strictly(overlay, version):
    docs = kustomize(CLUSTER / "overlays" / overlay)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_provides_what_the_backend_defaults_name(overlay):
    kinds = by_kind(kustomize(CLUSTER / "overlays" / overlay))
    defaults = K8sSpec()
    assert defaults.namespace in [n["metadata"]["name"] for n in kinds["Namespace"]]
    claim = kinds["PersistentVolumeClaim"][0]
    assert claim["metadata"]["name"] == defaults.checkpoint_pvc and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"].get("storageClassName") is not None  # every overlay picks RWX storage explicitly
    sa = kinds["ServiceAccount"][0]
    assert sa["metadata"]["name"] == defaults.service_account and sa["automountServiceAccountToken"] is False
    assert [p["metadata"]["name"] for p in kinds["PriorityClass"]] == ["llmops-training"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_training_account_has_no_api_rights_and_runs_are_isolated(overlay):
    kinds = by_kind(kustomize(CLUSTER / "overlays" / overlay))
    subjects = [s for b in kinds.get("RoleBinding", []) + kinds.get("ClusterRoleBinding", []) for s in b["subjects"]]
    assert not [s for s in subjects if s["kind"] == "ServiceAccount"]
    deny = next(p for p in kinds["NetworkPolicy"] if p["metadata"]["name"] == "llmops-runs-default-deny")
    assert deny["spec"]["ingress"] == [] and deny["spec"]["policyTypes"] == ["Ingress"]
    assert deny["spec"]["podSelector"]["matchExpressions"][0]["key"] == "llmops.dev/run"
    role = kinds["Role"][0]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])


def test_pod_security_is_restricted_except_in_the_namespace_rdma_needs():
    """The shared namespace, where every submitter may create pods, is `restricted` everywhere; OCI's RDMA pods
    (host networking, IPC_LOCK) get a namespace of their own, for a submitter group of its own."""
    levels = {(o, ns["metadata"]["name"]): ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
              for o in OVERLAYS for ns in by_kind(kustomize(CLUSTER / "overlays" / o))["Namespace"]}
    assert levels == {("aws", "llmops"): "restricted", ("kind", "llmops"): "restricted",
                      ("oci", "llmops"): "restricted", ("oci", "llmops-rdma"): "privileged"}
    bindings = by_kind(kustomize(CLUSTER / "overlays" / "oci"))["RoleBinding"]
    groups = {b["metadata"]["namespace"]: [s["name"] for s in b["subjects"]] for b in bindings}
    assert groups == {"llmops": ["llmops-submitters"], "llmops-rdma": ["llmops-rdma-submitters"]}
    profile = yaml.safe_load((CLUSTER / "profiles" / "oci-bm-gpu-h100.yaml").read_text())
    assert profile["k8s"]["namespace"] == "llmops-rdma"


def test_kind_volume_binds_to_the_shared_claim():
    kinds = by_kind(kustomize(CLUSTER / "overlays" / "kind"))
    pv, claim = kinds["PersistentVolume"][0], kinds["PersistentVolumeClaim"][0]
    assert claim["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pv["spec"]["claimRef"] == {"namespace": "llmops", "name": claim["metadata"]["name"]}
    mounts = yaml.safe_load((CLUSTER / "overlays" / "kind" / "kind-config.yaml").read_text())
    assert pv["spec"]["hostPath"]["path"] in {m["containerPath"] for m in mounts["nodes"][0]["extraMounts"]}


def test_kueue_queue_is_the_one_specs_name_and_covers_gpus():
    # Kueue objects are CRDs, outside the core schemas: check how they fit together instead.
    kinds = by_kind(kustomize(CLUSTER / "kueue"))
    local, cluster = kinds["LocalQueue"][0], kinds["ClusterQueue"][0]
    assert local["metadata"]["namespace"] == K8sSpec().namespace
    assert local["spec"]["clusterQueue"] == cluster["metadata"]["name"]
    group = cluster["spec"]["resourceGroups"][0]
    assert {"cpu", "memory", "nvidia.com/gpu"} <= set(group["coveredResources"])
    assert group["flavors"][0]["name"] == kinds["ResourceFlavor"][0]["metadata"]["name"]
