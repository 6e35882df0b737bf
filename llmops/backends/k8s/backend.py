"""The Kubernetes backend: a run as Kubernetes objects, driven through the official client.

``dry_run`` builds the objects (:mod:`~llmops.backends.k8s.objects`,
:mod:`~llmops.backends.k8s.jobs`) into a :class:`K8sRequest` that renders
them as YAML; ``submit`` checks the cluster first
(:mod:`~llmops.backends.k8s.preflight`) and applies them, deleting what it
created if one is refused or the submit is interrupted; every object carries
a uid of the run's own, and llmops deletes only what carries it
(:mod:`~llmops.backends.k8s.record`). ``refresh`` and ``logs`` read the run
back (:mod:`~llmops.backends.k8s.status`), and once the run has ended
``refresh`` removes what it no longer needs; ``cancel`` deletes the run's
objects, so that its pods get SIGTERM and checkpoint before they go.

The run directory on the laptop keeps the resolved spec (with the context
and namespace it was submitted to) and status.json; the one the pods use
lives on the cluster's shared volume at ``<k8s.mount_path>/runs/<run id>``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from llmops.backends.base import Backend, Request
from llmops.backends.k8s import record, rules
from llmops.backends.k8s.api import Cluster, ClusterError
from llmops.backends.k8s.jobs import JOBSET_API, Stage, indexed_jobs, jobset, stages_of
from llmops.backends.k8s.objects import (
    OWNER_LABEL,
    STAGE_LABEL,
    TTL_MANAGER,
    RunNames,
    config_map,
    headless_service,
    network_policy,
    secret,
    stamped,
)
from llmops.backends.k8s.spec import OPTIONS, K8sProfile, K8sSpec, resolve
from llmops.backends.k8s.status import finished, follow_logs, observe, pod_log, stage_pods
from llmops.errors import Problem, UserError
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
    profile: K8sProfile = field(default_factory=K8sProfile)
    profile_env: dict[str, str] = field(default_factory=dict)  # kept in the run folder for a resume
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
        earlier = record.read(run_path)  # a resume builds from what was resolved at submit, never the profile again
        if earlier is None:
            k8s, profile, env = resolve(spec)
        else:
            k8s, profile, env = spec.k8s or K8sSpec(), K8sProfile.model_validate(earlier.profile), earlier.profile_env
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
                          queue=k8s.queue, profile=profile, profile_env=env,
                          node_selector=profile.node_selector, pod_resources=_stage_pods(objects))

    def submit(self, request: K8sRequest, run: RunDir) -> None:
        """Check, clear this run's objects of an earlier attempt, apply; an apply refused or interrupted takes
        back what this submit created (and nothing else)."""
        from llmops.backends.k8s.preflight import preflight

        earlier = record.read(run.path)
        names = replace(request.names, uid=earlier.uid if earlier else uuid.uuid4().hex)
        jobset_flavor = request.flavor == "jobset"
        cluster = Cluster.connect(context=request.context, namespace=names.namespace)
        notes = preflight(cluster, objects=request.objects, pvc=request.pvc, queue=request.queue,
                          node_selector=request.node_selector, pod_resources=request.pod_resources,
                          secrets=bool(request.secrets))
        _refuse_others(cluster, names, request.objects, jobset=jobset_flavor)
        # A resumed run applies its objects again: its old Jobs (finished or failed) must go first.
        if cluster.delete_run(names.selector, jobset=jobset_flavor) and not cluster.wait_gone(
                names.selector, jobset=jobset_flavor):
            raise ClusterError(f"the pods of an earlier attempt of {names.base} are still terminating",
                               "wait a minute and resume again")
        taken = cluster.existing(request.objects)
        if taken:
            raise ClusterError(f"{', '.join(taken)} exist(s) already in namespace {names.namespace}, and run "
                               f"{run.id} did not create them: llmops does not take over what is not its own",
                               "submit again for a new run id (or rename the spec), or delete them if they are "
                               "left-overs nobody needs", status=409)
        rec = record.Record(uid=names.uid, profile=request.profile.model_dump(), profile_env=request.profile_env,
                            secret=bool(earlier and earlier.secret))
        record.write(run.path, rec)
        where = f"namespace {names.namespace} on {cluster.where}"
        run.update_status(state=PENDING, backend=self.name, job_id=f"{names.namespace}/{names.base}",
                          message=f"submitting to {where}", ended_at=None)
        try:
            _apply(cluster, names, request, run, rec)
        except BaseException as exc:
            _take_back(cluster, names, run, rec, jobset=jobset_flavor, interrupted=not isinstance(exc, UserError))
            raise
        run.update_status(message="; ".join([f"submitted to {where}", *notes]))

    def _cluster(self, run: RunDir) -> tuple[Cluster, RunNames, RunSpec, record.Record | None]:
        spec, rec = run.read_spec(), record.read(run.path)
        k8s = spec.k8s or K8sSpec()
        return (Cluster.connect(context=k8s.context, namespace=k8s.namespace),
                RunNames.of(run.id, k8s.namespace, uid=rec.uid if rec else None), spec, rec)

    def refresh(self, run: RunDir) -> None:
        status, rec = run.read_status(), record.read(run.path)
        # An unfinished submit stays watched when it reads as ended: an apply under way on the API server when
        # the submit was interrupted may land after the submit took back what it had created.
        unfinished = rec is not None and not rec.applied
        if status.state in TERMINAL and not unfinished or status.job_id is None and rec is None:
            return  # ended, or nothing submitted yet
        cluster, names, spec, rec = self._cluster(run)
        jobset_flavor = (spec.k8s or K8sSpec()).flavor == "jobset"
        known = {"backend": self.name, "job_id": f"{names.namespace}/{names.base}"}  # also where status.json was lost
        cancelling = run.cancel_marker.exists()
        if unfinished and (status.state in TERMINAL or not cancelling):
            left = cluster.run_objects(names.selector, jobset=jobset_flavor) + cluster.pods(names.selector)
            if status.state not in TERMINAL or left:
                run.update_status(**known, state=PENDING, ended_at=None, message=(
                    f"its submit did not finish (interrupted, or still under way; {len(left)} of its objects and "
                    f"pods are on the cluster): if no `llmops submit` or `llmops resume` of it runs, `llmops cancel "
                    f"{run.id}` deletes them and `llmops resume {run.id}` submits it again"))
            return
        seen = observe(cluster, names, stages_of(spec), jobset=jobset_flavor)
        if cancelling and (seen is None or seen.state not in (SUCCEEDED, FAILED)):
            _refresh_cancelled(cluster, names, run, rec, seen, known, jobset=jobset_flavor)
            return
        if seen is None:
            run.update_status(**known, state=FAILED, message="the run's objects are gone from the cluster (deleted "
                              "outside llmops)", ended_at=time.time())
            return
        changes: dict = {**known, "state": seen.state, "message": seen.message, "restarts": seen.restarts,
                         **_stage_records(spec.stages, seen)}
        if seen.state == RUNNING and status.started_at is None:
            changes["started_at"] = time.time()
        ended = seen.state in (SUCCEEDED, FAILED)
        if ended:
            changes.update(ended_at=time.time(), exit_code=0 if seen.state == SUCCEEDED else 1)
        if seen.state == FAILED and seen.stage and not jobset_flavor:
            _stop_later_stages(cluster, names, stages_of(spec), seen.stage)
        run.update_status(**changes)
        # The outcome is recorded: what the run no longer needs may go now.
        notes = [_release(cluster, names, run, rec, spec, jobset=jobset_flavor)] if ended else []
        ttl = (spec.k8s or K8sSpec()).ttl_after_finished
        if ttl is not None:
            notes.append(_expire_seen(cluster, names, ttl, jobset=jobset_flavor, ended=ended, run=run))
        if any(notes):
            run.update_status(message="; ".join([seen.message, *filter(None, notes)]))

    def logs(self, run: RunDir, *, follow: bool, stage: str = "pretrain", first_restart: int = 0) -> Iterator[str]:
        # The pods of the stage's current Job hold its logs: earlier attempts' pods are gone already.
        cluster, names, _, _ = self._cluster(run)
        if not follow:
            for pod in stage_pods(cluster, names, stage):
                yield from pod_log(cluster, pod)
            return

        def done() -> bool:
            self.refresh(run)
            return run.read_status().ended(stage)

        yield from follow_logs(cluster, names, stage, is_done=done)

    def cancel(self, run: RunDir, *, force: bool = False) -> None:
        """Delete the run's objects; the pods get SIGTERM (and checkpoint) unless forced. A finished run keeps
        its outcome and loses what it left on the cluster. A cancel that does not reach every object says so;
        running it again finishes it (status meanwhile reports what the cluster shows)."""
        status = run.read_status()
        if status.state not in TERMINAL:
            run.cancel_marker.touch()
        cluster, names, spec, rec = self._cluster(run)
        secret = rec.secret if rec else bool(spec.secrets)
        try:
            deleted = cluster.delete_run(names.selector, jobset=(spec.k8s or K8sSpec()).flavor == "jobset",
                                         grace=0 if force else None, secret=names.secret if secret else None)
        except ClusterError as exc:
            raise ClusterError(f"the cancel of run {run.id} did not reach all of its objects: {exc.message}",
                               f"run `llmops cancel {run.id}` again once the cluster answers; until then `llmops "
                               f"status {run.id}` shows what the cluster says", status=exc.status) from None
        _forget_secret(run, rec)
        if status.state in TERMINAL and (deleted or secret):
            run.update_status(message=f"{status.message}; its objects are deleted (llmops cancel)")


def _refuse_others(cluster: Cluster, names: RunNames, objects: list[dict], *, jobset: bool) -> None:
    """Objects named for this run that this run did not create: another run's whose id gives the same names
    (the same spec submitted in the same second elsewhere; `7b-sft` beside `r7b-sft`)."""
    ours = set(cluster.run_objects(names.selector, jobset=jobset))
    others = [f"{kind} {name}" for kind, name in cluster.run_objects(names.run_selector, jobset=jobset)
              if (kind, name) not in ours]
    ours_pods = {p.metadata.name for p in cluster.pods(names.selector)}
    others += [f"Pod {p.metadata.name}" for p in cluster.pods(names.run_selector) if p.metadata.name not in ours_pods]
    if others:
        raise ClusterError(f"{', '.join(others)} in namespace {names.namespace} carry the label "
                           f"{names.run_selector} but not run {names.run_id}'s uid ({OWNER_LABEL}={names.uid}): they "
                           "are another run's, whose id gives the same names, or were made by an llmops before "
                           f"{OWNER_LABEL}", "submit again in a moment for a new run id, or rename the spec (a name "
                           "that starts with a letter never meets one that starts with a digit); if they are this "
                           "run's, delete them: `kubectl delete jobs,services,configmaps,networkpolicies -n "
                           f"{names.namespace} -l {names.run_selector}`", status=409)


def _apply(cluster: Cluster, names: RunNames, request: K8sRequest, run: RunDir, rec: record.Record) -> None:
    """The Secret first, so that no pod starts without it (created here only, never rendered), then the
    objects, each carrying the run's uid, in order."""
    if request.secrets:
        try:
            cluster.create(stamped([secret(names, request.secrets)], names.uid)[0])
        except ClusterError as exc:
            if exc.status != 409:
                raise
            raise ClusterError(f"a Secret {names.secret} exists already in namespace {names.namespace}, and this "
                               f"submit did not create it", "submit again for a new run id, or delete it if it is a "
                               "left-over nobody needs", status=409) from None
        rec.secret = True
        record.write(run.path, rec)
    for obj in stamped(request.objects, names.uid):
        cluster.apply(obj)
    rec.applied = True
    record.write(run.path, rec)


