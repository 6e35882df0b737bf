"""A small in-memory Kubernetes API server on 127.0.0.1 for the official client to talk to.

:func:`serve` starts one; the Kubernetes tests' ``fake_cluster`` fixture hands it to a test with a
kubeconfig that points at it.

It serves the real REST paths the backend uses (core, batch, networking,
authorization, JobSet and Kueue groups) with real Status objects for errors,
and insists on server-side apply (PATCH with application/apply-patch+yaml,
fieldManager and force). Tests set up the cluster's state (namespaces, claims,
nodes, denied permissions, refused objects) and play the controllers' part by
editing stored objects (pods, Job conditions), and break things as servers do
(a delete refused, a followed log cut off mid-way). It does not pretend to
schedule or run anything.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml

COLLECTIONS = {  # path segment -> (group/version path, kind)
    "configmaps": ("api/v1", "ConfigMap"), "services": ("api/v1", "Service"), "pods": ("api/v1", "Pod"),
    "secrets": ("api/v1", "Secret"),
    "events": ("api/v1", "Event"), "persistentvolumeclaims": ("api/v1", "PersistentVolumeClaim"),
    "networkpolicies": ("apis/networking.k8s.io/v1", "NetworkPolicy"), "jobs": ("apis/batch/v1", "Job"),
    "jobsets": ("apis/jobset.x-k8s.io/v1alpha2", "JobSet"),
    "localqueues": ("apis/kueue.x-k8s.io/v1beta1", "LocalQueue"),
}
ITEM = re.compile(r"^/(api/v1|apis/[^/]+/[^/]+)/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?(?:/(log))?$")


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class FakeCluster:
    """The state behind the server, which tests arrange and inspect."""

    def __init__(self):
        self.namespaces = {"llmops"}
        self.objects: dict[tuple[str, str, str], dict] = {}  # (resource, namespace, name) -> object
        self.nodes: list[dict] = [node("cpu-1", cpu="8", memory="32Gi")]
        self.denied: set[tuple[str, str]] = set()  # (verb, resource) the user may not do
        self.refuse: dict[str, tuple[int, str, str]] = {}  # resource -> Status on apply
        self.fail_after_create: dict[str, tuple[int, str, str]] = {}  # resource -> Status, the object kept
        self.fail_delete: dict[str, tuple[int, str, str]] = {}  # resource -> Status on delete, the object kept
        self.installed = {"jobsets", "localqueues"}
        self.logs = Logs()
        self.cut_follow: dict[str, list[int]] = {}  # pod -> byte counts after which its next follows break
        self.applies: list[tuple[str, str]] = []  # (resource, fieldManager) of each apply
        self.managers: dict[tuple[str, str, str], str] = {}  # the field manager that created an object
        self.add("persistentvolumeclaims", "llmops-shared", {"spec": {"accessModes": ["ReadWriteMany"]}})

    def add(self, resource: str, name: str, body: dict, namespace: str = "llmops") -> dict:
        meta = body.setdefault("metadata", {})
        meta.update(name=name, namespace=namespace)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta["resourceVersion"] = str(len(self.applies) + len(self.objects) + 1)
        body.setdefault("apiVersion", COLLECTIONS[resource][0].split("/", 1)[-1])
        body.setdefault("kind", COLLECTIONS[resource][1])
        self.objects[(resource, namespace, name)] = body
        return body

    node = staticmethod(lambda name, **allocatable: node(name, **allocatable))

    def expire_finished(self) -> list[str]:
        """Play the TTL-after-finished controller, its time elapsed: remove every finished Job or JobSet that has
        spec.ttlSecondsAfterFinished (and a Job's pods); the names removed."""
        gone = []
        for key, obj in list(self.objects.items()):
            conditions = (obj.get("status") or {}).get("conditions") or []
            finished = any(c.get("type") in ("Complete", "Completed", "Failed") and c.get("status") == "True"
                           for c in conditions)
            if key[0] in ("jobs", "jobsets") and finished and obj["spec"].get("ttlSecondsAfterFinished") is not None:
                del self.objects[key]
                self.managers.pop(key, None)
                gone.append(key[2])
                for pod in [k for k, o in self.objects.items() if k[0] == "pods"
                            and (o["metadata"].get("labels") or {}).get("job-name") == key[2]]:
                    del self.objects[pod]
        return gone

    def job_pod(self, job: str, index: int, *, ignored: int = 0, scheduled: bool = True) -> dict:
        """The body of a pod of a stored Job as its controller makes them (the template's labels, the index
        annotations), running its main container, or unschedulable; a test adds it with `add`."""
        template = self.objects[("jobs", "llmops", job)]["spec"]["template"]
        meta = {"labels": {**template["metadata"]["labels"], "job-name": job},
                "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}}
        if ignored:
            meta["annotations"]["batch.kubernetes.io/job-index-ignored-failure-count"] = str(ignored)
        if not scheduled:
            return {"metadata": meta, "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/1 nodes are available: 1 Insufficient cpu."}]}}
        return {"metadata": meta, "status": {"phase": "Running", "containerStatuses": [
            {"name": "trainer", "ready": True, "restartCount": 0, "image": "llmops:dev", "imageID": "",
             "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}]}}

    def kinds(self, namespace: str = "llmops") -> list[str]:
        """What a run left behind (claims are the cluster's own)."""
        return sorted(o["kind"] for (r, ns, _), o in self.objects.items()
                      if ns == namespace and r != "persistentvolumeclaims")


class Logs(dict):
    """Pod name -> its main container's log; each line is stamped (as the kubelet does) with the time the text
    was set, a microsecond apart to keep their order."""

    def __init__(self):
        super().__init__()
        self.written: dict[str, float] = {}

    def __setitem__(self, name: str, text: str) -> None:
        super().__setitem__(name, text)
        self.written[name] = time.time()

    def lines(self, name: str, *, since: float | None) -> list[tuple[str, str]]:
        """(RFC 3339 timestamp, line) of each line written within `since` seconds (all for None)."""
        t0, out = self.written.get(name, 0.0), []
        for i, line in enumerate(self.get(name, "").splitlines(keepends=True)):
            when = t0 + i * 1e-6
            if since is None or when >= time.time() - since:
                stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                out.append((f"{stamp}.{round(when % 1 * 1e9):09d}Z", line))
        return out


def node(name: str, **allocatable: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {}},
            "spec": {}, "status": {"allocatable": allocatable}}


def _merged(into: dict, fields: dict) -> dict:
    out = dict(into)
    for key, value in fields.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _matches(obj: dict, selector: str | None) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, code: int, body, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        return yaml.safe_load(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

    def do_GET(self):
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path in ("/version", "/version/"):  # the client asks for /version/
            return self._send(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "gitCommit": "fake",
                                    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                                    "goVersion": "go1.23", "compiler": "gc", "platform": "linux/amd64"})
        if url.path == "/api/v1/nodes":
            items = [n for n in self.cluster.nodes if _matches(n, query.get("labelSelector"))]
            return self._send(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": items})
        if m := re.match(r"^/api/v1/namespaces/([^/]+)$", url.path):
            if m.group(1) not in self.cluster.namespaces:
                return self._send(404, status(404, "NotFound", f'namespaces "{m.group(1)}" not found'))
            return self._send(200, {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": m.group(1)}})
        route = self._route(url.path)
        if route is None:
            return
        resource, ns, name, log = route
        if name is None:
            items = [o for (r, n, _), o in self.cluster.objects.items()
                     if r == resource and n == ns and _matches(o, query.get("labelSelector"))]
            if resource == "events":  # field selectors: only what the backend asks for
                items = [e for e in items if f"involvedObject.name={e['involvedObject']['name']}"
                         in query.get("fieldSelector", "")]
            kind = COLLECTIONS[resource][1] + "List"
            return self._send(200, {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                                    "items": items})
        obj = self.cluster.objects.get((resource, ns, name))
        if obj is None:
            return self._send(404, status(404, "NotFound", f'{resource} "{name}" not found'))
        if log:
            return self._log(name, query)
        return self._send(200, obj)

    def _log(self, name: str, query: dict) -> None:
        since = float(query["sinceSeconds"]) if "sinceSeconds" in query else None
        lines = self.cluster.logs.lines(name, since=since)
        body = "".join(f"{stamp} {line}" if query.get("timestamps") == "true" else line for stamp, line in lines)
        cuts = self.cluster.cut_follow.get(name)
        if query.get("follow") != "true" or not cuts:
            return self._send(200, body, "text/plain")
        # A stream broken mid-way (a proxy's timeout): the promised length, part of it, and the connection closed.
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:cuts.pop(0)])
        self.wfile.flush()
        self.close_connection = True

    def _route(self, path: str):
        m = ITEM.match(path)
        if not m:
            self._send(404, status(404, "NotFound", "the server could not find the requested resource"))
            return None
        _gv, ns, resource, name, log = m.groups()
        if resource not in COLLECTIONS or (resource in ("jobsets", "localqueues")
                                            and resource not in self.cluster.installed):
            self._send(404, status(404, "NotFound", "the server could not find the requested resource"))
            return None
        return resource, ns, name, log

    def do_PATCH(self):
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        route = self._route(url.path)
        if route is None:
            return
        resource, ns, name, _ = route
        if self.headers.get("Content-Type") != "application/apply-patch+yaml" or "fieldManager" not in query:
            return self._send(415, status(415, "UnsupportedMediaType", "only server-side apply is served here"))
        if query.get("force") != "true" or query.get("fieldValidation") != "Strict":
            return self._send(400, status(400, "BadRequest", "expected force=true and fieldValidation=Strict"))
        if ("create", resource) in self.cluster.denied:
            return self._send(403, status(403, "Forbidden", f'{resource} "{name}" is forbidden: User "me" cannot '
                                          f'create resource "{resource}" in the namespace "{ns}"'))
        if ns not in self.cluster.namespaces:
            return self._send(404, status(404, "NotFound", f'namespaces "{ns}" not found'))
        if resource in self.cluster.refuse:
            return self._send(*self.cluster.refuse[resource][:1], status(*self.cluster.refuse[resource]))
        self.cluster.applies.append((resource, query["fieldManager"]))
        body, key = self._body(), (resource, ns, name)
        owner = self.cluster.managers.setdefault(key, query["fieldManager"])
        if key in self.cluster.objects and owner != query["fieldManager"]:
            # Another manager applies only the fields it sets: they join the object (no conflicts here)
            body = _merged(self.cluster.objects[key], body)
        created = self.cluster.add(resource, name, body, ns)
        if resource in self.cluster.fail_after_create:  # as an answer lost to a timeout after the write
            return self._send(*self.cluster.fail_after_create[resource][:1],
                              status(*self.cluster.fail_after_create[resource]))
        self._send(200, created)

    def do_DELETE(self):
        route = self._route(urlparse(self.path).path)
        if route is None:
            return
        resource, ns, name, _ = route
        if resource in self.cluster.fail_delete:
            return self._send(*self.cluster.fail_delete[resource][:1], status(*self.cluster.fail_delete[resource]))
        obj = self.cluster.objects.pop((resource, ns, name), None)
        self.cluster.managers.pop((resource, ns, name), None)
        if obj is None:
            return self._send(404, status(404, "NotFound", f'{resource} "{name}" not found'))
        if resource == "jobs":  # the garbage collector removes the Job's pods (Background propagation)
            for key in [k for k, o in self.cluster.objects.items() if k[0] == "pods"
                        and (o["metadata"].get("labels") or {}).get("job-name") == name]:
                del self.cluster.objects[key]
        self._send(200, obj)

    def do_POST(self):
        if self.path.startswith("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"):
            review = self._body()
            attrs = review["spec"]["resourceAttributes"]
            resource = attrs["resource"] + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
            review["status"] = {"allowed": (attrs["verb"], resource) not in self.cluster.denied}
            return self._send(201, review)
        route = self._route(urlparse(self.path).path)
        if route is None:
            return
        resource, ns, name, _ = route
        if name is not None:
            return self._send(405, status(405, "MethodNotAllowed", "not served here"))
        body = self._body()  # a create: refused where the name is taken, whoever took it
        name = body["metadata"]["name"]
        if ("create", resource) in self.cluster.denied:
            return self._send(403, status(403, "Forbidden", f'{resource} "{name}" is forbidden: User "me" cannot '
                                          f'create resource "{resource}" in the namespace "{ns}"'))
        if (resource, ns, name) in self.cluster.objects:
            return self._send(409, status(409, "AlreadyExists", f'{resource} "{name}" already exists'))
        self.cluster.managers[(resource, ns, name)] = "create"
        self._send(201, self.cluster.add(resource, name, body, ns))


def write_kubeconfig(path: Path, server: str, context: str = "fake") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": context, "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": "me", "namespace": "llmops"}}],
    }))
    return path


def serve(cluster: FakeCluster) -> ThreadingHTTPServer:
    """Serve `cluster` on a free loopback port, from a daemon thread; sets ``cluster.url``."""
    handler = type("BoundHandler", (Handler,), {"cluster": cluster})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    cluster.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server
