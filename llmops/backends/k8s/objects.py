"""The Kubernetes objects of a run, built as the official client's typed models.

Every object is a ``kubernetes.client`` model (pydantic, unknown fields
rejected at construction) turned into a plain dict by the client's own
serializer; nothing here formats YAML text. This module holds what both
flavours share: names and labels, the run's ConfigMap, headless Service and
NetworkPolicy, and the pod template of a stage. The Job and JobSet around
the pod template live in :mod:`llmops.backends.k8s.jobs`.

Pod layout (one pod per node of a stage):

* volume ``shared``: the checkpoint PVC at ``k8s.mount_path``; run
  directories live in ``<mount_path>/runs/<run id>`` so every pod, stage and
  restart sees the same spec, checkpoints, metrics and completion markers;
* volume ``dshm``: a memory-backed ``/dev/shm`` (NCCL and data loaders need
  more than the runtime's 64 MiB);
* init container ``setup``: writes the spec and waits for the previous stage;
* container ``trainer``: the node's torchrun agent (:mod:`llmops.backends.k8s.pod`).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k

from llmops.backends.k8s.rules import SHM
from llmops.backends.k8s.spec import K8sProfile, K8sSpec

GROUP = "llmops.dev"
RUN_LABEL = f"{GROUP}/run"
STAGE_LABEL = f"{GROUP}/stage"
RUN_ID_ANNOTATION = f"{GROUP}/run-id"
OWNER_LABEL = f"{GROUP}/run-uid"  # set at submit on everything a run creates (llmops.backends.k8s.record)
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
FIELD_MANAGER = "llmops"
TTL_MANAGER = "llmops-ttl"  # sets k8s.ttl_after_finished on a finished workload, that field alone
# Pod annotations the Job controller keeps per index when backoffLimitPerIndex is set,
# and the label JobSet puts on the pods of each whole-gang restart.
INDEX_FAILURES = "batch.kubernetes.io/job-index-failure-count"
INDEX_IGNORED_FAILURES = "batch.kubernetes.io/job-index-ignored-failure-count"
JOBSET_RESTART = "jobset.sigs.k8s.io/restart-attempt"
MAIN_CONTAINER = "trainer"
_BASE_MAX = 40  # leaves room for "-<stage>-<job>-<pod index>" in 63-character pod hostnames


def base_name(run_id: str) -> str:
    """A DNS-1035 label naming the run's objects; long ids keep a hash so names stay unique."""
    name = run_id.lower()
    if not name[0].isalpha():  # first, so that a long id is hashed, never cut: two ids must not meet in one name
        name = f"r{name}"
    if len(name) > _BASE_MAX:
        digest = hashlib.sha1(run_id.encode()).hexdigest()[:6]
        name = f"{name[:_BASE_MAX - 7].rstrip('-')}-{digest}"
    return name


@dataclass(frozen=True)
class RunNames:
    """Names and labels of one run's objects."""

    run_id: str
    base: str
    namespace: str
    uid: str | None = None  # the run's OWNER_LABEL, once submitted; None for runs of an llmops that set none

    @classmethod
    def of(cls, run_id: str, namespace: str, uid: str | None = None) -> RunNames:
        return cls(run_id=run_id, base=base_name(run_id), namespace=namespace, uid=uid)

    @property
    def config_map(self) -> str:
        return f"{self.base}-spec"

    @property
    def secret(self) -> str:
        """The Secret that `submit` creates when the spec names secrets (never rendered: it holds values)."""
        return f"{self.base}-secrets"

    def job(self, stage: str) -> str:
        return f"{self.base}-{stage}"

    def labels(self, stage: str | None = None) -> dict[str, str]:
        out = {"app.kubernetes.io/name": "llmops", "app.kubernetes.io/managed-by": "llmops", RUN_LABEL: self.base}
        return {**out, STAGE_LABEL: stage} if stage else out

    @property
    def run_selector(self) -> str:
        """Everything named for the run: its own objects, and those of another run whose id gives one name."""
        return f"{RUN_LABEL}={self.base}"

    @property
    def selector(self) -> str:
        """The run's own objects and pods."""
        return self.run_selector + (f",{OWNER_LABEL}={self.uid}" if self.uid else "")

    def metadata(self, name: str, *, stage: str | None = None, extra: dict[str, str] | None = None) -> k.V1ObjectMeta:
        return k.V1ObjectMeta(name=name, namespace=self.namespace, labels={**self.labels(stage), **(extra or {})},
                              annotations={RUN_ID_ANNOTATION: self.run_id})


