"""Checks before a submit creates anything, each failing with the problem and the fix.

A Job whose namespace, claim, queue or permissions are missing does not
fail: its pods wait forever, and the user learns why only from events. So
the backend asks first, in this order: the API server answers, the
namespace exists, the user may create and delete the run's objects, the
checkpoint claim exists, the JobSet and Kueue APIs are there when the spec
uses them, and some node can hold one pod of the run. Checks that need
cluster-wide read rights (namespaces, nodes) are skipped when those rights
are missing; the notes returned say so.
"""

from __future__ import annotations

from kubernetes import client as k
from kubernetes.utils import parse_quantity

from llmops.backends.k8s.api import JOBSET, KINDS, LOCALQUEUE, RBAC_FIX, Cluster, ClusterError


def preflight(cluster: Cluster, *, objects: list[dict], pvc: str, queue: str | None,
              node_selector: dict[str, str], pod_resources: list[dict[str, str]], secrets: bool = False) -> list[str]:
    """Raise ClusterError on the first problem; return notes about checks that could not run."""
    notes: list[str] = []
    cluster.call("asking the API server for its version", k.VersionApi(cluster.api).get_code)
    _namespace(cluster, notes)
    _permissions(cluster, kinds={o["kind"] for o in objects}, secrets=secrets)
    _claim(cluster, pvc)
    if any(o["kind"] == "JobSet" for o in objects):
        _jobset_api(cluster)
    if queue:
        _local_queue(cluster, queue)
    _capacity(cluster, node_selector, pod_resources, notes)
    return notes


def _namespace(cluster: Cluster, notes: list[str]) -> None:
    try:
        cluster.call("reading the namespace", cluster.core.read_namespace, cluster.namespace)
    except ClusterError as exc:
        if exc.status == 404:
            raise ClusterError(f"namespace '{cluster.namespace}' does not exist on {cluster.where}",
                               "apply the platform manifests (`kubectl apply -k cluster/k8s/overlays/<cloud>`) "
                               "or pass --namespace with one that exists", status=404) from None
        if exc.status != 403:
            raise
        notes.append("namespace not checked (no right to read namespaces)")


def _permissions(cluster: Cluster, *, kinds: set[str], secrets: bool = False) -> None:
    """SelfSubjectAccessReview for every verb a submit, status, logs and cancel need."""
    wanted = [("list", "", "pods", None), ("get", "", "pods", "log"), ("list", "", "events", None),
              ("delete", "", "pods", None)]
    if secrets:  # the run's own Secret: written and deleted, never read back
        wanted += [(verb, "", "secrets", None) for verb in ("create", "delete")]
    for kind in sorted(kinds):
        group, plural = (JOBSET[0], JOBSET[2]) if kind == "JobSet" else KINDS[kind][:2]
        wanted += [(verb, group, plural, None) for verb in ("create", "patch", "get", "list", "delete")]
    missing = []
    for verb, group, resource, sub in wanted:
        review = k.V1SelfSubjectAccessReview(spec=k.V1SelfSubjectAccessReviewSpec(
            resource_attributes=k.V1ResourceAttributes(namespace=cluster.namespace, verb=verb, group=group,
                                                       resource=resource, subresource=sub)))
        answer = cluster.call("checking permissions", cluster.auth.create_self_subject_access_review, review)
        if not answer.status.allowed:
            missing.append(f"{verb} {resource}{'/' + sub if sub else ''}{'.' + group if group else ''}")
    if missing:
        raise ClusterError(f"you may not {', '.join(missing)} in namespace '{cluster.namespace}' on {cluster.where}",
                           RBAC_FIX.format(ns=cluster.namespace), status=403)


