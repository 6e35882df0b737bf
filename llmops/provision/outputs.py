"""What `llmops provision` hands back after `terraform apply`: kubeconfig, profile, shared volume.

Everything here is built from the environment's ``cluster`` output (the
``facts``: ``terraform output -json`` of infra/terraform/environments/<cloud>)
as typed data and written with yaml.safe_dump; nothing is string-templated.
Pure functions, so that tests can check them without a cloud.
"""

from __future__ import annotations

from typing import Any

# NCCL over EFA: libfabric's EFA provider with GPUDirect RDMA (p4d, p5). The
# aws-ofi-nccl plugin of the NGC image picks these up.
_EFA_ENV = {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "FI_EFA_FORK_SAFE": "1",
            "NCCL_SOCKET_IFNAME": "^lo,docker,veth"}  # NCCL bootstrap over the pod's own interface

# NCCL over OCI's RoCE v2 cluster network (values of the oci-hpc-oke NCCL
# examples). NCCL_IB_HCA lists the RDMA NICs, which differ by shape; shapes
# not listed here let NCCL pick HCAs itself.
_RDMA_ENV = {"NCCL_IB_GID_INDEX": "3", "NCCL_IB_TC": "41", "NCCL_IB_SL": "0", "NCCL_IB_TIMEOUT": "22",
             "NCCL_IB_QPS_PER_CONNECTION": "4", "NCCL_IB_SPLIT_DATA_ON_QPS": "0", "NCCL_SOCKET_IFNAME": "eth0"}
_OCI_HCAS = {
    "BM.GPU.H100.8": "=mlx5_0,mlx5_1,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_7,mlx5_8,mlx5_9,mlx5_10,"
                     "mlx5_12,mlx5_13,mlx5_14,mlx5_15,mlx5_16,mlx5_17",
    "BM.GPU.B200.8": "=mlx5_0,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_9,mlx5_10,mlx5_11",
}
RDMA_RESOURCE = "rdma/rdma_shared_device_a"  # environments/oci/addons/rdma-shared-device-plugin.yaml
SHARED_CLAIM = "llmops-shared"  # the K8sSpec.checkpoint_pvc default


def kubeconfig(facts: dict[str, Any], *, cli_profile: str | None = None) -> dict[str, Any]:
    """A kubeconfig whose credentials come from the cloud CLI at use time (no secret stored), as the CLI profile
    that created the cluster (`cli_profile`, AWS_PROFILE or OCI_CLI_PROFILE then), as `aws eks
    update-kubeconfig --profile` records it: a shell without that variable would act as another identity."""
    name = facts["name"]
    if facts["cloud"] == "aws":
        command, args = "aws", ["--region", facts["region"], "eks", "get-token", "--cluster-name", name,
                                "--output", "json"]
        variable = "AWS_PROFILE"
    else:
        command, args = "oci", ["ce", "cluster", "generate-token", "--cluster-id", facts["cluster_id"],
                                "--region", facts["region"]]
        variable = "OCI_CLI_PROFILE"
    exec_ = {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": command, "args": args,
             "interactiveMode": "Never"}
    if cli_profile:
        exec_["env"] = [{"name": variable, "value": cli_profile}]
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": facts["endpoint"],
                                                "certificate-authority-data": facts["certificate_authority"]}}],
        "users": [{"name": name, "user": {"exec": exec_}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name,
                                                "namespace": facts["training_namespace"]}}],
        "current-context": name,
    }


