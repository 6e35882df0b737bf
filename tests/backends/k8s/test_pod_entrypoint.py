"""The pods of a rendered Indexed Job, started for real as local processes.

Each "pod" runs the rendered init and main containers' commands with the
environment the kubelet would give them: the container's env with its
`valueFrom` references resolved (the ConfigMap's spec, the Job controller's
per-index failure annotations), JOB_COMPLETION_INDEX, and the pod's hostname.
The rendezvous name of pod 0 (`<job>-0.<service>`) resolves to loopback
through an /etc/hosts bound over the real one in a private mount namespace,
the way the headless Service's DNS record resolves to pod 0 in a cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmops import runner
from llmops.spec.load import parse_spec
from llmops_testing import tiny_spec

RUN_ID = "tiny-k8s-20250101-000000"


def _namespace_prefix(hosts: Path) -> list[str]:
    """A command prefix that runs the rest in a mount namespace where `hosts` is /etc/hosts."""
    bind = ["sh", "-c", f'mount --bind "{hosts}" /etc/hosts && exec "$@"', "sh"]
    for unshare in (["unshare", "--mount", "--propagation", "private"],
                    ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        probe = subprocess.run([*unshare, *bind, "true"], capture_output=True)
        if probe.returncode == 0:
            return [*unshare, *bind]
    pytest.skip("cannot create a mount namespace here (unshare refused) to map the pod DNS names to loopback")


def _resolve(env_list: list[dict], *, config_map: dict, annotations: dict[str, str]) -> dict[str, str]:
    """What the kubelet makes of a container's env: values, ConfigMap keys, downward-API fields."""
    out = {}
    for var in env_list:
        source = var.get("valueFrom")
        if source is None:
            out[var["name"]] = var.get("value", "")
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            assert ref["name"] == config_map["metadata"]["name"]
            out[var["name"]] = config_map["data"][ref["key"]]
        else:
            path = source["fieldRef"]["fieldPath"]
            key = path.split("['", 1)[1].rstrip("']")
            assert path.startswith("metadata.annotations[")
            out[var["name"]] = annotations.get(key, "")  # an annotation that is not set reads as ''
    return out


