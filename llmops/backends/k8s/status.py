"""Reading a run back from the cluster: its state for status.json, and its pods' logs.

The state comes from the workload's conditions (Job ``Complete``/``Failed``,
JobSet ``Completed``/``Failed``), and while a stage runs, from its pods:
phases, the scheduler's ``PodScheduled`` message (``Insufficient
nvidia.com/gpu``), container waiting reasons (``ImagePullBackOff``), the
setup container waiting for the previous stage, and the workload's warning
events (``FailedCreate`` when a quota or admission policy refuses pods).
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kubernetes import client as k
from urllib3.exceptions import HTTPError

from llmops.backends.k8s.api import JOBSET, Cluster, ClusterError
from llmops.backends.k8s.jobs import Stage
from llmops.backends.k8s.objects import (
    INDEX_FAILURES,
    INDEX_IGNORED_FAILURES,
    JOBSET_RESTART,
    MAIN_CONTAINER,
    STAGE_LABEL,
    RunNames,
)
from llmops.runs.rundir import FAILED, PENDING, RUNNING, SUCCEEDED

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# Connect within 5 s; a followed log may stay quiet for long (a checkpoint, a slow step), so wait days.
FOLLOW_TIMEOUT = (5, 7 * 86400)


@dataclass
class Observed:
    """What the cluster says about a run, in status.json's terms."""

    state: str
    message: str
    restarts: int = 0
    stage: str | None = None  # the stage the state is about (the failed one, for FAILED)


def _true(conditions, kind: str):
    return next((c for c in conditions or [] if c.get("type") == kind and c.get("status") == "True"), None)


def _conditions(job: k.V1Job) -> list[dict]:
    return [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
            for c in (job.status.conditions if job.status else None) or []]


def finished(job: k.V1Job) -> bool:
    conds = _conditions(job)
    return bool(_true(conds, "Complete") or _true(conds, "Failed"))


def _count(value: str | None) -> int:
    """A counter from a pod's labels or annotations; 0 when it is not a plain number (anyone who may edit pods
    may write anything there, and status must still answer)."""
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10 else 0


def restart_of(pod: k.V1Pod) -> int:
    """The attempt a pod belongs to, from the counters the Job controller or JobSet put on it."""
    ann, labels = pod.metadata.annotations or {}, pod.metadata.labels or {}
    return (_count(ann.get(INDEX_FAILURES)) + _count(ann.get(INDEX_IGNORED_FAILURES))
            + _count(labels.get(JOBSET_RESTART)))


def index_of(pod: k.V1Pod) -> int:
    return _count((pod.metadata.annotations or {}).get(COMPLETION_INDEX))


def observe(cluster: Cluster, names: RunNames, stages: list[Stage], *, jobset: bool) -> Observed | None:
    """The run's state, or None when none of its workload objects exist any more."""
    pods = cluster.pods(names.selector)
    restarts = max((restart_of(p) for p in pods), default=0)
    if jobset:
        return _observe_jobset(cluster, names, stages, pods)
    jobs = {j.metadata.labels.get(STAGE_LABEL): j for j in cluster.call(
        "listing Jobs", cluster.batch.list_namespaced_job, cluster.namespace, label_selector=names.selector).items}
    if not jobs:
        return None
    for i, stage in enumerate(stages):
        job = jobs.get(stage.name)
        if job is None:
            # Stages run in order: one whose Job is gone while a later stage's Job exists finished, was seen to by
            # llmops and then removed by k8s.ttl_after_finished, which llmops gives a Job only once it has seen
            # it end (K8sBackend.refresh): a failed one makes the run FAILED first.
            if any(later.name in jobs for later in stages[i + 1:]):
                continue
            return Observed(FAILED, f"the Job of stage '{stage.name}' is gone (deleted outside llmops)", restarts)
        conds = _conditions(job)
        failed = _true(conds, "Failed")
        if failed:
            return Observed(FAILED, f"stage '{stage.name}' failed ({failed['reason']}): {failed['message']}",
                            restarts, stage=stage.name)
        if not _true(conds, "Complete"):
            suspended = bool(job.spec.suspend)
            return _active(cluster, stage, [p for p in pods if _stage(p) == stage.name], job.metadata.name,
                           restarts, suspended=suspended)
    return Observed(SUCCEEDED, "finished", restarts)


def _stage(pod: k.V1Pod) -> str | None:
    return (pod.metadata.labels or {}).get(STAGE_LABEL)