def stamped(objects: list[dict], uid: str) -> list[dict]:
    """Copies of the objects with the run's OWNER_LABEL on them and on their pods. Set at submit only: rendered
    manifests stay the same for every render of a run."""
    out = copy.deepcopy(objects)
    for obj in out:
        metas = [obj["metadata"]]
        if obj["kind"] == "Job":
            metas.append(obj["spec"]["template"]["metadata"])
        elif obj["kind"] == "JobSet":
            for job in obj["spec"]["replicatedJobs"]:
                metas += [job["template"]["metadata"], job["template"]["spec"]["template"]["metadata"]]
        for meta in metas:
            meta.setdefault("labels", {})[OWNER_LABEL] = uid
    return out


def to_dict(model: Any) -> dict:
    """A client model as the API's JSON (camelCase keys, no unset fields)."""
    return k.ApiClient().sanitize_for_serialization(model)


def config_map(names: RunNames, spec_yaml: str) -> dict:
    """The resolved spec, which the setup container writes into the run directory once."""
    return to_dict(k.V1ConfigMap(api_version="v1", kind="ConfigMap", metadata=names.metadata(names.config_map),
                                 data={"spec.yaml": spec_yaml}))


def headless_service(names: RunNames, *, port: int) -> dict:
    """Gives pod `<job>-<index>` the name `<job>-<index>.<base>`: pod 0's is the rendezvous endpoint."""
    return to_dict(k.V1Service(
        api_version="v1", kind="Service", metadata=names.metadata(names.base),
        spec=k.V1ServiceSpec(
            cluster_ip="None", selector={RUN_LABEL: names.base},
            # Publish pods before they are ready: the nodes must find each other to become ready at all.
            publish_not_ready_addresses=True,
            ports=[k.V1ServicePort(name="rendezvous", port=port, target_port=port, protocol="TCP")],
        ),
    ))


def network_policy(names: RunNames) -> dict:
    """Ingress to the run's pods only from the run's own pods (cluster/k8s denies the rest)."""
    same_run = k.V1LabelSelector(match_labels={RUN_LABEL: names.base})
    return to_dict(k.V1NetworkPolicy(
        api_version="networking.k8s.io/v1", kind="NetworkPolicy", metadata=names.metadata(f"{names.base}-intra-run"),
        spec=k.V1NetworkPolicySpec(pod_selector=same_run, policy_types=["Ingress"],
                                   ingress=[k.V1NetworkPolicyIngressRule(_from=[k.V1NetworkPolicyPeer(
                                       pod_selector=same_run)])]),
    ))


@dataclass(frozen=True)
class PodPlan:
    """Everything a stage's pod template depends on, resolved from spec, profile and flavour."""

    names: RunNames
    stage: str
    kind: str  # "torchrun" (a training gang) or "prepare" (independent data-preparation shards)
    phase: str | None  # the data-preparation phase of a "prepare" stage
    shards: int
    k8s: K8sSpec
    profile: K8sProfile
    profile_env: dict[str, str]
    run_dir: str
    nnodes: int
    procs_per_node: int
    gpus_per_node: int  # 0 for CPU runs
    max_restarts: int
    rdzv_host: str
    after: str  # "<previous stage>:<index count>", or "" for the first stage
    flavor_env: list[k.V1EnvVar]
    subdomain: str | None  # the headless Service (indexed-job); JobSet sets its own
    secrets: list[str] = field(default_factory=list)  # names of spec.secrets, from the run's Secret