class Pods:
    """Start the rendered pods of one stage's Job as processes, index by index."""

    def __init__(self, request, tmp_path: Path, *, stage: str = "pretrain", dns: bool = True):
        self.cm = next(o for o in request.objects if o["kind"] == "ConfigMap")
        self.job = next(o for o in request.objects if o["kind"] == "Job"
                        and o["metadata"]["labels"]["llmops.dev/stage"] == stage)
        self.pod = self.job["spec"]["template"]["spec"]
        self.tmp = tmp_path
        self.prefix: list[str] = []
        if dns:  # pod i is <job>-i.<service> in the cluster; here every such name is loopback
            names = [f"{self.job['metadata']['name']}-{i}.{self.pod['subdomain']}"
                     for i in range(self.job["spec"]["completions"])]
            hosts = tmp_path / f"hosts-{stage}"
            hosts.write_text(Path("/etc/hosts").read_text() + "\n127.0.0.1 " + " ".join(names) + "\n")
            self.prefix = _namespace_prefix(hosts)

    def env(self, container: dict, index: int, failures: dict[str, str]) -> dict[str, str]:
        annotations = {"batch.kubernetes.io/job-completion-index": str(index), **failures}
        env = _resolve(container["env"], config_map=self.cm, annotations=annotations)
        return {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(self.tmp),
                "HOSTNAME": f"{self.job['metadata']['name']}-{index}", "JOB_COMPLETION_INDEX": str(index), **env}

    def _popen(self, container: dict, index: int, failures: dict[str, str] | None) -> subprocess.Popen:
        return subprocess.Popen(self.prefix + container["command"], env=self.env(container, index, failures or {}),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def setup(self, index: int, failures: dict[str, str] | None = None) -> subprocess.Popen:
        return self._popen(self.pod["initContainers"][0], index, failures)

    def main(self, index: int, failures: dict[str, str] | None = None) -> subprocess.Popen:
        return self._popen(self.pod["containers"][0], index, failures)

    def start(self, index: int, failures: dict[str, str] | None = None) -> subprocess.Popen:
        """The init container to completion, then the main container (as the kubelet does)."""
        ((code, text),) = _wait([self.setup(index, failures)], timeout=60)
        assert code == 0, text
        return self.main(index, failures)


def _wait(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=timeout)
        out.append((p.returncode, text))
    return out


def _step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "stages" / "pretrain" / "progress.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture
def rendered(tmp_path):
    spec = parse_spec({**tiny_spec("tiny-k8s", tp=2, pp=2, procs=2, steps=5,
                                   checkpoint={"interval": 100}, restarts={"max_restarts": 2}),
                       "backend": "k8s", "resources": {"nodes": 2, "cpu": True, "processes_per_node": 2},
                       "k8s": {"image": "unused:0", "mount_path": str(tmp_path / "volume")}})
    return runner.plan(spec, path=tmp_path / "laptop" / RUN_ID), tmp_path / "volume" / "runs" / RUN_ID


def test_pods_rendezvous_train_survive_sigterm_and_resume(rendered, tmp_path):
    request, run_dir = rendered
    pods = Pods(request, tmp_path)
    first = [pods.start(0), pods.start(1)]
    deadline = time.monotonic() + 90
    while _step(run_dir) < 1 and time.monotonic() < deadline and all(p.poll() is None for p in first):
        time.sleep(0.2)
    assert _step(run_dir) >= 1, _wait(first)
    first[1].send_signal(signal.SIGTERM)  # what the kubelet does when pod 1 is deleted or preempted
    results = _wait(first)
    assert [code for code, _ in results] == [75, 75], results  # checkpointed: podFailurePolicy ignores 75
    stopped_at = _step(run_dir)
    assert stopped_at < 5

    # The Job controller replaces both pods and counts an ignored failure on each index.
    ignored = {"batch.kubernetes.io/job-index-ignored-failure-count": "1"}
    results = _wait([pods.start(0, ignored), pods.start(1, ignored)])
    assert [code for code, _ in results] == [0, 0], results
    assert _step(run_dir) == 5
    assert all((run_dir / "stages" / "pretrain" / f"{i}.done").exists() for i in (0, 1))
    log = "".join(p.read_text() for p in (run_dir / "logs").glob("pretrain.restart-1.node-*.log"))
    resumed = [line for line in log.splitlines() if "resumed from" in line]
    assert resumed and f"step {stopped_at}" in resumed[0], log
    rows = [json.loads(line) for line in (run_dir / "stages" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert {r["restart"] for r in rows} == {0, 1}  # LLMOPS_RESTART came from the annotations

    # A restarted pod of a finished stage does nothing (a JobSet restart re-creates finished stages).
    code, text = _wait([pods.start(1)])[0]
    assert code == 0 and "already finished" in text


def _prepare_request(tmp_path: Path, *, builtin: bool):
    source = {"builtin": "python-docstrings"} if builtin else {"paths": [str(tmp_path / "volume" / "raw" / "*.jsonl")]}
    spec = parse_spec({"name": "prep-k8s", "backend": "k8s", "resources": {"cpu": True},
                       "prepare": {"input": source, "output": {"dir": str(tmp_path / "volume" / "corpus")},
                                   "tokenizer": {"vocab_size": 512}, "num_shards": 2},
                       "k8s": {"image": "unused:0", "mount_path": str(tmp_path / "volume")}})
    request = runner.plan(spec, path=tmp_path / "laptop" / "prep-k8s-20250101-000000")
    return request, tmp_path / "volume" / "runs" / request.run_id


def test_preparation_pods_run_each_shard_and_the_next_phase_waits_for_all(tmp_path):
    request, run_dir = _prepare_request(tmp_path, builtin=True)
    clean, dedup = Pods(request, tmp_path, stage="prepare-clean", dns=False), \
        Pods(request, tmp_path, stage="prepare-dedup", dns=False)
    waiting = dedup.setup(0)  # created at submit, like every stage's pods; it waits in `setup`
    time.sleep(1.0)
    assert waiting.poll() is None
    assert [code for code, _ in _wait([clean.start(0), clean.start(1)])] == [0, 0]
    ((code, text),) = _wait([waiting], timeout=30)
    assert code == 0 and "stage 'prepare-clean' finished" in text
    ((code, text),) = _wait([dedup.main(0)])
    assert code == 0, text
    work = tmp_path / "volume" / "corpus" / "work" / "done"
    assert {p.name for p in work.glob("*.json")} >= {
        "clean-00000-of-00002.json", "clean-00001-of-00002.json", "dedup-00000-of-00001.json"}


def test_a_phase_that_fails_on_bad_input_stops_the_phases_after_it(tmp_path):
    request, run_dir = _prepare_request(tmp_path, builtin=False)  # no input files on the volume
    clean, dedup = Pods(request, tmp_path, stage="prepare-clean", dns=False), \
        Pods(request, tmp_path, stage="prepare-dedup", dns=False)
    ((code, text),) = _wait([clean.start(0)])
    assert code == 2, text  # the Job's podFailurePolicy fails the whole Job on exit code 2
    assert (run_dir / "stages" / "prepare-clean.failed").exists()
    ((code, text),) = _wait([dedup.setup(0)], timeout=30)
    assert code == 2 and "stage 'prepare-clean' failed" in text


def test_a_stage_run_again_clears_its_earlier_failure_for_the_stages_waiting_on_it(tmp_path):
    """A resumed run: the stage that failed before runs again, and the stages after it wait for this attempt
    instead of stopping at the old failure marker (which failed every resume of the run)."""
    request, run_dir = _prepare_request(tmp_path, builtin=True)
    clean, dedup = Pods(request, tmp_path, stage="prepare-clean", dns=False), \
        Pods(request, tmp_path, stage="prepare-dedup", dns=False)
    old = run_dir / "stages" / "prepare-clean.failed"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text("index 0 exited 1 on attempt 0 (no restarts left)\n")  # the attempt before the resume
    assert [code for code, _ in _wait([clean.start(0), clean.start(1)])] == [0, 0]
    assert not old.exists()
    ((code, text),) = _wait([dedup.setup(0)], timeout=30)
    assert code == 0 and "stage 'prepare-clean' finished" in text


def test_a_pod_stopped_while_it_waits_for_the_stage_before_exits_at_once_with_75(tmp_path):
    """A cancel or a drain reaches pods of later stages while they wait in `setup`: their python is PID 1,
    which the kernel gives no signal it has no handler for, so the stop used to be lost until the grace
    period's SIGKILL. It now ends the wait with 75 (stopped, nothing lost) within a poll."""
    import signal as signals

    request, _ = _prepare_request(tmp_path, builtin=True)
    dedup = Pods(request, tmp_path, stage="prepare-dedup", dns=False)
    waiting = dedup.setup(0)
    time.sleep(1.5)  # in its wait for prepare-clean
    assert waiting.poll() is None
    began = time.monotonic()
    waiting.send_signal(signals.SIGTERM)
    ((code, text),) = _wait([waiting], timeout=30)
    assert code == 75 and "stopped while waiting for stage 'prepare-clean'" in text, text
    assert time.monotonic() - began < 10