def _take_back(cluster: Cluster, names: RunNames, run: RunDir, rec: record.Record, *, jobset: bool,
               interrupted: bool) -> None:
    """Delete what this submit created (found by the run's uid, so an apply whose answer was lost is found too,
    and nothing of anyone else's). An interrupted submit leaves a run folder that says what happened."""
    try:
        cluster.delete_run(names.selector, jobset=jobset, grace=0, secret=names.secret if rec.secret else None)
    except (ClusterError, KeyboardInterrupt) as exc:
        if interrupted:  # status then reads the record: an unfinished submit, which `llmops cancel` takes back
            why = exc.message if isinstance(exc, ClusterError) else "interrupted again"
            run.update_status(message=f"the submit was interrupted, and what it had created could not be deleted "
                              f"({why}): `llmops cancel {run.id}` deletes it")
        return
    _forget_secret(run, rec)
    if interrupted:
        run.update_status(state=CANCELLED, ended_at=time.time(), message=(
            f"the submit was interrupted before it finished; what it had created is deleted again: `llmops resume "
            f"{run.id}` submits it again"))


def _forget_secret(run: RunDir, rec: record.Record | None) -> None:
    if rec is not None and rec.secret:
        rec.secret = False
        record.write(run.path, rec)


def _refresh_cancelled(cluster: Cluster, names: RunNames, run: RunDir, rec: record.Record | None, seen, known: dict,
                       *, jobset: bool) -> None:
    """A cancel was asked for. What the cluster shows is what status says: a workload still there (the cancel
    did not reach it), pods still stopping, or the run gone, with anything the cancel could not delete named."""
    if seen is not None:
        run.update_status(**known, state=seen.state, restarts=seen.restarts, message=(
            f"{seen.message}; a cancel was asked for, but the run's workload is still there: run `llmops cancel "
            f"{run.id}` again"))
        return
    pods = cluster.pods(names.selector)
    if pods:
        run.update_status(**known, message=f"cancelling: {len(pods)} pod(s) still stopping")
        return
    left = [f"{kind} {name}" for kind, name in cluster.run_objects(names.selector, jobset=jobset)]
    left += [f"Secret {names.secret}"] if rec is not None and rec.secret else []
    message = "cancelled by the user; " + (f"left on the cluster: {', '.join(left)} (`llmops cancel {run.id}` "
                                           "deletes them)" if left else "its objects are deleted")
    run.update_status(**known, state=CANCELLED, message=message, ended_at=time.time())


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


