"""Facts and stand-ins for `llmops provision` tests (import as `from llmops_testing.provision import ...`).

The stand-ins replace the terraform and kubectl executables in tests that
follow the whole provision flow without a cloud: each records its arguments
and working folder, and answers the few commands llmops reads output from.
Real Terraform runs on the same folders in test_provision.py and
test_terraform.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

AWS_FACTS = {
    "cloud": "aws", "name": "llm", "region": "us-east-1", "endpoint": "https://ABC.gr7.us-east-1.eks.amazonaws.com",
    "certificate_authority": "Q0EK", "endpoint_public": True, "kubernetes_version": "1.34",
    "gpu_zone": "us-east-1a", "gpu_instance_type": "p5.48xlarge", "gpu_node_count": 4, "gpus_per_node": 8,
    "efa_interfaces_per_node": 32, "vcpus_per_node": 192, "memory_gib_per_node": 2048,
    "gpu_node_labels": {"llmops.dev/node-role": "gpu"},
    "gpu_node_taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}],
    "placement_group": "llm-gpu", "training_namespace": "llmops", "training_service_account": "llmops-training",
    "training_role_arn": "arn:aws:iam::123456789012:role/llm-train-x", "bucket": "llm-123456789012-us-east-1",
    "fsx": {"file_system_id": "fs-0123456789abcdef0", "dns_name": "fs-0123.fsx.us-east-1.amazonaws.com",
            "mount_name": "abcdef", "capacity_gib": 4800, "s3_path": "/s3"},
}

OCI_FACTS = {
    "cloud": "oci", "name": "llm", "region": "us-ashburn-1", "cluster_id": "ocid1.cluster.oc1.iad.aaa",
    "endpoint": "https://10.0.0.5:6443", "certificate_authority": "Q0EK", "endpoint_public": False,
    "kubernetes_version": "v1.33.1", "gpu_availability_domain": "Uocm:US-ASHBURN-AD-1",
    "gpu_shape": "BM.GPU.H100.8", "gpu_node_count": 2, "gpus_per_node": 8, "vcpus_per_node": 224,
    "memory_gib_per_node": 2048, "gpu_node_labels": {"llmops.dev/node-role": "gpu"},
    "gpu_node_taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}],
    "training_namespace": "llmops", "training_service_account": "llmops-training", "bucket": "llm-data",
    "object_storage_namespace": "tenancyns",
    "fss": {"file_system_id": "ocid1.filesystem.oc1.iad.aaa", "mount_target_ip": "10.0.8.10", "export_path": "/llm"},
}

_FAKE = '''#!{python}
import json, os, sys
log = os.environ["FAKE_LOG"]
with open(log, "a") as fh:
    fh.write(json.dumps({{"tool": {tool!r}, "argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
args = sys.argv[1:]
if {tool!r} == "terraform":
    if args[:2] == ["version", "-json"]:
        print(json.dumps({{"terraform_version": "1.11.4"}}))
    elif args[:1] == ["output"]:
        print(open(os.environ["FAKE_FACTS"]).read())
    elif args[:1] == [os.environ.get("FAKE_FAIL", "")]:
        print("Error: simulated failure", file=sys.stderr)
        sys.exit(1)
    elif args[:1] == ["apply"]:
        open("terraform.tfstate", "w").write("{{}}")
    elif args[:2] == ["state", "list"]:
        if os.path.exists("terraform.tfstate"):
            print("module.cluster.aws_eks_cluster.this")
else:
    if args[:1] == ["kustomize"]:
        print("""apiVersion: v1
kind: Namespace
metadata: {{name: llmops, labels: {{pod-security.kubernetes.io/enforce: restricted}}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: llmops-shared, namespace: llmops}}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: fsx-lustre}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: llmops-training, namespace: llmops}}""")
'''


def install_fakes(folder: Path) -> dict[str, str]:
    """Write fake terraform and kubectl; returns the environment that makes llmops use them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for tool in ("terraform", "kubectl"):
        path = folder / tool
        path.write_text(_FAKE.format(python=sys.executable, tool=tool))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        paths[tool] = str(path)
    return {"LLMOPS_TERRAFORM": paths["terraform"], "LLMOPS_KUBECTL": paths["kubectl"],
            "FAKE_LOG": str(folder / "calls.jsonl")}


def calls(env: dict[str, str]) -> list[dict]:
    log = Path(env["FAKE_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def base_env(tmp: Path) -> dict[str, str]:
    """A clean user: its own HOME, clusters folder, AWS keys that are never used, no cloud config."""
    drop = ("AWS_", "OCI_", "LLMOPS_", "KUBECONFIG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    return env | {"HOME": str(home), "LLMOPS_CLUSTERS_DIR": str(tmp / "clusters"),
                  "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE00", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}


def offline_env(tmp: Path, terraform: str) -> dict[str, str]:
    """base_env for the real `terraform`, which can reach no registry: providers come only from an empty
    mirror (environments made of Terraform's builtin resources need none)."""
    mirror = tmp / "no-providers"
    mirror.mkdir(exist_ok=True)
    config = tmp / "terraformrc"
    config.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n')
    return base_env(tmp) | {"LLMOPS_TERRAFORM": terraform, "TF_CLI_CONFIG_FILE": str(config),
                            "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}


def stand_in(tmp: Path, main_tf: str) -> dict[str, str]:
    """infra/terraform with the AWS environment's real variables and a stand-in for the cloud (Terraform's builtin
    resources only: `main_tf`), whose `cluster` output is AWS_FACTS; the environment that makes llmops copy it."""
    from llmops_testing.terraform import TERRAFORM_DIR

    tree = tmp / "tf"
    (tree / "modules").mkdir(parents=True)
    aws = tree / "environments" / "aws"
    aws.mkdir(parents=True)
    shutil.copy(TERRAFORM_DIR / "environments" / "aws" / "variables.tf", aws)
    (aws / "facts.json").write_text(json.dumps(AWS_FACTS | {"endpoint_public": False}))
    (aws / "main.tf").write_text(main_tf + '\noutput "cluster" {\n'
                                           '  value = jsondecode(file("${path.module}/facts.json"))\n}\n')
    return {"LLMOPS_TERRAFORM_DIR": str(tree)}
