"""Structure of every Terraform module, parsed with python-hcl2 (no provider needed).

The OCI provider is not available offline, so the OCI code is held to its
security defaults here, by reading what it declares; the same shape rules
(five files, typed, described and validated variables, module calls that
match the modules' variables) apply to AWS too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from llmops_testing.terraform import TERRAFORM_DIR

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed (pip install -e '.[test]')")

MODULES = sorted(p for p in (TERRAFORM_DIR / "modules").iterdir() if p.is_dir())
ENVIRONMENTS = sorted(p for p in (TERRAFORM_DIR / "environments").iterdir() if p.is_dir())
FIVE_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md")


def _clean(value: Any) -> Any:
    """python-hcl2 keeps HCL quotes and bookkeeping keys; drop both."""
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse(folder: Path) -> dict[str, list]:
    """All blocks of a folder's .tf files, by block type."""
    merged: dict[str, list] = {}
    for f in sorted(folder.glob("*.tf")):
        with f.open() as fh:
            for kind, blocks in _clean(hcl2.load(fh)).items():
                merged.setdefault(kind, []).extend(blocks)
    return merged


def resources(folder: Path, rtype: str) -> dict[str, dict]:
    return {name: body for block in parse(folder).get("resource", []) for t, named in block.items()
            if t == rtype for name, body in named.items()}


def variables(folder: Path) -> dict[str, dict]:
    return {name: body for block in parse(folder).get("variable", []) for name, body in block.items()}


