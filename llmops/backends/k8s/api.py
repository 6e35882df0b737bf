"""Talking to the cluster: the official client, errors users can act on, and no half-created runs.

:class:`Cluster` wraps the ``kubernetes`` client (loaded only by the
Kubernetes backend). Every call has a timeout, and every failure becomes a
:class:`~llmops.errors.UserError` that says what was being done, what the
API server answered and how to fix it: an unreachable server, a missing
kubeconfig context, expired credentials, RBAC denial, a missing namespace.
Objects are created with server-side apply (field manager ``llmops``, strict
field validation); the Secret, which may not be read, with a create that
fails where the name is taken.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client as k
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from llmops.backends.k8s.objects import FIELD_MANAGER
from llmops.errors import UserError

TIMEOUT = (5, 30)  # seconds to connect, seconds to read
APPLY = "application/apply-patch+yaml"
RBAC_FIX = ("ask the platform team to bind the `llmops-submitter` Role (cluster/k8s/base/rbac-submitter.yaml) "
            "to you in namespace {ns}")

# kind -> (API group for RBAC, resource plural, client class, method suffix); JobSet goes through CustomObjectsApi.
KINDS: dict[str, tuple[str, str, str, str]] = {
    "ConfigMap": ("", "configmaps", "CoreV1Api", "config_map"),
    "Secret": ("", "secrets", "CoreV1Api", "secret"),
    "Service": ("", "services", "CoreV1Api", "service"),
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies", "NetworkingV1Api", "network_policy"),
    "Job": ("batch", "jobs", "BatchV1Api", "job"),
}
JOBSET = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
LOCALQUEUE = ("kueue.x-k8s.io", "v1beta1", "localqueues")


class ClusterError(UserError):
    """The cluster refused or could not be asked; carries the HTTP status (0: no answer)."""

    def __init__(self, message: str, fix: str | None = None, *, status: int = 0):
        super().__init__(message, fix)
        self.status = status


class Cluster:
    """One kubeconfig context and namespace, with the typed APIs the backend uses."""

    def __init__(self, api_client: k.ApiClient, *, context: str | None, namespace: str):
        self.api = api_client
        self.context = context
        self.namespace = namespace
        self.core = k.CoreV1Api(api_client)
        self.batch = k.BatchV1Api(api_client)
        self.networking = k.NetworkingV1Api(api_client)
        self.custom = k.CustomObjectsApi(api_client)
        self.auth = k.AuthorizationV1Api(api_client)

    @classmethod
    def connect(cls, *, context: str | None, namespace: str) -> Cluster:
        """Load the kubeconfig (or the in-cluster account); a clear error when there is none."""
        try:
            # KUBECONFIG is read now, not when the client was imported (its default is fixed at import).
            api = kconfig.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None, context=context)
        except kconfig.ConfigException as exc:
            try:
                if context is not None:
                    raise exc
                kconfig.load_incluster_config()
                api = k.ApiClient()
            except kconfig.ConfigException:
                where = f"context '{context}'" if context else "a current context"
                raise ClusterError(f"no usable kubeconfig with {where}: {exc}",
                                   "set KUBECONFIG or ~/.kube/config (e.g. `aws eks update-kubeconfig ...`), "
                                   "list contexts with `kubectl config get-contexts`, pass --context") from None
        api.configuration.retries = 1  # fail fast on a dead address instead of urllib3's three tries
        return cls(api, context=context, namespace=namespace)

    @staticmethod
    def current_context() -> str | None:
        """The kubeconfig's current context, by name; None where there is no kubeconfig (in a pod)."""
        try:
            _, active = kconfig.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG") or None)
        except (kconfig.ConfigException, OSError):
            return None
        return (active or {}).get("name")

    @property
    def where(self) -> str:
        ctx = self.context or "the current context"
        return f"{self.api.configuration.host} ({ctx})"

    def call(self, doing: str, fn: Callable[..., Any], *args, timeout=TIMEOUT, **kwargs) -> Any:
        """Run one API call; turn every failure into a ClusterError that names `doing`."""
        try:
            return fn(*args, _request_timeout=timeout, **kwargs)
        except ApiException as exc:
            raise self._refused(exc, doing) from None
        except (HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ClusterError(f"cannot reach the Kubernetes API server at {self.where} while {doing}: {reason}",
                               "check that the cluster is up and reachable (VPN, `kubectl cluster-info`), "
                               "or pick another kubeconfig context with --context") from None

    def _refused(self, exc: ApiException, doing: str) -> ClusterError:
        try:
            message = json.loads(exc.body or "{}").get("message") or exc.reason
        except ValueError:
            message = exc.reason
        text = f"{doing} in namespace '{self.namespace}' failed: {message}"
        fixes = {
            401: "your credentials expired or are wrong: log in again and refresh the kubeconfig",
            403: RBAC_FIX.format(ns=self.namespace),
            404: "check the name and the namespace (--namespace), and that cluster/k8s was applied",
            409: "another object has this name; cancel the old run or submit again for a new run id",
            422: "the cluster rejected the object; report this with `llmops render` output attached",
        }
        return ClusterError(text, fixes.get(exc.status, "see the message from the API server"), status=exc.status or 0)

    # ---- objects -------------------------------------------------------------------------
    def _typed(self, kind: str, verb: str) -> Callable[..., Any]:
        _group, _plural, api_cls, suffix = KINDS[kind]
        api = {"CoreV1Api": self.core, "NetworkingV1Api": self.networking, "BatchV1Api": self.batch}[api_cls]
        return getattr(api, f"{verb}_namespaced_{suffix}")

    def apply(self, obj: dict, *, manager: str = FIELD_MANAGER) -> None:
        """Server-side apply: creates the object, or takes over the fields `manager` sets (another manager's
        apply of some fields leaves the rest as they are)."""
        name, kind = obj["metadata"]["name"], obj["kind"]
        opts = dict(field_manager=manager, force=True, field_validation="Strict", _content_type=APPLY)
        doing = f"applying {kind} {name}"
        if kind == "JobSet":
            group, version, plural = JOBSET
            self.call(doing, self.custom.patch_namespaced_custom_object, group, version, self.namespace, plural,
                      name, obj, **opts)
        else:
            self.call(doing, self._typed(kind, "patch"), name, self.namespace, obj, **opts)

    def delete(self, kind: str, name: str, *, grace: int | None = None) -> None:
        """Delete one object and, in the background, what it owns (a Job's pods); gone already is fine."""
        doing = f"deleting {kind} {name}"
        body = k.V1DeleteOptions(propagation_policy="Background", grace_period_seconds=grace)
        try:
            if kind == "JobSet":
                group, version, plural = JOBSET
                self.call(doing, self.custom.delete_namespaced_custom_object, group, version, self.namespace,
                          plural, name, body=body)
            elif kind == "Pod":
                self.call(doing, self.core.delete_namespaced_pod, name, self.namespace, body=body)
            else:
                self.call(doing, self._typed(kind, "delete"), name, self.namespace, body=body)
        except ClusterError as exc:
            if exc.status != 404:
                raise

    def create(self, obj: dict) -> None:
        """Create an object that must be new (the run's Secret: submitters may not read secrets, so a Secret
        of the same name is found only by the API server's refusal, 409, never by a look)."""
        self.call(f"creating {obj['kind']} {obj['metadata']['name']}", self._typed(obj["kind"], "create"),
                  self.namespace, obj, field_validation="Strict")

    def existing(self, objects: list[dict]) -> list[str]:
        """`Kind name` of each object whose name is taken in the namespace already."""
        taken = []
        for obj in objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            try:
                if kind == "JobSet":
                    group, version, plural = JOBSET
                    self.call(f"reading JobSet {name}", self.custom.get_namespaced_custom_object, group, version,
                              self.namespace, plural, name)
                else:
                    self.call(f"reading {kind} {name}", self._typed(kind, "read"), name, self.namespace)
            except ClusterError as exc:
                if exc.status != 404:
                    raise
                continue
            taken.append(f"{kind} {name}")
        return taken

    def run_objects(self, selector: str, *, jobset: bool) -> list[tuple[str, str]]:
        """(kind, name) of every object with the run's label, workloads first."""
        found: list[tuple[str, str]] = []
        if jobset:
            group, version, plural = JOBSET
            items = self.call("listing JobSets", self.custom.list_namespaced_custom_object, group, version,
                              self.namespace, plural, label_selector=selector)["items"]
            found += [("JobSet", i["metadata"]["name"]) for i in items]
        for kind in ("Job", "NetworkPolicy", "Service", "ConfigMap"):
            items = self.call(f"listing {kind}s", self._typed(kind, "list"), self.namespace,
                              label_selector=selector).items
            found += [(kind, i.metadata.name) for i in items]
        return found

    def pods(self, selector: str) -> list[k.V1Pod]:
        return self.call("listing pods", self.core.list_namespaced_pod, self.namespace, label_selector=selector).items

    def delete_run(self, selector: str, *, jobset: bool, grace: int | None = None, secret: str | None = None) -> int:
        """Delete every object of a run; returns how many there were. Its Secret (if any) goes by name: listing
        secrets would mean reading them, a right submitters do not need."""
        objects = self.run_objects(selector, jobset=jobset)
        for kind, name in objects:
            self.delete(kind, name, grace=grace)
        if secret is not None:
            self.delete("Secret", secret)
        if grace == 0:
            for pod in self.pods(selector):
                self.delete("Pod", pod.metadata.name, grace=0)
        return len(objects)

    def wait_gone(self, selector: str, *, jobset: bool, timeout: float = 300.0) -> bool:
        """Poll until no object or pod of the run is left (a resubmit must not meet the old pods)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run_objects(selector, jobset=jobset) and not self.pods(selector):
                return True
            time.sleep(1.0)
        return False