def profile(facts: dict[str, Any]) -> dict[str, Any]:
    """The llmops cluster profile (llmops/profiles.py) whose `k8s:` section the k8s backend reads."""
    gpus = int(facts["gpus_per_node"])
    k8s: dict[str, Any] = {
        "gpu_resource": "nvidia.com/gpu",
        "node_selector": {"llmops.dev/node-role": "gpu"},
        "tolerations": [{"key": t["key"], "operator": "Exists", "effect": t["effect"]}
                        for t in facts["gpu_node_taints"]],
        # Leave ~10% of CPUs and ~15% of memory to the kubelet, daemons and page cache.
        "cpu_per_gpu": max(1, int(facts["vcpus_per_node"]) * 9 // 10 // gpus),
        "memory_gib_per_gpu": max(1, int(facts["memory_gib_per_node"]) * 85 // 100 // gpus),
        # /dev/shm for NCCL and data loader workers: an eighth of the node's memory.
        "shm_size": f"{max(1, int(facts['memory_gib_per_node']) // 8)}Gi",
    }
    if facts["cloud"] == "aws":
        shape = facts["gpu_instance_type"]
        efa = int(facts["efa_interfaces_per_node"])
        k8s |= {"network": "efa", "efa_per_node": efa} if efa else {"network": "none"}
        env = dict(_EFA_ENV) if efa else {}
        env["LLMOPS_BUCKET"] = f"s3://{facts['bucket']}"
        where = (f"EKS cluster {facts['name']} in {facts['region']} ({facts['gpu_zone']}): "
                 f"{facts['gpu_node_count']} x {shape}, {gpus} GPUs and {efa} EFA interfaces each; "
                 f"FSx for Lustre {facts['fsx']['file_system_id']} as claim {SHARED_CLAIM}")
    else:
        shape = facts["gpu_shape"]
        k8s |= {"network": "rdma", "rdma_resource": RDMA_RESOURCE, "host_network": True}
        env = dict(_RDMA_ENV) | ({"NCCL_IB_HCA": _OCI_HCAS[shape]} if shape in _OCI_HCAS else {})
        env["LLMOPS_BUCKET"] = f"oci://{facts['bucket']}@{facts['object_storage_namespace']}"
        where = (f"OKE cluster {facts['name']} in {facts['region']} ({facts['gpu_availability_domain']}): "
                 f"{facts['gpu_node_count']} x {shape} on an RDMA cluster network; "
                 f"File Storage {facts['fss']['export_path']} as claim {SHARED_CLAIM}")
    k8s["node_selector"]["llmops.dev/accelerator"] = "nvidia"
    return {"name": facts["name"], "description": f"{where}. Written by `llmops provision`.",
            "env": env, "k8s": k8s}


def shared_volume(facts: dict[str, Any]) -> list[dict[str, Any]]:
    """Namespace, PersistentVolume and claim binding the cluster's shared file system statically.

    Static binding (storageClassName "" and a claimRef) so that the claim can
    only ever get this file system, never a dynamically made one.
    """
    ns, pv_name = facts["training_namespace"], f"{SHARED_CLAIM}-{facts['name']}"
    if facts["cloud"] == "aws":
        fsx = facts["fsx"]
        size = f"{int(fsx['capacity_gib'])}Gi"
        csi = {"driver": "fsx.csi.aws.com", "volumeHandle": fsx["file_system_id"],
               "volumeAttributes": {"dnsname": fsx["dns_name"], "mountname": fsx["mount_name"]}}
        mount_options = ["flock"]  # torch.distributed checkpoint writers lock files
    else:
        fss = facts["fss"]
        size = "100Ti"  # File Storage grows as it fills; the size is nominal
        csi = {"driver": "fss.csi.oraclecloud.com",
               "volumeHandle": f"{fss['file_system_id']}:{fss['mount_target_ip']}:{fss['export_path']}"}
        mount_options = ["nosuid"]
    pv = {"apiVersion": "v1", "kind": "PersistentVolume",
          "metadata": {"name": pv_name, "labels": {"app.kubernetes.io/part-of": "llmops"}},
          "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteMany"],
                   "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                   "mountOptions": mount_options, "csi": csi,
                   "claimRef": {"namespace": ns, "name": SHARED_CLAIM}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": SHARED_CLAIM, "namespace": ns, "labels": {"app.kubernetes.io/part-of": "llmops"}},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv_name,
                    "resources": {"requests": {"storage": size}}}}
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    return [namespace, pv, pvc]