@pytest.mark.parametrize("folder", MODULES + ENVIRONMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_module_has_the_five_files(folder):
    missing = [f for f in FIVE_FILES if not (folder / f).is_file() or not (folder / f).read_text().strip()]
    assert not missing, f"{folder.name} lacks {missing}"


@pytest.mark.parametrize("folder", MODULES + ENVIRONMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_variable_is_typed_described_and_validated(folder):
    bad = {name: [k for k in ("type", "description", "validation") if not body.get(k)]
           for name, body in variables(folder).items()}
    bad = {k: v for k, v in bad.items() if v}
    assert variables(folder), f"{folder.name} declares no variables"
    assert not bad, f"{folder.name}: variables missing fields: {bad}"


@pytest.mark.parametrize("folder", MODULES + ENVIRONMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_output_is_described(folder):
    outputs = {n: b for block in parse(folder).get("output", []) for n, b in block.items()}
    assert outputs and all(b.get("description") for b in outputs.values()), folder.name


@pytest.mark.parametrize("env", ENVIRONMENTS, ids=lambda p: p.name)
def test_module_calls_match_the_modules(env):
    """Every argument is a declared variable, every required variable is given, every output used exists."""
    calls = {n: b for block in parse(env).get("module", []) for n, b in block.items()}
    assert calls, f"{env.name} composes no modules"
    meta = {"source", "providers", "depends_on", "count", "for_each"}
    for name, call in calls.items():
        module = (env / call["source"]).resolve()
        declared = variables(module)
        unknown = set(call) - meta - set(declared)
        required = {v for v, body in declared.items() if "default" not in body}
        assert not unknown, f"module.{name} passes undeclared variables {unknown}"
        assert required <= set(call), f"module.{name} misses required variables {required - set(call)}"
        outputs = {n for block in parse(module).get("output", []) for n in block}
        text = "".join(f.read_text() for f in env.glob("*.tf"))
        used = set(re.findall(rf"module\.{name}\.(\w+)", text))
        assert used <= outputs, f"module.{name} has no outputs {used - outputs}"


@pytest.mark.parametrize("folder", MODULES + ENVIRONMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_ingress_from_the_whole_internet(folder):
    """AWS ingress rules reference security groups; OCI ingress never admits 0.0.0.0/0."""
    for rtype in ("aws_vpc_security_group_ingress_rule", "aws_security_group_rule"):
        for name, body in resources(folder, rtype).items():
            assert body.get("cidr_ipv4") != "0.0.0.0/0" and "0.0.0.0/0" not in str(body.get("cidr_blocks")), name
    for name, body in resources(folder, "oci_core_network_security_group_security_rule").items():
        if body["direction"] == "INGRESS":
            assert body.get("source") != "0.0.0.0/0", name


OCI = TERRAFORM_DIR / "modules"


def test_oci_api_endpoint_is_private_unless_asked():
    cluster = resources(OCI / "oci-oke", "oci_containerengine_cluster")["this"]
    assert cluster["endpoint_config"][0]["is_public_ip_enabled"] == "${var.public_api}"
    assert variables(OCI / "oci-oke")["public_api"]["default"] is False
    assert variables(OCI / "oci-network")["api_allowed_cidrs"]["default"] == []
    api = resources(OCI / "oci-network", "oci_core_subnet")["api"]
    assert api["prohibit_public_ip_on_vnic"] == "${!local.public_api}"


def test_oci_encrypts_everything_with_the_vault_key():
    key = "${var.kms_key_id}"
    assert resources(OCI / "oci-oke", "oci_containerengine_cluster")["this"]["kms_key_id"] == key
    pool = resources(OCI / "oci-oke", "oci_containerengine_node_pool")["system"]["node_config_details"][0]
    assert pool["kms_key_id"] == key and pool["is_pv_encryption_in_transit_enabled"] is True
    launch = resources(OCI / "oci-gpu-nodes", "oci_core_instance_configuration")["gpu"][
        "instance_details"][0]["launch_details"][0]
    assert launch["source_details"][0]["kms_key_id"] == key
    assert resources(OCI / "oci-storage", "oci_file_storage_file_system")["shared"]["kms_key_id"] == key
    assert resources(OCI / "oci-storage", "oci_objectstorage_bucket")["data"]["kms_key_id"] == key
    vault_key = resources(OCI / "oci-security", "oci_kms_key")["this"]
    assert vault_key["is_auto_rotation_enabled"] is True and vault_key["protection_mode"] == "HSM"


def test_oci_gpu_nodes_use_rdma_without_legacy_metadata():
    launch = resources(OCI / "oci-gpu-nodes", "oci_core_instance_configuration")["gpu"][
        "instance_details"][0]["launch_details"][0]
    assert launch["instance_options"][0]["are_legacy_imds_endpoints_disabled"] is True
    assert launch["create_vnic_details"][0]["assign_public_ip"] is False
    plugins = {p["name"]: p["desired_state"] for p in launch["agent_config"][0]["plugins_config"]}
    assert plugins == {"Compute HPC RDMA Authentication": "ENABLED", "Compute HPC RDMA Auto-Configuration": "ENABLED"}
    network = resources(OCI / "oci-gpu-nodes", "oci_core_cluster_network")["gpu"]
    assert network["instance_pools"][0]["instance_configuration_id"] == "${oci_core_instance_configuration.gpu.id}"
    assert network["instance_pools"][0]["size"] == "${var.node_count}"
    shapes = variables(OCI / "oci-gpu-nodes")["shape"]["validation"][0]["condition"]
    assert "BM.GPU.H100.8" in shapes and "VM." not in shapes


def test_oci_storage_is_private_and_reachable_by_the_training_account_only():
    bucket = resources(OCI / "oci-storage", "oci_objectstorage_bucket")["data"]
    assert bucket["access_type"] == "NoPublicAccess" and bucket["versioning"] == "Enabled"
    export = resources(OCI / "oci-storage", "oci_file_storage_export")["shared"]["export_options"][0]
    assert export["source"] == "${var.client_cidr}" and export["identity_squash"] == "ROOT"
    policy = " ".join(resources(OCI / "oci-storage", "oci_identity_policy")["training_bucket"]["statements"])
    for clause in ("request.principal.type = 'workload'", "request.principal.service_account",
                   "request.principal.cluster_id", "target.bucket.name"):
        assert clause in parse(OCI / "oci-storage")["locals"][0]["workload"] or clause in policy, clause


def test_oci_nvidia_plugin_is_an_oke_addon_and_iam_goes_to_the_home_region():
    addon = resources(OCI / "oci-oke", "oci_containerengine_addon")["nvidia_gpu_plugin"]
    assert addon["addon_name"] == "NvidiaGpuPlugin"
    for module in ("oci-security", "oci-storage"):
        for rtype in ("oci_identity_policy", "oci_identity_dynamic_group"):
            for name, body in resources(OCI / module, rtype).items():
                assert body.get("provider") == "${oci.home}", f"{module} {rtype}.{name} must use oci.home"


def test_kms_keys_rotate_and_buckets_block_public_access_on_aws():
    for module in ("aws-eks", "aws-storage"):
        for name, key in resources(OCI / module, "aws_kms_key").items():
            assert key["enable_key_rotation"] is True, f"{module} key {name}"
    block = resources(OCI / "aws-storage", "aws_s3_bucket_public_access_block")["data"]
    assert all(block[k] is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                                          "restrict_public_buckets"))