def resources(plan: PodPlan) -> k.V1ResourceRequirements:
    """Requests equal limits: a training pod gets exactly what it asked for (Guaranteed QoS).

    The GPU fabric (EFA devices, the RDMA device plugin) is requested by GPU pods only.
    """
    spec, prof = plan.k8s, plan.profile
    if plan.kind == "prepare":
        amount = {"cpu": spec.prepare_cpu, "memory": spec.prepare_memory}
        return k.V1ResourceRequirements(requests=dict(amount), limits=dict(amount))
    if plan.gpus_per_node:
        cpu = spec.cpu or str(prof.cpu_per_gpu * plan.gpus_per_node)
        memory = spec.memory or f"{prof.memory_gib_per_gpu * plan.gpus_per_node}Gi"
    else:
        cpu = spec.cpu or str(plan.procs_per_node)
        memory = spec.memory or f"{2 * plan.procs_per_node + 1}Gi"
    amounts = {"cpu": cpu, "memory": memory}
    if plan.gpus_per_node:
        amounts[prof.gpu_resource] = str(plan.gpus_per_node)
    if plan.gpus_per_node and prof.network == "efa":
        amounts["vpc.amazonaws.com/efa"] = str(prof.efa_per_node)
    if plan.gpus_per_node and prof.network == "rdma":
        amounts[prof.rdma_resource] = "1"  # the shared RDMA device plugin mounts /dev/infiniband
    return k.V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts))


def shm_size(plan: PodPlan) -> str:
    if plan.k8s.shm_size:
        return plan.k8s.shm_size
    if plan.gpus_per_node:
        return plan.profile.shm_size or f"{16 * plan.gpus_per_node}Gi"
    return "1Gi"


