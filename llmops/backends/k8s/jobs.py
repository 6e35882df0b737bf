"""The workload objects of a run: one Indexed Job per stage, or one JobSet.

Failure handling is the point of this module. In both flavours a training
process exits 0 (done), 75 (it checkpointed after SIGTERM: requeue it),
2 (bad input: retrying cannot help) or anything else (a crash).

indexed-job (no CRD needed)
    ``completionMode: Indexed`` with one index per node. ``podFailurePolicy``
    fails the Job at once on exit code 2, and ignores exit code 75 and pods
    disrupted by the cluster (``DisruptionTarget``: preemption, eviction,
    node drain), so those pods are replaced without spending a retry; other
    failures count against ``backoffLimitPerIndex`` = ``restarts.max_restarts``
    (``maxFailedIndexes: 0`` fails the Job as soon as one index runs out).
    ``podReplacementPolicy: Failed`` starts a replacement only after the old
    pod has stopped, so two pods never claim one node rank. The surviving
    torchrun agents see the replacement join and restart their workers,
    which resume from the latest complete checkpoint.

jobset (JobSet v0.10+)
    Each stage is a replicated Job with ``backoffLimit: 0`` whose
    ``podFailurePolicy`` fails it on 2, 75 or disruption; the JobSet's
    ``failurePolicy`` then fails everything on exit code 2, restarts the
    whole gang without counting on 75 or disruption, and otherwise restarts
    it up to ``maxRestarts``. Stages chain with ``dependsOn``.

A named Kueue queue adds the ``kueue.x-k8s.io/queue-name`` label and creates
the workload suspended, so Kueue admits all of its pods at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes import client as k

from llmops.backends.k8s.objects import (
    INDEX_FAILURES,
    INDEX_IGNORED_FAILURES,
    JOBSET_RESTART,
    KUEUE_QUEUE_LABEL,
    PodPlan,
    RunNames,
    field_env,
    pod_template,
    to_dict,
)
from llmops.backends.k8s.spec import K8sProfile, K8sSpec
from llmops.errors import EXIT_BAD_INPUT, EXIT_REQUEUE, UserError

JOBSET_API = "jobset.x-k8s.io/v1alpha2"


@dataclass(frozen=True)
class Stage:
    """One Job of a run: `indexes` pods that run either a torchrun gang or independent shards.

    kind "torchrun": the pods form one training job (a node each, gang restarts).
    kind "prepare": each pod runs shard <index> of one data-preparation phase on its own.
    """

    name: str
    indexes: int
    procs_per_node: int
    gpus_per_node: int
    kind: str = "torchrun"
    phase: str | None = None
    shards: int = 0  # the map phases' shard count, which every phase of the stage passes on


def stages_of(spec) -> list[Stage]:
    """The run's Jobs in the order they run (spec.stages; data preparation becomes one Job per phase)."""
    out = []
    for name in spec.stages:
        if name == "prepare":
            out += _prepare_stages(spec)
        else:  # pretrain and the align stages: torchrun over the run's nodes
            res = spec.resources
            out.append(Stage(name=name, indexes=res.nodes, procs_per_node=res.procs_per_node,
                             gpus_per_node=0 if res.cpu else (res.gpus_per_node or 0)))
    return out


def _prepare_stages(spec) -> list[Stage]:
    """`llmops prepare --phase P --shard I --num-shards N`: a map phase is an Indexed Job of N pods, a
    reduce phase one pod; each phase starts when the one before it has finished on every shard."""
    from llmops.prepare.pipeline import MAP_PHASES, PHASES

    shards = spec.prepare.num_shards or (spec.k8s or K8sSpec()).prepare_shards
    return [Stage(name=f"prepare-{phase}", indexes=shards if phase in MAP_PHASES else 1, procs_per_node=1,
                  gpus_per_node=0, kind="prepare", phase=phase, shards=shards) for phase in PHASES]


def _exit_codes(action: str, codes: list[int]) -> k.V1PodFailurePolicyRule:
    # No containerName: the rule covers the setup init container too (it exits 2 when an
    # earlier stage failed).
    return k.V1PodFailurePolicyRule(action=action, on_exit_codes=k.V1PodFailurePolicyOnExitCodesRequirement(
        operator="In", values=codes))


