"""The Kubernetes backend: a run as Kubernetes objects, driven through the official client.

``dry_run`` builds the objects (:mod:`~llmops.backends.k8s.objects`,
:mod:`~llmops.backends.k8s.jobs`) into a :class:`K8sRequest` that renders
them as YAML; ``submit`` checks the cluster first
(:mod:`~llmops.backends.k8s.preflight`) and applies them, deleting what it
created if one is refused (:mod:`~llmops.backends.k8s.api`); ``refresh``
and ``logs`` read the run back (:mod:`~llmops.backends.k8s.status`);
``cancel`` deletes the run's objects, so that its pods get SIGTERM and
checkpoint before they go.

The run directory on the laptop keeps the resolved spec (with the context
and namespace it was submitted to) and status.json; the one the pods use
lives on the cluster's shared volume at ``<k8s.mount_path>/runs/<run id>``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmops.backends.base import Backend, Request
from llmops.backends.k8s import rules
from llmops.backends.k8s.api import Cluster, ClusterError
from llmops.backends.k8s.jobs import JOBSET_API, Stage, indexed_jobs, jobset, stages_of
from llmops.backends.k8s.objects import (
    STAGE_LABEL,
    TTL_MANAGER,
    RunNames,
    config_map,
    headless_service,
    network_policy,
    secret,
)
from llmops.backends.k8s.spec import OPTIONS, K8sSpec, resolve
from llmops.errors import Problem
from llmops.runs.rundir import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, TERMINAL, RunDir
from llmops.spec.load import dump_spec
from llmops.spec.run import RunSpec


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the spec in the ConfigMap) as literal blocks, readable in a review."""


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text and all(line == line.rstrip() for line in text.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


@dataclass
class K8sRequest(Request):
    """The objects of one run and where they go."""

    names: RunNames
    context: str | None
    flavor: str
    stages: list[Stage]
    objects: list[dict]
    pvc: str
    queue: str | None
    node_selector: dict[str, str] = field(default_factory=dict)
    pod_resources: list[dict[str, str]] = field(default_factory=list)  # one pod of each stage

    def files(self) -> dict[str, str]:
        """One YAML file per object, in apply order, under manifests/ (apart from the run's spec.yaml)."""
        header = (f"# Rendered by llmops for run {self.names.run_id}. Apply the folder with\n"
                  f"#   kubectl apply --server-side --field-manager=llmops -f manifests/\n")
        return {f"manifests/{i:02d}-{o['kind'].lower()}-{o['metadata']['name']}.yaml":
                header + yaml.dump(o, Dumper=_Dumper, sort_keys=False) for i, o in enumerate(self.objects, 1)}


class K8sBackend(Backend):
    name = "k8s"
    section = K8sSpec
    options = OPTIONS

    def validate(self, spec: RunSpec) -> list[Problem]:
        k8s, profile, _ = resolve(spec)
        return rules.problems(spec, k8s, profile)

    def dry_run(self, spec: RunSpec, run_path: Path) -> K8sRequest:
        k8s, profile, env = resolve(spec)
        if k8s.context is None:  # the run stays on the cluster it went to, whatever the current context is later
            k8s = k8s.model_copy(update={"context": Cluster.current_context()})
        spec = spec.model_copy(update={"k8s": k8s})  # the profile's defaults, kept by the run directory
        run_id = run_path.name
        names = RunNames.of(run_id, k8s.namespace)
        common = dict(names=names, spec=spec, k8s=k8s, profile=profile, profile_env=env,
                      run_dir=f"{k8s.mount_path.rstrip('/')}/runs/{run_id}")
        objects = [config_map(names, dump_spec(spec)), network_policy(names)]
        if k8s.flavor == "jobset":
            objects.append(jobset(**common))
        else:
            objects.insert(1, headless_service(names, port=k8s.rendezvous_port))
            objects += indexed_jobs(**common)
        return K8sRequest(backend=self.name, spec=spec, run_path=run_path, names=names, context=k8s.context,
                          flavor=k8s.flavor, stages=stages_of(spec), objects=objects, pvc=k8s.checkpoint_pvc,
                          queue=k8s.queue,
                          node_selector=profile.node_selector, pod_resources=_stage_pods(objects))

    def submit(self, request: K8sRequest, run: RunDir) -> None:
        """Check, clear leftovers of an earlier attempt, apply (deleting what it applied if one is refused)."""
        from llmops.backends.k8s.preflight import preflight

        names, jobset_flavor = request.names, request.flavor == "jobset"
        cluster = Cluster.connect(context=request.context, namespace=names.namespace)
        notes = preflight(cluster, objects=request.objects, pvc=request.pvc, queue=request.queue,
                          node_selector=request.node_selector, pod_resources=request.pod_resources,
                          secrets=bool(request.secrets))
        # A resumed run applies its objects again: the old Jobs (finished or failed) must go first.
        if cluster.delete_run(names.selector, jobset=jobset_flavor) and not cluster.wait_gone(
                names.selector, jobset=jobset_flavor):
            raise ClusterError(f"the pods of an earlier attempt of {names.base} are still terminating",
                               "wait a minute and resume again")
        # The Secret first, so that no pod starts without it; it is created here only, never rendered.
        cluster.apply_all(([secret(names, request.secrets)] if request.secrets else []) + request.objects)
        where = f"namespace {names.namespace} on {cluster.where}"
        run.update_status(state=PENDING, job_id=f"{names.namespace}/{names.base}",
                                  message="; ".join([f"submitted to {where}", *notes]), ended_at=None)

    def _cluster(self, run: RunDir) -> tuple[Cluster, RunNames, RunSpec]:
        spec = run.read_spec()
        k8s = spec.k8s or K8sSpec()
        return (Cluster.connect(context=k8s.context, namespace=k8s.namespace),
                RunNames.of(run.id, k8s.namespace), spec)

    def refresh(self, run: RunDir) -> None:
        from llmops.backends.k8s.status import observe

        status = run.read_status()
        if status.state in TERMINAL or status.job_id is None:
            return
        cluster, names, spec = self._cluster(run)
        jobset_flavor = (spec.k8s or K8sSpec()).flavor == "jobset"
        if run.cancel_marker.exists():
            if not cluster.run_objects(names.selector, jobset=jobset_flavor) and not cluster.pods(names.selector):
                run.update_status(state=CANCELLED, message="cancelled by the user; its objects are deleted",
                                  ended_at=time.time())
            return
        seen = observe(cluster, names, stages_of(spec), jobset=jobset_flavor)
        if seen is None:
            run.update_status(state=FAILED, message="the run's objects are gone from the cluster (deleted "
                              "outside llmops)", ended_at=time.time())
            return
        changes: dict = {"state": seen.state, "message": seen.message, "restarts": seen.restarts,
                         **_stage_records(spec.stages, seen)}
        if seen.state == RUNNING and status.started_at is None:
            changes["started_at"] = time.time()
        if seen.state in (SUCCEEDED, FAILED):
            changes.update(ended_at=time.time(), exit_code=0 if seen.state == SUCCEEDED else 1)
        if seen.state == FAILED and seen.stage and not jobset_flavor:
            _stop_later_stages(cluster, names, stages_of(spec), seen.stage)
        run.update_status(**changes)
        ttl = (spec.k8s or K8sSpec()).ttl_after_finished
        if seen.state in (SUCCEEDED, FAILED) and ttl is not None:
            try:  # the outcome is recorded: the workload may go now
                _expire_after(cluster, names, ttl, jobset=jobset_flavor)
            except ClusterError as exc:
                run.update_status(message=f"{seen.message}; k8s.ttl_after_finished was not set on its finished "
                                  f"workload ({exc.message}): delete it with `llmops cancel` or kubectl")

    def logs(self, run: RunDir, *, follow: bool, stage: str = "pretrain", first_restart: int = 0) -> Iterator[str]:
        # The pods of the stage's current Job hold its logs: earlier attempts' pods are gone already.
        from llmops.backends.k8s.status import follow_logs, pod_log, stage_pods

        cluster, names, _ = self._cluster(run)
        if not follow:
            for pod in stage_pods(cluster, names, stage):
                yield from pod_log(cluster, pod)
            return

        def done() -> bool:
            self.refresh(run)
            return run.read_status().ended(stage)

        yield from follow_logs(cluster, names, stage, is_done=done)

    def cancel(self, run: RunDir, *, force: bool = False) -> None:
        """Delete the run's objects; the pods get SIGTERM (and checkpoint) unless forced."""
        if run.read_status().state in TERMINAL:
            return
        run.cancel_marker.touch()
        cluster, names, spec = self._cluster(run)
        cluster.delete_run(names.selector, jobset=(spec.k8s or K8sSpec()).flavor == "jobset",
                           grace=0 if force else None, secret=names.secret if spec.secrets else None)


def _stage_records(stages: list[str], seen) -> dict:
    """Status fields for the stages: those before the one observed have succeeded (they chain in order)."""
    if not seen.stage:
        return {}
    current = seen.stage.split("-", 1)[0] if seen.stage.startswith("prepare-") else seen.stage
    if current not in stages:
        return {}
    before = stages[:stages.index(current)]
    records = {s: {"state": SUCCEEDED} for s in before}
    records[current] = {"state": seen.state, "restarts": seen.restarts, "message": seen.message}
    return {"stage": current, "stages": records}


def _expire_after(cluster: Cluster, names: RunNames, ttl: int, *, jobset: bool) -> None:
    """Give the run's finished workloads that lack one the TTL of k8s.ttl_after_finished (the last stage's Job,
    or the JobSet: rendered without, so that the cluster keeps the outcome until llmops has seen it)."""
    if jobset:
        workloads = [(JOBSET_API, "JobSet", names.base)]
    else:
        workloads = [("batch/v1", "Job", job.metadata.name) for job in cluster.call(
            "listing Jobs", cluster.batch.list_namespaced_job, cluster.namespace, label_selector=names.selector).items
            if job.spec.ttl_seconds_after_finished is None]
    for api_version, kind, name in workloads:
        cluster.apply({"apiVersion": api_version, "kind": kind, "metadata": {"name": name},
                       "spec": {"ttlSecondsAfterFinished": ttl}}, manager=TTL_MANAGER)


def _stop_later_stages(cluster: Cluster, names: RunNames, stages: list[Stage], failed: str) -> None:
    """Pods of stages after a failed one would wait in `setup` until their timeout; delete them now."""
    order = [s.name for s in stages]
    later = order[order.index(failed) + 1:]
    for job in cluster.call("listing Jobs", cluster.batch.list_namespaced_job, cluster.namespace,
                            label_selector=names.selector).items:
        if job.metadata.labels.get(STAGE_LABEL) in later:
            cluster.delete("Job", job.metadata.name)


def _stage_pods(objects: list[dict]) -> list[dict[str, str]]:
    """The main container's limits of one pod of each stage, for the capacity check."""
    jobs = []
    for obj in objects:
        if obj["kind"] == "Job":
            jobs.append(obj)
        elif obj["kind"] == "JobSet":
            jobs += [r["template"] for r in obj["spec"]["replicatedJobs"]]
    return [job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] for job in jobs]


__all__ = ["K8sBackend", "K8sRequest"]
