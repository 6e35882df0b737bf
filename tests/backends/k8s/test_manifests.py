"""Rendered run objects: golden files, the official schemas, and the properties users rely on.

Golden files live in golden/<case>/ beside this file. After an intended change,
regenerate them with `LLMOPS_REGEN_GOLDEN=1 pytest tests/backends/k8s` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from llmops import runner
from llmops.errors import UserError
from llmops.spec.load import dump_spec, parse_spec
from llmops_testing import llmops, tiny_spec, write_spec

GOLDEN = Path(__file__).parent / "golden"
RUN_ID = "tiny-k8s-20250101-000000"
# The oldest Kubernetes release we support and the newest whose schemas kubernetes-validate ships.
VERSIONS = ["1.30", kubernetes_validate.latest_version()]


def _cpu(**k8s) -> dict:
    return {**tiny_spec("tiny-k8s", tp=2, pp=2, procs=2, steps=40, checkpoint={"interval": 10},
                        restarts={"max_restarts": 3}),
            "backend": "k8s", "resources": {"nodes": 2, "cpu": True, "processes_per_node": 2},
            "k8s": {"image": "registry.example/llmops:0.1", **k8s}}


def _gpu(profile: str, **k8s) -> dict:
    spec = tiny_spec("gpt-gpu", steps=1000)
    spec.update(backend="k8s", profile=profile, resources={"nodes": 4, "gpus_per_node": 8},
                parallelism={"tensor": 8, "pipeline": 2}, model={"preset": "gpt-1.3b"},
                k8s={"image": "registry.example/llmops:0.1-cuda", **k8s})
    spec["train"].update(global_batch_size=256, micro_batch_size=1, warmup_steps=10)
    spec["restarts"] = {"max_restarts": 5}
    return spec


def _prepared(spec: dict) -> dict:
    """The spec with a data-preparation stage before training (training reads what it writes)."""
    prepare = {"input": {"paths": ["/llmops/raw/*.jsonl"]}, "output": {"dir": "/llmops/data/corpus"},
               "tokenizer": {"vocab_size": 512}, "num_shards": 3}
    return {**spec, "prepare": prepare}


def _aligned(spec: dict) -> dict:
    """The prepared spec, then SFT and DPO stages: the whole pipeline as one run of chained Jobs."""
    common = {"steps": 20, "global_batch_size": 8, "micro_batch_size": 2}
    return {**spec, "align": [
        {"method": "sft", "data": {"path": "/llmops/align/chat.jsonl"}, **common},
        {"method": "dpo", "data": {"path": "/llmops/align/preferences.jsonl"}, **common},
    ]}


CASES = {
    "cpu-indexed-job": _cpu(),
    "cpu-jobset": _cpu(flavor="jobset", queue="llmops"),
    "aws-efa": _gpu("aws-p5", queue="llmops", priority_class="llmops-training"),
    "oci-rdma": _gpu("oci-bm-gpu-h100", flavor="jobset"),
    "prepare-indexed-job": _prepared(_cpu()),
    "prepare-jobset-aws": _prepared(_gpu("aws-p5", flavor="jobset")),
    "pipeline-indexed-job": _aligned(_prepared(_cpu())),
}


def render(case: str, tmp_path: Path, run_id: str = RUN_ID):
    """The dry run of a case, built in memory as `llmops submit --dry-run` builds it."""
    return runner.plan(parse_spec(CASES[case]), path=tmp_path / run_id)


def objects(case: str, tmp_path: Path) -> dict[str, dict]:
    return {o["kind"]: o for o in render(case, tmp_path).objects}


def workloads(case: str, tmp_path: Path) -> list[dict]:
    """(name, Job spec) of each stage's Job, in order, for either flavour."""
    objs = render(case, tmp_path).objects
    if objs[-1]["kind"] == "JobSet":
        return [{"name": r["name"], "dependsOn": r.get("dependsOn"), **r["template"]["spec"]}
                for r in objs[-1]["spec"]["replicatedJobs"]]
    return [{"name": o["metadata"]["labels"]["llmops.dev/stage"], **o["spec"]} for o in objs if o["kind"] == "Job"]


def pod_specs(objs: dict[str, dict]) -> list[dict]:
    if "JobSet" in objs:
        return [r["template"]["spec"]["template"]["spec"] for r in objs["JobSet"]["spec"]["replicatedJobs"]]
    return [objs["Job"]["spec"]["template"]["spec"]]


