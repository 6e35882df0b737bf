"""Configuration of the Kubernetes backend: the run spec's `k8s:` section and a profile's.

Two models, both pydantic v2 with ``extra="forbid"``:

* :class:`K8sSpec` is what a user writes in a run spec (namespace, image,
  flavour, queue, ...). :mod:`llmops.spec.run` embeds it as ``RunSpec.k8s``,
  so this module stays light (pydantic only). :data:`OPTIONS` are the
  command-line flags that override its fields.
* :class:`K8sProfile` is the ``k8s:`` section of a cluster profile, written
  once by the platform team (network fabric, GPU resource name, node
  selectors, tolerations). :mod:`llmops.profiles` keeps it free-form; the
  backend validates it here when it reads the profile.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from llmops.backends.base import Option
from llmops.errors import SpecError
from llmops.spec.base import SpecModel, problems_from

# RFC 1123 label (namespaces, service accounts, PVCs, queues, priority classes).
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# A resource.Quantity as users write them: 4, 500m, 16Gi, 1.5G.
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"


class K8sSpec(SpecModel):
    """Where and how a run lands on a Kubernetes cluster (used when backend is k8s)."""

    context: str | None = None
    """kubeconfig context to submit to; unset means the current context (`--context`)."""
    namespace: str = Field("llmops", pattern=_DNS_LABEL)
    """Namespace of the run's objects; it must exist (cluster/k8s creates `llmops`) (`--namespace`)."""
    image: str | None = None
    """Container image with llmops, torch and megatron-core installed (infra/docker/Dockerfile.gpu or .cpu)."""
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    """When the kubelet pulls the image; `Never` for images loaded into kind."""
    image_pull_secrets: list[str] = Field(default_factory=list)
    """Secrets with registry credentials for a private image."""
    flavor: Literal["indexed-job", "jobset"] = "indexed-job"
    """indexed-job: plain Jobs, no CRD needed. jobset: one JobSet (JobSet v0.10+ installed) (`--flavor`)."""
    checkpoint_pvc: str = Field("llmops-shared", pattern=_DNS_LABEL)
    """PersistentVolumeClaim (ReadWriteMany) that holds run directories, checkpoints and data."""
    mount_path: str = Field("/llmops", pattern=r"^/([^/]+(/[^/]+)*)?$")
    """Where the claim is mounted in every pod; run directories live in `<mount_path>/runs/`."""
    service_account: str = Field("llmops-training", pattern=_DNS_LABEL)
    """Service account of the training pods; cluster/k8s gives it no API rights and no token is mounted."""
    priority_class: str | None = Field(None, pattern=_DNS_LABEL)
    """PriorityClass of the pods (cluster/k8s defines `llmops-training`); unset uses the cluster default."""
    queue: str | None = Field(None, pattern=_DNS_LABEL)
    """Kueue LocalQueue in the namespace; the run is then admitted as one gang when its quota is free."""
    cpu: str | None = Field(None, pattern=_QUANTITY)
    """CPU request and limit of each pod; unset: one per CPU process, or the profile's cpu_per_gpu x GPUs."""
    memory: str | None = Field(None, pattern=_QUANTITY)
    """Memory request and limit of each pod; unset: derived like cpu (2Gi per CPU process + 1Gi)."""
    shm_size: str | None = Field(None, pattern=_QUANTITY)
    """Size of the memory-backed /dev/shm (counts against memory); unset: 1Gi on CPU, 16Gi per GPU."""
    prepare_shards: int = Field(8, ge=1, le=100_000)
    """Pods of each map phase of data preparation (clean, tokenize), unless prepare.num_shards is set."""
    prepare_cpu: str = Field("2", pattern=_QUANTITY)
    """CPU request and limit of each data-preparation pod (one shard each)."""
    prepare_memory: str = Field("8Gi", pattern=_QUANTITY)
    """Memory request and limit of each data-preparation pod."""
    run_as_user: int | None = Field(1000, ge=0, le=2**31 - 1)
    """UID the containers run as (non-root by default); null keeps the image's user, for images that need root."""
    termination_grace_seconds: int = Field(180, ge=10, le=7 * 86400)
    """Time between SIGTERM and SIGKILL: enough to finish a step and write a checkpoint."""
    rendezvous_port: int = Field(29400, ge=1024, le=65535)
    """Port of the torchrun c10d rendezvous on the first pod of a stage."""
    rendezvous_timeout: int = Field(900, ge=60, le=86400)
    """Seconds the nodes wait for each other to join (pods can be scheduled minutes apart)."""
    stage_wait_timeout: int = Field(7 * 86400, ge=60, le=365 * 86400)
    """Seconds a stage's pods wait for the previous stage to finish before giving up."""
    ttl_after_finished: int | None = Field(None, ge=0, le=365 * 86400)
    """Delete finished Jobs (and their pods and logs) this many seconds after they end; unset keeps them."""