def _observe_jobset(cluster: Cluster, names: RunNames, stages: list[Stage], pods: list[k.V1Pod]) -> Observed | None:
    group, version, plural = JOBSET
    try:
        js = cluster.call("reading the JobSet", cluster.custom.get_namespaced_custom_object, group, version,
                          cluster.namespace, plural, names.base)
    except ClusterError as exc:
        if exc.status == 404:
            return None
        raise
    status = js.get("status") or {}
    restarts = int(status.get("restarts") or 0)
    if _true(status.get("conditions"), "Completed"):
        return Observed(SUCCEEDED, "finished", restarts)
    failed = _true(status.get("conditions"), "Failed")
    if failed:
        return Observed(FAILED, f"JobSet failed ({failed.get('reason')}): {failed.get('message')}", restarts)
    done = {r["name"] for r in status.get("replicatedJobsStatus") or [] if r.get("succeeded", 0) >= 1}
    stage = next((s for s in stages if s.name not in done), stages[-1])
    return _active(cluster, stage, [p for p in pods if _stage(p) == stage.name], names.base, restarts,
                   suspended=bool(js.get("spec", {}).get("suspend")))


def _active(cluster: Cluster, stage: Stage, pods: list[k.V1Pod], owner: str, restarts: int, *,
            suspended: bool) -> Observed:
    """A stage that has not ended: running when all its pods run their main container."""
    if suspended:
        return Observed(PENDING, f"stage '{stage.name}': waiting for Kueue to admit the workload", restarts)
    live = [p for p in pods if p.status and p.status.phase in ("Pending", "Running")
            and not p.metadata.deletion_timestamp]
    running = [p for p in live if _main_running(p)]
    if len(running) >= stage.indexes:
        return Observed(RUNNING, f"stage '{stage.name}': {len(running)}/{stage.indexes} pod(s) running", restarts)
    replaced = {index_of(p) for p in live}
    reasons = sorted({r for p in pods if (r := _waiting_reason(p, replaced=index_of(p) in replaced))})
    if not reasons:
        reasons = [_latest_warning(cluster, owner) or ("waiting for the Job controller to create pods" if not live
                                                       else "waiting for the pods to start their main container")]
    state = RUNNING if running else PENDING
    return Observed(state, f"stage '{stage.name}': {len(running)}/{stage.indexes} pod(s) running; "
                    + "; ".join(reasons), restarts)


def _main_running(pod: k.V1Pod) -> bool:
    return any(s.name == MAIN_CONTAINER and s.state and s.state.running for s in pod.status.container_statuses or [])


def _waiting_reason(pod: k.V1Pod, *, replaced: bool) -> str | None:
    """Why a pod of a stage that has not started keeps it waiting; `replaced`: a live pod has its index."""
    if not pod.status:
        return None
    node = f"node {index_of(pod)}"
    if pod.metadata.deletion_timestamp and pod.status.phase in ("Pending", "Running"):
        # Its replacement starts only once it is gone (podReplacementPolicy: Failed); on a lost node that is
        # when the node is back or the pod is force-deleted.
        return f"{node}: terminating since {pod.metadata.deletion_timestamp.isoformat()}; its replacement waits"
    if pod.status.phase == "Failed" and not replaced:
        why = ": ".join(filter(None, [pod.status.reason, pod.status.message]))
        return f"{node}: its pod failed{f' ({why})' if why else ''}, no replacement yet"
    if pod.status.phase not in ("Pending", "Running"):
        return None
    for cond in pod.status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False":
            return f"unschedulable: {cond.message}"
    for s in (pod.status.init_container_statuses or []):
        if s.state and s.state.running and s.name == "setup":
            return "waiting for the previous stage (setup container)"
    for s in (pod.status.init_container_statuses or []) + (pod.status.container_statuses or []):
        w = s.state.waiting if s.state else None
        if w and w.reason not in (None, "PodInitializing", "ContainerCreating"):
            return f"{s.name}: {w.reason}" + (f" ({w.message})" if w.message else "")
    return None


