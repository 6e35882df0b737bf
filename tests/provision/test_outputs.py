"""What provision hands back must be what the rest of llmops reads: profiles, kubeconfigs, volumes."""

from __future__ import annotations

import pytest
import yaml

from llmops.profiles import load_profile
from llmops.provision.outputs import kubeconfig, profile, shared_volume
from llmops_testing.provision import AWS_FACTS, OCI_FACTS


@pytest.mark.parametrize("facts", [AWS_FACTS, OCI_FACTS], ids=["aws", "oci"])
def test_profile_loads_and_its_k8s_section_passes_the_backend(facts, tmp_path, monkeypatch):
    k8s_spec = pytest.importorskip("llmops.backends.k8s.spec")
    (tmp_path / "llm.yaml").write_text(yaml.safe_dump(profile(facts)))
    monkeypatch.setenv("LLMOPS_PROFILE_PATH", str(tmp_path))
    loaded = load_profile("llm")
    section = k8s_spec.parse_profile_section(loaded.k8s, "llm.yaml")
    assert section.node_selector["llmops.dev/node-role"] == "gpu"
    assert section.tolerations[0].key == "nvidia.com/gpu"
    assert section.cpu_per_gpu * 8 <= facts["vcpus_per_node"] and section.memory_gib_per_gpu * 8 < 2048


def test_aws_profile_requests_every_efa_interface_and_sets_libfabric():
    p = profile(AWS_FACTS)
    assert p["k8s"]["network"] == "efa" and p["k8s"]["efa_per_node"] == 32
    assert p["env"]["FI_PROVIDER"] == "efa" and p["env"]["LLMOPS_BUCKET"] == "s3://llm-123456789012-us-east-1"
    assert profile(AWS_FACTS | {"efa_interfaces_per_node": 0})["k8s"]["network"] == "none"


def test_oci_profile_uses_rdma_host_network_and_the_shape_hcas():
    p = profile(OCI_FACTS)
    assert {k: p["k8s"][k] for k in ("network", "rdma_resource", "host_network")} == {
        "network": "rdma", "rdma_resource": "rdma/rdma_shared_device_a", "host_network": True}
    assert p["env"]["NCCL_IB_HCA"].startswith("=mlx5_0,mlx5_1,mlx5_3") and "mlx5_2," not in p["env"]["NCCL_IB_HCA"]
    assert "NCCL_IB_HCA" not in profile(OCI_FACTS | {"gpu_shape": "BM.GPU4.8"})["env"]


@pytest.mark.parametrize("facts, command", [(AWS_FACTS, "aws"), (OCI_FACTS, "oci")], ids=["aws", "oci"])
def test_kubeconfig_authenticates_through_the_cloud_cli(facts, command):
    cfg = kubeconfig(facts)
    user = cfg["users"][0]["user"]["exec"]
    assert user["command"] == command and ({"get-token", "generate-token"} & set(user["args"]))
    assert cfg["contexts"][0]["context"]["namespace"] == "llmops" and cfg["current-context"] == "llm"
    assert set(cfg["users"][0]["user"]) == {"exec"}  # no stored token or key
    assert "env" not in user
    # Created as a named CLI profile: kubectl in a shell without the variable acts as that identity still
    named = kubeconfig(facts, cli_profile="sso-admin")["users"][0]["user"]["exec"]["env"]
    assert named == [{"name": "AWS_PROFILE" if command == "aws" else "OCI_CLI_PROFILE", "value": "sso-admin"}]


def test_shared_volume_binds_the_terraform_file_system_statically():
    ns, pv, pvc = shared_volume(AWS_FACTS)
    assert ns["metadata"]["name"] == "llmops"
    assert pv["spec"]["csi"]["volumeHandle"] == "fs-0123456789abcdef0"
    assert pv["spec"]["csi"]["volumeAttributes"] == {"dnsname": "fs-0123.fsx.us-east-1.amazonaws.com",
                                                     "mountname": "abcdef"}
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain" and pv["spec"]["capacity"]["storage"] == "4800Gi"
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"] and pvc["spec"]["storageClassName"] == ""
    assert pv["spec"]["claimRef"] == {"namespace": "llmops", "name": "llmops-shared"}
    _, oci_pv, _ = shared_volume(OCI_FACTS)
    assert oci_pv["spec"]["csi"] == {"driver": "fss.csi.oraclecloud.com",
                                     "volumeHandle": "ocid1.filesystem.oc1.iad.aaa:10.0.8.10:/llm"}