def _disruption(action: str) -> k.V1PodFailurePolicyRule:
    return k.V1PodFailurePolicyRule(action=action, on_pod_conditions=[
        k.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")])


def _plan(*, names: RunNames, spec, k8s: K8sSpec, profile: K8sProfile, profile_env: dict[str, str],
          run_dir: str, stage: Stage, previous: Stage | None, jobset: bool) -> PodPlan:
    # The pods' hostnames: a DNS label, 63 characters at most (the API refuses a longer one, and the stage would
    # wait for pods that are never created).
    job = f"{names.base}-{stage.name}-0" if jobset else names.job(stage.name)
    last = f"{job}-{stage.indexes - 1}"
    if len(last) > 63:
        raise UserError(f"stage {stage.name}'s {stage.indexes} pods would be named up to {last!r} "
                        f"({len(last)} characters), and Kubernetes allows 63 in a pod's hostname",
                        "use a shorter spec name (it begins the run id that names the pods), fewer pods "
                        "(prepare.num_shards, resources.nodes) or k8s.flavor: indexed-job")
    if jobset:
        # JobSet names pods <jobset>-<replicated job>-<job index>-<pod index> under subdomain <jobset>.
        rdzv_host = f"{names.base}-{stage.name}-0-0.{names.base}"
        flavor_env = [field_env("LLMOPS_JOBSET_RESTART", f"metadata.labels['{JOBSET_RESTART}']")]
    else:
        rdzv_host = f"{names.job(stage.name)}-0.{names.base}"
        flavor_env = [field_env("LLMOPS_INDEX_FAILURES", f"metadata.annotations['{INDEX_FAILURES}']"),
                      field_env("LLMOPS_INDEX_IGNORED_FAILURES", f"metadata.annotations['{INDEX_IGNORED_FAILURES}']")]
    return PodPlan(
        names=names, stage=stage.name, kind=stage.kind, phase=stage.phase, shards=stage.shards,
        k8s=k8s, profile=profile, profile_env=profile_env, run_dir=run_dir,
        nnodes=stage.indexes, procs_per_node=stage.procs_per_node, gpus_per_node=stage.gpus_per_node,
        max_restarts=spec.restarts.max_restarts, rdzv_host=rdzv_host,
        after=f"{previous.name}:{previous.indexes}" if previous else "", flavor_env=flavor_env,
        subdomain=None if jobset else names.base, secrets=sorted(spec.secrets),
    )


def _queue(k8s: K8sSpec) -> dict[str, str]:
    return {KUEUE_QUEUE_LABEL: k8s.queue} if k8s.queue else {}


def indexed_jobs(*, names: RunNames, spec, k8s: K8sSpec, profile: K8sProfile, profile_env: dict[str, str],
                 run_dir: str) -> list[dict]:
    """One Indexed Job per stage; a later stage's pods wait in `setup` for the previous one's markers."""
    out, previous = [], None
    for stage in stages_of(spec):
        plan = _plan(names=names, spec=spec, k8s=k8s, profile=profile, profile_env=profile_env,
                     run_dir=run_dir, stage=stage, previous=previous, jobset=False)
        job_spec = k.V1JobSpec(
            completion_mode="Indexed", completions=stage.indexes, parallelism=stage.indexes,
            backoff_limit_per_index=spec.restarts.max_restarts, max_failed_indexes=0,
            pod_replacement_policy="Failed",
            pod_failure_policy=k.V1PodFailurePolicy(rules=[
                _exit_codes("FailJob", [EXIT_BAD_INPUT]), _exit_codes("Ignore", [EXIT_REQUEUE]),
                _disruption("Ignore"),
            ]),
            suspend=True if k8s.queue else None,  # Kueue un-suspends it on admission
            # No ttlSecondsAfterFinished: a Job removed before llmops has seen its end takes its outcome with
            # it (a failed stage would read as finished); K8sBackend.refresh gives it k8s.ttl_after_finished then.
            template=pod_template(plan),
        )
        out.append(to_dict(k.V1Job(api_version="batch/v1", kind="Job", spec=job_spec,
                                   metadata=names.metadata(names.job(stage.name), stage=stage.name,
                                                           extra=_queue(k8s)))))
        previous = stage
    return out


def jobset(*, names: RunNames, spec, k8s: K8sSpec, profile: K8sProfile, profile_env: dict[str, str],
           run_dir: str) -> dict:
    """One JobSet: a replicated Job per stage chained by dependsOn, restarted as a whole on failure."""
    replicated, previous = [], None
    for stage in stages_of(spec):
        plan = _plan(names=names, spec=spec, k8s=k8s, profile=profile, profile_env=profile_env,
                     run_dir=run_dir, stage=stage, previous=previous, jobset=True)
        job_spec = k.V1JobSpec(
            completion_mode="Indexed", completions=stage.indexes, parallelism=stage.indexes, backoff_limit=0,
            pod_failure_policy=k.V1PodFailurePolicy(rules=[
                _exit_codes("FailJob", [EXIT_BAD_INPUT, EXIT_REQUEUE]), _disruption("FailJob")]),
            template=pod_template(plan),
        )
        entry = {"name": stage.name, "replicas": 1,
                 "template": to_dict(k.V1JobTemplateSpec(metadata=k.V1ObjectMeta(labels=names.labels(stage.name)),
                                                         spec=job_spec))}
        if previous is not None:
            entry["dependsOn"] = [{"name": previous.name, "status": "Complete"}]
        replicated.append(entry)
        previous = stage
    meta = to_dict(names.metadata(names.base, extra=_queue(k8s)))
    spec_out = {
        "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
        "failurePolicy": {"maxRestarts": spec.restarts.max_restarts, "rules": _jobset_rules()},
        "replicatedJobs": replicated,
    }
    if k8s.queue:
        spec_out["suspend"] = True
    # k8s.ttl_after_finished is set once llmops has seen the JobSet end (K8sBackend.refresh): removed unseen,
    # the run's outcome would be lost with it.
    return {"apiVersion": JOBSET_API, "kind": "JobSet", "metadata": meta, "spec": spec_out}


def _jobset_rules() -> list[dict]:
    """Read the child Job's failure message, which names the exit code that matched its FailJob rule."""
    return [
        {"name": "BadInput", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"],
         "onJobFailureMessagePatterns": [f"exit code {EXIT_BAD_INPUT} matching FailJob rule"]},
        # Exit code 75 or a disrupted pod: the rest of PodFailurePolicy failures. Not a crash.
        {"name": "Preempted", "action": "RestartJobSetAndIgnoreMaxRestarts",
         "onJobFailureReasons": ["PodFailurePolicy"]},
    ]