def _latest_warning(cluster: Cluster, name: str) -> str | None:
    events = cluster.call("reading events", cluster.core.list_namespaced_event, cluster.namespace,
                          field_selector=f"involvedObject.name={name},type=Warning").items
    if not events:
        return None
    last = max(events, key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
    return f"{last.reason}: {last.message}"


# ---- logs -----------------------------------------------------------------------------------
def _prefixed(pod: k.V1Pod, line: str) -> str:
    # `[node<i>]:` keeps the trainer's step lines parseable (llmops.runner.STEP_LINE allows one prefix).
    return f"[node{index_of(pod)}]:{line}"


def pod_log(cluster: Cluster, pod: k.V1Pod) -> list[str]:
    """The whole log of a pod's main container; empty when it never started."""
    try:
        text = cluster.call(f"reading the log of {pod.metadata.name}", cluster.core.read_namespaced_pod_log,
                            pod.metadata.name, cluster.namespace, container=MAIN_CONTAINER)
    except ClusterError as exc:
        if exc.status in (400, 404):  # not started yet, or gone
            return []
        raise
    return [_prefixed(pod, line) for line in (text or "").splitlines()]


def stage_pods(cluster: Cluster, names: RunNames, stage: str) -> list[k.V1Pod]:
    pods = [p for p in cluster.pods(names.selector) if _stage(p) == stage]
    return sorted(pods, key=lambda p: (restart_of(p), index_of(p), p.metadata.creation_timestamp))


def follow_logs(cluster: Cluster, names: RunNames, stage: str, *, is_done: Callable[[], bool],
                poll: float = 2.0) -> Iterator[str]:
    """Every pod's log as it is written, replacement pods included, until the run ends."""
    lines: queue.Queue[str | None] = queue.Queue()
    started: dict[str, threading.Thread] = {}
    while True:
        for pod in stage_pods(cluster, names, stage):
            if pod.metadata.uid not in started and _main_started(pod):
                t = threading.Thread(target=_stream, args=(cluster, pod, lines), daemon=True)
                started[pod.metadata.uid] = t
                t.start()
        deadline = time.monotonic() + poll
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is not None:
                yield line
        if is_done() and not any(t.is_alive() for t in started.values()):
            while not lines.empty():
                if (line := lines.get()) is not None:
                    yield line
            return


def _main_started(pod: k.V1Pod) -> bool:
    return any(s.name == MAIN_CONTAINER and s.state and (s.state.running or s.state.terminated)
               for s in (pod.status.container_statuses if pod.status else None) or [])


def _stream(cluster: Cluster, pod: k.V1Pod, out: queue.Queue) -> None:
    """Follow one pod's log into `out`. A stream cut before the log ended (a proxy's idle timeout, a dropped
    connection) is opened again from a little before where it broke (the API takes `sinceSeconds`, measured here
    from the last line received, so no two clocks are compared); the kubelet's timestamp on each line says which
    lines were shown already, so none is lost or shown twice."""
    shown = _Shown()
    cuts = 0  # in a row, without a new line between them
    try:
        while True:
            since = None if shown.last is None else int(time.monotonic() - shown.received) + RESUME_MARGIN
            shown.reopened()
            resp = cluster.call(f"following the log of {pod.metadata.name}", cluster.core.read_namespaced_pod_log,
                                pod.metadata.name, cluster.namespace, container=MAIN_CONTAINER, follow=True,
                                timestamps=True, since_seconds=since, _preload_content=False, timeout=FOLLOW_TIMEOUT)
            pending, before = b"", shown.count
            try:
                for chunk in resp.stream(4096):
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for raw in complete:
                        shown.put(pod, raw, out)
            except (HTTPError, OSError) as exc:  # cut: the partial line comes again whole
                cuts = 0 if shown.count > before else cuts + 1
                if cuts >= MAX_CUTS:
                    out.put(_prefixed(pod, f"[llmops] the log stream of pod {pod.metadata.name} broke {cuts} times "
                                           f"in a row ({exc}); the rest is in `llmops logs` once it ends"))
                    return
                time.sleep(1.0)
                continue
            if pending:
                shown.put(pod, pending, out)
            return
    except ClusterError:
        pass  # the pod went away; its replacement gets its own stream
    finally:
        out.put(None)


RESUME_MARGIN = 10  # seconds more than since the last line, for the time lines take to arrive
MAX_CUTS = 5
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z")


class _Shown:
    """Where a followed log has got to: the last line's timestamp and how many lines of that instant were shown."""

    def __init__(self):
        self.last: tuple[str, str] | None = None
        self.at_last = 0
        self.skip = 0  # lines of the `last` instant still to pass over in a stream opened again
        self.count = 0
        self.received = time.monotonic()

    def put(self, pod: k.V1Pod, raw: bytes, out: queue.Queue) -> None:
        stamp, _, text = raw.decode(errors="replace").partition(" ")
        m = _STAMP.fullmatch(stamp)
        if m is None:  # no timestamp: nothing to compare, so show it
            return self._show(pod, raw.decode(errors="replace"), out)
        when = (m[1], (m[2] or "").ljust(9, "0"))
        if self.last is not None and when < self.last:
            return None
        if when == self.last:
            if self.skip:
                self.skip -= 1
                return None
            self.at_last += 1
        else:
            self.last, self.at_last, self.skip = when, 1, 0
        self._show(pod, text, out)

    def _show(self, pod: k.V1Pod, text: str, out: queue.Queue) -> None:
        out.put(_prefixed(pod, text))
        self.count += 1
        self.received = time.monotonic()

    def reopened(self) -> None:
        self.skip = self.at_last