SPEC_PLACEHOLDER = "<the run's resolved spec.yaml, checked against the run directory's copy>"


def _golden_view(name: str, text: str, spec_text: str) -> str:
    """The file as the golden copy holds it: a ConfigMap's embedded spec is checked here and left out
    there, so that a new run-spec field elsewhere in llmops does not rewrite every golden ConfigMap."""
    if "-configmap-" not in name:
        return text
    obj = yaml.safe_load(text)
    assert obj["data"]["spec.yaml"] == spec_text
    obj["data"]["spec.yaml"] = SPEC_PLACEHOLDER
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    return header + yaml.safe_dump(obj, sort_keys=False)


@pytest.mark.parametrize("case", CASES)
def test_rendered_objects_match_golden_files(case, tmp_path):
    request = render(case, tmp_path)
    assert not (tmp_path / RUN_ID).exists()  # a dry run writes nothing
    spec_text = dump_spec(request.spec)
    files = {name: _golden_view(name, text, spec_text) for name, text in request.files().items()}
    folder = GOLDEN / case
    if os.environ.get("LLMOPS_REGEN_GOLDEN") == "1":
        for old in folder.glob("**/*.yaml"):
            old.unlink()
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
    expected = {str(p.relative_to(folder)): p.read_text() for p in folder.glob("**/*.yaml")}
    assert sorted(files) == sorted(expected), "set LLMOPS_REGEN_GOLDEN=1 to regenerate after an intended change"
    for name, text in files.items():
        assert text == expected[name], f"{case}/{name} differs from the golden file"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_every_object_passes_the_official_schema_strictly(case, version, tmp_path):
    for obj in render(case, tmp_path).objects:
        if obj["kind"] == "JobSet":  # a CRD: its Job templates are checked below and in test_jobset_*
            for rj in obj["spec"]["replicatedJobs"]:
                job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": rj["name"]},
                       "spec": rj["template"]["spec"]}
                kubernetes_validate.validate(job, version, strict=True)
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_schema_check_rejects_a_misplaced_field(tmp_path):
    job = objects("cpu-indexed-job", tmp_path)["Job"]
    job["spec"]["template"]["spec"]["podFailurePolicy"] = job["spec"].pop("podFailurePolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[0], strict=True)


def _jobset_roundtrip(obj: dict) -> dict:
    """The JobSet through the typed v1alpha2 models: unknown or misplaced fields are dropped, types enforced."""
    from kubeflow_trainer_api.models.jobset_v1alpha2_job_set import JobsetV1alpha2JobSet

    return JobsetV1alpha2JobSet.from_dict(obj).to_dict()


@pytest.mark.parametrize("case", ["cpu-jobset", "oci-rdma"])
def test_jobset_matches_the_typed_jobset_models(case, tmp_path):
    js = objects(case, tmp_path)["JobSet"]
    assert _jobset_roundtrip(js) == js
    assert js["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    # Enumerations the models keep as plain strings, from the JobSet API's documentation.
    for rule in js["spec"]["failurePolicy"]["rules"]:
        assert rule["action"] in ("FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts")
    for rj in js["spec"]["replicatedJobs"]:
        assert all(d["status"] in ("Ready", "Complete") for d in rj.get("dependsOn", []))


def test_the_jobset_check_rejects_an_unknown_field(tmp_path):
    js = objects("cpu-jobset", tmp_path)["JobSet"]
    js["spec"]["failurePolicy"]["maxRestart"] = js["spec"]["failurePolicy"].pop("maxRestarts")
    assert _jobset_roundtrip(js) != js


@pytest.mark.parametrize("case", CASES)
def test_pods_are_unprivileged_bounded_and_without_api_access(case, tmp_path):
    for pod in pod_specs(objects(case, tmp_path)):
        assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "llmops-training"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert pod["restartPolicy"] == "Never"
        for c in pod["initContainers"] + pod["containers"]:
            sc = c["securityContext"]
            assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["capabilities"].get("add", []) == (["IPC_LOCK"] if case == "oci-rdma" else [])
            assert c["resources"]["limits"] == c["resources"]["requests"] and "memory" in c["resources"]["limits"]


def test_indexed_job_retries_crashes_requeues_preemptions_and_fails_fast_on_bad_input(tmp_path):
    job = objects("cpu-indexed-job", tmp_path)["Job"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 2, 2)
    rules = job["podFailurePolicy"]["rules"]
    assert [(r["action"], r.get("onExitCodes", {}).get("values")) for r in rules[:2]] == [
        ("FailJob", [2]), ("Ignore", [75])]
    assert rules[2] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert (job["backoffLimitPerIndex"], job["maxFailedIndexes"], job["podReplacementPolicy"]) == (3, 0, "Failed")


def test_jobset_restarts_the_gang_and_counts_only_crashes(tmp_path):
    js = objects("cpu-jobset", tmp_path)["JobSet"]["spec"]
    assert js["failurePolicy"]["maxRestarts"] == 3 and js["suspend"] is True  # queued: Kueue admits it
    bad, preempted = js["failurePolicy"]["rules"]
    assert bad["action"] == "FailJobSet" and "exit code 2 matching" in bad["onJobFailureMessagePatterns"][0]
    assert preempted["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    job = js["replicatedJobs"][0]["template"]["spec"]
    assert job["backoffLimit"] == 0 and {75, 2} <= set(job["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"])


def test_rendezvous_name_is_pod_zero_behind_the_headless_service(tmp_path):
    objs = objects("cpu-indexed-job", tmp_path)
    svc, job = objs["Service"], objs["Job"]
    pod = job["spec"]["template"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["subdomain"] == svc["metadata"]["name"]
    assert env["LLMOPS_RDZV_HOST"] == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"


def test_network_policy_admits_only_the_runs_own_pods(tmp_path):
    objs = objects("cpu-indexed-job", tmp_path)
    np, labels = objs["NetworkPolicy"]["spec"], objs["Job"]["spec"]["template"]["metadata"]["labels"]
    assert np["policyTypes"] == ["Ingress"]
    assert np["podSelector"]["matchLabels"].items() <= labels.items()
    assert np["ingress"] == [{"from": [{"podSelector": np["podSelector"]}]}]


def test_aws_profile_requests_efa_devices_and_sets_libfabric(tmp_path):
    objs = objects("aws-efa", tmp_path)
    job, pod = objs["Job"], pod_specs(objs)[0]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["vpc.amazonaws.com/efa"] == "32" and limits["nvidia.com/gpu"] == "8"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["FI_PROVIDER"] == "efa" and "CUDA_VISIBLE_DEVICES" not in env
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert pod["priorityClassName"] == "llmops-training" and "hostNetwork" not in pod
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "llmops" and job["spec"]["suspend"] is True


def test_oci_profile_uses_host_networking_and_the_rdma_device_plugin(tmp_path):
    pod = pod_specs(objects("oci-rdma", tmp_path))[0]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["containers"][0]["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
    assert not any(v.get("hostPath") for v in pod["volumes"])


def test_long_run_ids_still_give_valid_names(tmp_path):
    run_id = "a-rather-long-run-name-for-the-pretraining-of-7b-20250101-000000-12"
    for case in ("cpu-indexed-job", "cpu-jobset"):
        objs = render(case, tmp_path / case, run_id=run_id).objects
        for obj in objs:
            assert len(obj["metadata"]["name"]) <= 63 and obj["metadata"]["name"][0].isalpha()
            assert obj["metadata"]["annotations"]["llmops.dev/run-id"] == run_id
        env = {e["name"]: e.get("value") for e in pod_specs({o["kind"]: o for o in objs})[0]["containers"][0]["env"]}
        assert all(len(label) <= 63 for label in env["LLMOPS_RDZV_HOST"].split("."))


def test_pod_hostnames_past_63_characters_are_refused_at_render(tmp_path):
    """JobSet names pods <run>-<stage>-<job>-<pod>: a long run id, a 16-character stage and a thousand
    prepare shards pass 63 characters, which the API refuses at pod creation (the stage would wait forever)."""
    run_id = "a-rather-long-run-name-for-the-pretraining-of-7b-20250101-000000-12"
    spec = _prepared(_cpu(flavor="jobset"))
    for shards, refused in ((1000, False), (1001, True)):
        spec["prepare"] = {**spec["prepare"], "num_shards": shards}
        if not refused:
            runner.plan(parse_spec(spec), path=tmp_path / run_id)
            continue
        with pytest.raises(UserError, match=r"stage prepare-tokenize's 1001 pods would be named up to "
                                            r"'.*-prepare-tokenize-0-1000' \(64 characters\)") as e:
            runner.plan(parse_spec(spec), path=tmp_path / run_id)
        assert "k8s.flavor: indexed-job" in e.value.fix
    spec["k8s"] = {**spec["k8s"], "flavor": "indexed-job"}  # <job>-<index>: 1001 pods fit
    runner.plan(parse_spec(spec), path=tmp_path / run_id)


def test_cli_render_writes_manifests_with_overrides(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", {**_cpu(), "backend": "local"})
    out = tmp_path / "out"
    res = llmops("render", str(spec), "--backend", "k8s", "--out", str(out), "--namespace", "team-a",
                 "--flavor", "jobset", "--context", "prod")
    assert res.returncode == 0, res.stderr
    manifests = [yaml.safe_load(p.read_text()) for p in sorted((out / "manifests").glob("*.yaml"))]
    assert [m["kind"] for m in manifests] == ["ConfigMap", "NetworkPolicy", "JobSet"]
    assert {m["metadata"]["namespace"] for m in manifests} == {"team-a"}
    recorded = yaml.safe_load((out / "spec.yaml").read_text())["k8s"]
    assert (recorded["context"], recorded["namespace"], recorded["flavor"]) == ("prod", "team-a", "jobset")


def test_a_render_again_replaces_the_earlier_renders_files_and_the_folder_name_is_a_run_id(tmp_path):
    """A one-stage render into the folder of a four-stage one left the old Jobs beside the new ones, and
    `kubectl apply -f manifests/` applied them all; a folder name with a space or a newline became object
    names and a line of launch.sh."""
    out = tmp_path / "out"
    res = llmops("render", str(write_spec(tmp_path / "a.yaml", _prepared(_cpu()))), "--out", str(out))
    assert res.returncode == 0, res.stderr
    before = sorted(p.name for p in (out / "manifests").iterdir())
    assert any("prepare" in name for name in before)
    (out / "notes.txt").write_text("a user's file, added after the render")
    res = llmops("render", str(write_spec(tmp_path / "b.yaml", _cpu())), "--out", str(out))
    assert res.returncode == 0, res.stderr
    after = sorted(p.name for p in (out / "manifests").iterdir())
    assert not any("prepare" in name for name in after) and len(after) < len(before)
    assert (out / "notes.txt").exists()
    for name in ("x y", "My_Render.dir", "nl\nkind: Secret"):
        res = llmops("render", str(tmp_path / "b.yaml"), "--out", str(tmp_path / name))
        assert res.returncode == 2 and "would be the run's id" in res.stderr, res.stderr
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize("change, args, expected", [
    ({}, ["--flavor", "helm"], "k8s.flavor"),
    ({"k8s": {}}, [], "k8s.image: is required"),
    ({"checkpoint": {"dir": "/home/me/ckpt"}}, [], "checkpoint.dir = '/home/me/ckpt': is not on the shared volume"),
    # A path that only looks as if it were on the volume.
    ({"data": {"indexed": {"paths": ["/llmops/../etc/corpus"]}}}, [],
     "data.indexed.paths.0 = '/llmops/../etc/corpus': is not on the shared volume"),
    ({"k8s": {"image": "i:1", "run_as_user": 0}}, [], "k8s.run_as_user = 0: runs the containers as root"),
    # the image's own user, root in most: it passed under a profile without allow_root
    ({"k8s": {"image": "i:1", "run_as_user": None}}, [], "k8s.run_as_user: keeps the image's user"),
    # Values that validated but gave pods the API server refuses, or that never start.
    ({"k8s": {"image": "i:1", "mount_path": "/dev/shm"}}, [], "k8s.mount_path = '/dev/shm': is where every pod "
     "mounts its memory-backed /dev/shm"),
    ({"k8s": {"image": "i:1", "mount_path": "/llmops/.."}, "checkpoint": {"dir": "/etc/ckpt"}}, [],
     "k8s.mount_path = '/llmops/..': is not a folder below / written plainly (once '.' and '..' are resolved it is "
     "'/')"),
    ({"k8s": {"image": "i:1", "mount_path": "/"}}, [], "k8s.mount_path = '/': is not a folder below /"),
    ({"k8s": {"image": " registry.example.com/llmops:1\n"}}, [], "k8s.image = ' registry.example.com/llmops:1\\n': "
     "is not an image reference"),
])
def test_cli_render_refuses_bad_k8s_input_with_exit_2(tmp_path, change, args, expected):
    spec = write_spec(tmp_path / "s.yaml", {**_cpu(), **change})
    res = llmops("render", str(spec), "--out", str(tmp_path / "out"), *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert expected in res.stderr.replace("\n", " "), res.stderr


@pytest.mark.parametrize("case", ["prepare-indexed-job", "prepare-jobset-aws"])
def test_data_preparation_runs_phase_by_phase_before_training(case, tmp_path):
    jobs = workloads(case, tmp_path)
    names = [j["name"] for j in jobs]
    assert names == ["prepare-clean", "prepare-dedup", "prepare-tokenizer", "prepare-tokenize", "prepare-finalize",
                     "pretrain"]
    assert [j["completions"] for j in jobs] == [3, 1, 1, 3, 1, CASES[case]["resources"]["nodes"]]
    for previous, job in zip(jobs, jobs[1:], strict=False):
        setup_env = {e["name"]: e.get("value") for e in job["template"]["spec"]["initContainers"][0]["env"]}
        assert setup_env["LLMOPS_AFTER"] == f"{previous['name']}:{previous['completions']}"
        if "jobset" in case:
            assert job["dependsOn"] == [{"name": previous["name"], "status": "Complete"}]
    for job in jobs[:5]:
        pod = job["template"]["spec"]
        main = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in main["env"]}
        assert (env["LLMOPS_STAGE_KIND"], env["LLMOPS_PREPARE_PHASE"], env["LLMOPS_NUM_SHARDS"]) == (
            "prepare", job["name"].split("-", 1)[1], "3")
        # CPU work: no GPU, no fabric, no GPU node pool, no site NCCL settings.
        assert set(main["resources"]["limits"]) == {"cpu", "memory"} and "nodeSelector" not in pod
        assert "FI_PROVIDER" not in env and "ports" not in main


def test_training_reads_what_preparation_writes_on_the_shared_volume(tmp_path):
    spec = yaml.safe_load(render("prepare-indexed-job", tmp_path).objects[0]["data"]["spec.yaml"])
    assert spec["data"]["indexed"]["paths"] == ["/llmops/data/corpus/corpus_text_document"]
    assert spec["model"]["vocab_size"] == 512


def test_preparation_paths_off_the_shared_volume_are_refused(tmp_path):
    spec = _prepared(_cpu())
    spec["prepare"]["output"]["dir"] = "/data/corpus"
    res = llmops("render", str(write_spec(tmp_path / "s.yaml", spec)), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "prepare.output.dir = '/data/corpus': is not on the shared volume" in " ".join(res.stderr.split())


def test_a_profile_sends_its_runs_to_its_namespace_and_may_allow_root(tmp_path, monkeypatch):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "rdma-site.yaml").write_text(yaml.safe_dump(
        {"k8s": {"namespace": "llmops-rdma", "allow_root": True, "network": "rdma", "rdma_resource": "rdma/x"}}))
    monkeypatch.setenv("LLMOPS_PROFILE_PATH", str(profiles))
    spec = {**_cpu(), "profile": "rdma-site"}
    spec["k8s"] = {**spec["k8s"], "run_as_user": 0}
    request = runner.plan(parse_spec(spec), path=tmp_path / RUN_ID)
    assert request.spec.k8s.namespace == "llmops-rdma"  # recorded: status and cancel look there later
    assert {o["metadata"]["namespace"] for o in request.objects} == {"llmops-rdma"}
    spec["k8s"] = {**spec["k8s"], "namespace": "team-a"}  # the spec's own choice wins
    assert runner.plan(parse_spec(spec), path=tmp_path / RUN_ID).spec.k8s.namespace == "team-a"


def test_run_ids_that_differ_only_at_the_end_get_different_object_names():
    """A 40-character id starting with a digit lost its last character when `r` was put in front: two runs
    submitted seconds apart shared every object name, and one's submit deleted the other's objects."""
    import re

    from llmops.backends.k8s.objects import base_name

    a, b = "7b-llama-pretrain-lr3e-4-20250101-120003", "7b-llama-pretrain-lr3e-4-20250101-120007"
    assert len(a) == 40 and base_name(a) != base_name(b)
    for run_id in (a, b, "short-1", "9-x", "a" * 39 + "-2", "x" * 80):
        name = base_name(run_id)
        assert len(name) <= 40 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), (run_id, name)
    assert base_name("short-1") == "short-1" and base_name("9-x") == "r9-x"  # short ids are kept as they were