def container_security(plan: PodPlan) -> k.V1SecurityContext:
    """Nothing privileged; every capability dropped except IPC_LOCK, which RDMA verbs need to pin memory.

    EFA needs no capability: the EFA device plugin and the EKS GPU AMI's unlimited memlock suffice,
    so AWS pods pass the `restricted` Pod Security Standard.
    """
    add = ["IPC_LOCK"] if plan.gpus_per_node and plan.profile.network == "rdma" else None
    return k.V1SecurityContext(privileged=False, allow_privilege_escalation=False,
                               capabilities=k.V1Capabilities(drop=["ALL"], add=add),
                               seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault"))


def pod_security(spec: K8sSpec) -> k.V1PodSecurityContext:
    if spec.run_as_user is None:
        return k.V1PodSecurityContext(seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault"))
    uid = spec.run_as_user
    return k.V1PodSecurityContext(
        run_as_user=uid, run_as_group=uid, fs_group=uid, run_as_non_root=uid != 0,
        # Change ownership only when the volume root does not match already: a recursive
        # chown of a checkpoint volume with millions of files would delay every pod start.
        fs_group_change_policy="OnRootMismatch",
        seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault"),
    )


def _field(path: str) -> k.V1EnvVarSource:
    return k.V1EnvVarSource(field_ref=k.V1ObjectFieldSelector(field_path=path))


def trainer_env(plan: PodPlan) -> list[k.V1EnvVar]:
    values = {"LLMOPS_RUN_DIR": plan.run_dir, "LLMOPS_STAGE": plan.stage, "LLMOPS_STAGE_KIND": plan.kind,
              "LLMOPS_NNODES": str(plan.nnodes), "LLMOPS_MAX_RESTARTS": str(plan.max_restarts),
              "PYTHONUNBUFFERED": "1"}
    if plan.kind == "prepare":
        values.update(LLMOPS_PREPARE_PHASE=plan.phase, LLMOPS_NUM_SHARDS=str(plan.shards))
    else:
        values.update({
            "LLMOPS_NPROC_PER_NODE": str(plan.procs_per_node), "LLMOPS_RDZV_HOST": plan.rdzv_host,
            "LLMOPS_RDZV_PORT": str(plan.k8s.rendezvous_port), "LLMOPS_RDZV_ID": plan.names.job(plan.stage),
            "LLMOPS_RDZV_TIMEOUT": str(plan.k8s.rendezvous_timeout)})
    if not plan.gpus_per_node:
        values["CUDA_VISIBLE_DEVICES"] = ""  # a CPU pod stays on the CPU even on a GPU node
        cores = plan.k8s.prepare_cpu if plan.kind == "prepare" else (plan.k8s.cpu or str(plan.procs_per_node))
        threads = max(1, int(float(cores.rstrip("m")) / (1000 if cores.endswith("m") else 1)) // plan.procs_per_node)
        values["OMP_NUM_THREADS"] = str(threads)
    if plan.kind == "torchrun":
        values.update(plan.profile_env)  # the site's NCCL/libfabric settings concern training processes
    env = [k.V1EnvVar(name=n, value=v) for n, v in values.items()]
    env += [k.V1EnvVar(name=n, value_from=k.V1EnvVarSource(secret_key_ref=k.V1SecretKeySelector(
        name=plan.names.secret, key=n))) for n in plan.secrets]
    return env + plan.flavor_env


def secret(names: RunNames, values: dict[str, str]) -> dict:
    """The run's Secret: created by `submit` only, never rendered or written to disk."""
    import base64

    data = {n: base64.b64encode(v.encode()).decode() for n, v in sorted(values.items())}
    return to_dict(k.V1Secret(api_version="v1", kind="Secret", type="Opaque", data=data,
                              metadata=names.metadata(names.secret)))


def setup_container(plan: PodPlan, image: str) -> k.V1Container:
    spec_ref = k.V1EnvVarSource(config_map_key_ref=k.V1ConfigMapKeySelector(
        name=plan.names.config_map, key="spec.yaml"))
    env = [k.V1EnvVar(name="LLMOPS_RUN_DIR", value=plan.run_dir), k.V1EnvVar(name="LLMOPS_SPEC", value_from=spec_ref),
           k.V1EnvVar(name="LLMOPS_AFTER", value=plan.after),
           k.V1EnvVar(name="LLMOPS_WAIT_TIMEOUT", value=str(plan.k8s.stage_wait_timeout))]
    small = {"cpu": "250m", "memory": "256Mi"}
    return k.V1Container(
        name="setup", image=image, image_pull_policy=plan.k8s.image_pull_policy,
        command=["python", "-m", "llmops.backends.k8s.pod", "setup"], env=env,
        resources=k.V1ResourceRequirements(requests=small, limits=small),
        volume_mounts=[k.V1VolumeMount(name="shared", mount_path=plan.k8s.mount_path)],
        security_context=container_security(plan),
    )


def pod_template(plan: PodPlan) -> k.V1PodTemplateSpec:
    spec, prof = plan.k8s, plan.profile
    gang = plan.kind == "torchrun"
    trainer = k.V1Container(
        name=MAIN_CONTAINER, image=spec.image, image_pull_policy=spec.image_pull_policy,
        command=["python", "-m", "llmops.backends.k8s.pod", "run"], env=trainer_env(plan),
        ports=[k.V1ContainerPort(name="rendezvous", container_port=spec.rendezvous_port, protocol="TCP")]
        if gang else None,
        resources=resources(plan), security_context=container_security(plan),
        volume_mounts=[k.V1VolumeMount(name="shared", mount_path=spec.mount_path),
                       k.V1VolumeMount(name="dshm", mount_path=SHM)],
    )
    # GPU placement (node pool, taints, host networking for RDMA) applies to GPU pods only;
    # data preparation and CPU runs land on any node.
    gpu = plan.gpus_per_node > 0
    host_net = gpu and prof.uses_host_network
    pod = k.V1PodSpec(
        restart_policy="Never",  # the Job replaces failed pods; podFailurePolicy needs Never
        subdomain=plan.subdomain, service_account_name=spec.service_account,
        automount_service_account_token=False,  # training needs no API access
        enable_service_links=False, priority_class_name=spec.priority_class,
        termination_grace_period_seconds=spec.termination_grace_seconds,
        security_context=pod_security(spec), host_network=host_net or None,
        dns_policy="ClusterFirstWithHostNet" if host_net else None,  # keep cluster DNS for the rendezvous name
        node_selector=(prof.node_selector if gpu else None) or None,
        tolerations=[k.V1Toleration(**t.model_dump(exclude_none=True)) for t in prof.tolerations if gpu] or None,
        image_pull_secrets=[k.V1LocalObjectReference(name=s) for s in spec.image_pull_secrets] or None,
        init_containers=[setup_container(plan, spec.image)], containers=[trainer],
        volumes=[
            k.V1Volume(name="shared", persistent_volume_claim=k.V1PersistentVolumeClaimVolumeSource(
                claim_name=spec.checkpoint_pvc)),
            k.V1Volume(name="dshm", empty_dir=k.V1EmptyDirVolumeSource(medium="Memory", size_limit=shm_size(plan))),
        ],
    )
    return k.V1PodTemplateSpec(metadata=k.V1ObjectMeta(labels=plan.names.labels(plan.stage)), spec=pod)


def field_env(name: str, path: str) -> k.V1EnvVar:
    return k.V1EnvVar(name=name, value_from=_field(path))