def _release(cluster: Cluster, names: RunNames, run: RunDir, rec: record.Record | None, spec: RunSpec, *,
             jobset: bool) -> str | None:
    """Delete what a finished run no longer needs: its Secret (the tokens), ConfigMap, Service and NetworkPolicy.
    Its workload stays, so that `llmops logs` reads its pods, until k8s.ttl_after_finished or `llmops cancel`.
    A note for status's message when some of it could not be deleted."""
    secret = rec.secret if rec else bool(spec.secrets)
    try:
        for kind, name in cluster.run_objects(names.selector, jobset=jobset):
            if kind not in ("Job", "JobSet"):
                cluster.delete(kind, name)
        if secret:
            cluster.delete("Secret", names.secret)
    except ClusterError as exc:
        return (f"its {'Secret, ' if secret else ''}ConfigMap, Service and NetworkPolicy were not all deleted "
                f"({exc.message}): `llmops cancel {run.id}` deletes them")
    _forget_secret(run, rec)
    return None


def _expire_seen(cluster: Cluster, names: RunNames, ttl: int, *, jobset: bool, ended: bool, run: RunDir) -> str | None:
    """Give k8s.ttl_after_finished to the run's workloads whose end llmops has now seen and recorded: each
    finished Job, or the JobSet once the run ended. Rendered without: a workload removed unseen takes its
    outcome with it (a failed stage would read as finished). A note for status's message when it failed."""
    if jobset:
        workloads = [(JOBSET_API, "JobSet", names.base)] if ended else []
    else:
        workloads = [("batch/v1", "Job", job.metadata.name) for job in cluster.call(
            "listing Jobs", cluster.batch.list_namespaced_job, cluster.namespace, label_selector=names.selector).items
            if job.spec.ttl_seconds_after_finished is None and finished(job)]
    try:
        for api_version, kind, name in workloads:
            cluster.apply({"apiVersion": api_version, "kind": kind, "metadata": {"name": name},
                           "spec": {"ttlSecondsAfterFinished": ttl}}, manager=TTL_MANAGER)
    except ClusterError as exc:
        return (f"k8s.ttl_after_finished was not set on its finished workload ({exc.message}): `llmops status "
                f"{run.id}` tries again while the run is on, `llmops cancel {run.id}` deletes it")
    return None


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