def _claim(cluster: Cluster, pvc: str) -> None:
    try:
        claim = cluster.call(f"reading PersistentVolumeClaim {pvc}",
                             cluster.core.read_namespaced_persistent_volume_claim, pvc, cluster.namespace)
    except ClusterError as exc:
        if exc.status != 404:
            raise
        raise ClusterError(f"PersistentVolumeClaim '{pvc}' (k8s.checkpoint_pvc) does not exist in namespace "
                           f"'{cluster.namespace}'", "apply cluster/k8s (it creates `llmops-shared`), or set "
                           "k8s.checkpoint_pvc to a ReadWriteMany claim that exists", status=404) from None
    modes = claim.spec.access_modes or []
    if "ReadWriteMany" not in modes:
        raise ClusterError(f"PersistentVolumeClaim '{pvc}' is {', '.join(modes) or 'without access modes'}, "
                           "but every pod of the run mounts it", "use a ReadWriteMany claim (FSx for Lustre, "
                           "OCI File Storage, NFS); see cluster/k8s/overlays/", status=422)


def _jobset_api(cluster: Cluster) -> None:
    group, version, plural = JOBSET
    try:
        cluster.call("looking for the JobSet API", cluster.custom.list_namespaced_custom_object, group, version,
                     cluster.namespace, plural, limit=1)
    except ClusterError as exc:
        if exc.status != 404:
            raise
        raise ClusterError(f"the JobSet API ({group}/{version}) is not installed on {cluster.where}",
                           "install JobSet v0.10 or newer, or use the default flavour (--flavor indexed-job)",
                           status=404) from None


def _local_queue(cluster: Cluster, queue: str) -> None:
    group, version, plural = LOCALQUEUE
    try:
        cluster.call(f"reading Kueue LocalQueue {queue}", cluster.custom.get_namespaced_custom_object, group,
                     version, cluster.namespace, plural, queue)
    except ClusterError as exc:
        if exc.status != 404:
            raise
        raise ClusterError(f"Kueue LocalQueue '{queue}' (k8s.queue) is not in namespace '{cluster.namespace}' "
                           "(or Kueue is not installed)", "apply cluster/k8s/kueue, name an existing queue, or "
                           "remove k8s.queue", status=404) from None


def _capacity(cluster: Cluster, node_selector: dict[str, str], pods: list[dict[str, str]],
              notes: list[str]) -> None:
    """Some node must hold one pod of each stage. No node with a resource at all is fine: an autoscaler
    may add one."""
    selector = ",".join(f"{key}={value}" for key, value in node_selector.items()) or None
    try:
        nodes = cluster.call("listing nodes", cluster.core.list_node, label_selector=selector).items
    except ClusterError as exc:
        if exc.status != 403:
            raise
        notes.append("node capacity not checked (no right to list nodes)")
        return
    usable = [n for n in nodes if not (n.spec and n.spec.unschedulable)]
    for wanted in pods:
        _fits(wanted, usable, selector, notes)


def _fits(wanted: dict[str, str], nodes: list[k.V1Node], selector: str | None, notes: list[str]) -> None:
    need = {name: parse_quantity(amount) for name, amount in wanted.items()}
    offers = [{name: parse_quantity((n.status.allocatable or {}).get(name, "0")) for name in need} for n in nodes]
    if any(all(offer[name] >= amount for name, amount in need.items()) for offer in offers):
        return
    # Devices first: with too many GPUs per pod, the CPU and memory derived from them do not fit either.
    for name, amount in sorted(need.items(), key=lambda item: item[0] in ("cpu", "memory")):
        most = max((offer[name] for offer in offers), default=0)
        if 0 < most < amount:
            where = f" matching {selector}" if selector else ""
            raise ClusterError(f"each pod of the run needs {wanted[name]} {name}, but no node{where} offers that "
                               f"much (the most any node has is {_plain(most)})",
                               _capacity_fix(name), status=422)
    notes.append("no node can hold a pod yet; the pods stay Pending until a node is added (autoscaler?)")


def _plain(q) -> str:
    return str(int(q)) if q == int(q) else str(q)


def _capacity_fix(resource: str) -> str:
    if resource in ("cpu", "memory"):
        return f"lower k8s.{resource}, or use fewer processes per node and more nodes"
    return "lower resources.gpus_per_node to what a node has and raise resources.nodes, or check the profile"