class Toleration(SpecModel):
    """A pod toleration (GPU nodes are often tainted so that only GPU work lands there)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class K8sProfile(SpecModel):
    """The `k8s:` section of a cluster profile: facts about the cluster that every run shares."""

    namespace: str | None = Field(None, pattern=_DNS_LABEL)
    """Namespace for this profile's runs unless the spec names one (OCI's RDMA runs: `llmops-rdma`, the one
    namespace whose Pod Security admits host networking)."""
    allow_root: bool = False
    """Whether a spec may run its containers as root (`k8s.run_as_user: 0`); off, such specs are refused."""

    network: Literal["none", "efa", "rdma"] = "none"
    """GPU fabric: AWS EFA, RDMA over InfiniBand/RoCE (OCI), or plain pod networking."""
    gpu_resource: str = "nvidia.com/gpu"
    """Extended resource name the GPU device plugin advertises."""
    efa_per_node: int = Field(0, ge=0, le=64)
    """`vpc.amazonaws.com/efa` devices each pod requests (p4d: 4, p5: 32); needed with network: efa."""
    rdma_resource: str | None = None
    """Extended resource of the RDMA device plugin that mounts /dev/infiniband (e.g. rdma/rdma_shared_device_a)."""
    host_network: bool | None = None
    """Run pods in the host network namespace; unset means yes for network: rdma (OCI RoCE) and no otherwise."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Labels a node must carry to run training pods (e.g. an instance type or a node pool)."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Taints of GPU nodes that training pods tolerate."""
    cpu_per_gpu: int = Field(8, ge=1, le=1024)
    """CPUs a GPU pod requests per GPU, when the spec sets no k8s.cpu."""
    memory_gib_per_gpu: int = Field(64, ge=1, le=100_000)
    """Memory (GiB) a GPU pod requests per GPU, when the spec sets no k8s.memory."""
    shm_size: str | None = Field(None, pattern=_QUANTITY)
    """/dev/shm size for GPU pods when the spec sets none."""

    @model_validator(mode="after")
    def _fabric_needs_devices(self) -> K8sProfile:
        if self.network == "efa" and self.efa_per_node == 0:
            raise ValueError("network: efa needs efa_per_node (the vpc.amazonaws.com/efa devices per pod)")
        if self.network == "rdma" and not self.rdma_resource:
            raise ValueError("network: rdma needs rdma_resource (the RDMA device plugin's resource name)")
        return self

    @property
    def uses_host_network(self) -> bool:
        return self.network == "rdma" if self.host_network is None else self.host_network


def parse_profile_section(data: dict[str, Any], source: str) -> K8sProfile:
    """Validate a profile's free-form `k8s:` mapping, naming every bad key and how to fix it."""
    try:
        return K8sProfile.model_validate(data or {})
    except ValidationError as exc:
        raise SpecError(source, problems_from(exc, K8sProfile, prefix=["k8s"],
                                              fix="see the K8sProfile fields in llmops/backends/k8s/spec.py")) from None


OPTIONS = (
    Option("context", "kubeconfig context to submit to (default: the current one)."),
    Option("namespace", "Namespace of the run's objects."),
    Option("flavor", "indexed-job (no CRD needed) or jobset."),
)


def resolve(spec) -> tuple[K8sSpec, K8sProfile, dict[str, str]]:
    """The spec's `k8s:` section with the profile's defaults in (its namespace), the profile's section (typed
    here) and the profile's process environment. The profile is read once, when a run is planned: the run
    directory keeps the resolved section for status, logs and restarts."""
    from llmops.profiles import load_profile  # this module stays importable from the spec's own model

    k8s = spec.k8s or K8sSpec()
    if spec.profile is None:
        return k8s, K8sProfile(), {}
    loaded = load_profile(spec.profile)
    profile = parse_profile_section(loaded.k8s, f"cluster profile '{loaded.name}'")
    if profile.namespace and "namespace" not in k8s.model_fields_set:
        k8s = k8s.model_copy(update={"namespace": profile.namespace})
    return k8s, profile, dict(loaded.env)
