"""The spec travels one way: file -> resolved spec -> request in memory -> run directory -> processes."""

from __future__ import annotations

import pytest
import yaml

from llmops import runner
from llmops.errors import SpecError, UserError
from llmops.spec.load import load_spec, parse_spec
from llmops_testing import llmops, tiny_spec, write_spec


def test_a_dry_run_creates_nothing_on_disk(tmp_path):
    request = runner.plan(parse_spec(tiny_spec("dry")), root=tmp_path / "runs")
    assert request.backend == "local" and request.run_path.parent == (tmp_path / "runs").absolute()
    assert "llmops_model.launch" in request.render() and request.spec.model.num_layers == 4
    assert not (tmp_path / "runs").exists()


def test_submit_writes_the_requests_spec_once_and_a_refused_submit_leaves_nothing(tmp_path, monkeypatch):
    from llmops.backends.local.backend import LocalBackend

    request = runner.plan(parse_spec(tiny_spec("refused")), root=tmp_path / "runs")

    def refuse(self, request, run):
        assert (run.path / "spec.yaml").read_text().startswith("version: 1")
        raise UserError("the cluster said no", "ask again later")

    monkeypatch.setattr(LocalBackend, "submit", refuse)
    with pytest.raises(UserError, match="the cluster said no"):
        runner.submit(request)
    assert not request.run_path.exists()


def test_render_writes_only_where_it_may_and_deletes_nothing(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", tiny_spec("render"))
    out = tmp_path / "out"
    assert llmops("render", str(spec), "--out", str(out)).returncode == 0
    assert (out / "launch.sh").exists() and not (out / "status.json").exists()  # a rendered folder is not a run
    res = llmops("render", str(spec), "--out", str(out))  # the same run's folder: rendered again
    assert res.returncode == 0, res.stderr

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    res = llmops("render", str(spec), "--out", str(mine))
    assert res.returncode == 2 and "not empty" in res.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # A spec the backend refuses leaves the folder as it was (it used to be deleted, user files and all).
    res = llmops("render", str(spec), "--backend", "k8s", "--out", str(mine))
    assert res.returncode == 2 and [p.name for p in mine.iterdir()] == ["notes.txt"]

    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.yaml").write_text("name: theirs\n")
    (run / "status.json").write_text("{}")
    res = llmops("render", str(spec), "--out", str(run))
    assert res.returncode == 2 and "is a run directory" in res.stderr
    assert (run / "spec.yaml").read_text() == "name: theirs\n" and (run / "status.json").exists()


def test_backend_rules_are_the_backends_and_validate_reports_them(tmp_path):
    spec = {**tiny_spec("k8s-rules"), "backend": "k8s", "checkpoint": {"dir": "/elsewhere/ckpt"}}
    with pytest.raises(SpecError) as info:
        runner.plan(parse_spec(spec), root=tmp_path)
    text = info.value.render()
    assert "k8s.image" in text and "checkpoint.dir = '/elsewhere/ckpt'" in text and "k8s.mount_path" in text
    parse_spec(spec)  # the generic spec knows nothing of Kubernetes' shared volume
    res = llmops("validate", str(write_spec(tmp_path / "s.yaml", spec)))
    assert res.returncode == 2 and "k8s.image" in res.stderr and "checkpoint.dir" in res.stderr


def test_backend_override_resolves_the_spec_for_that_backend(tmp_path):
    path = write_spec(tmp_path / "s.yaml", {**tiny_spec("over"), "slurm": {"partition": "batch"}})
    spec = load_spec(path, backend="slurm")
    assert spec.backend == "slurm"
    request = runner.plan(spec, path=tmp_path / "out", options={"slurm": {"partition": "debug", "time": "1:00:00"}})
    assert request.spec.slurm.partition == "debug" and request.spec.slurm.time == "1:00:00"
    assert "#SBATCH --partition=debug" in request.files()["slurm/pretrain.sbatch"]
    written = runner.render(request)
    assert yaml.safe_load((tmp_path / "out" / "spec.yaml").read_text())["slurm"]["partition"] == "debug"
    assert {p.name for p in written} >= {"spec.yaml", "pretrain.sbatch", "submit.sh"}


def test_a_bad_option_value_is_named_like_a_spec_field(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", tiny_spec("opt"))
    res = llmops("render", str(spec), "--backend", "slurm", "--time", "forever", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "slurm.time" in res.stderr and "command line" in res.stderr
    assert not (tmp_path / "o").exists()


def test_resuming_a_finished_run_is_refused_and_changes_nothing(tmp_path):
    from llmops.runs.rundir import RunDir, Status

    run = RunDir.create(parse_spec(tiny_spec("done")), tmp_path / "runs" / "done-1")
    run.write_status(Status(state="SUCCEEDED", restarts=0, exit_code=0, message="finished", started_at=1.0,
                            ended_at=147.0))
    before = (run.path / "status.json").read_text()
    res = llmops("resume", str(run.path))
    assert res.returncode == 2 and "nothing to resume" in res.stderr
    assert (run.path / "status.json").read_text() == before


def test_a_spec_whose_input_is_missing_is_refused_before_any_run_exists(tmp_path):
    spec = tiny_spec("noinput")
    spec["prepare"] = {"input": {"paths": [str(tmp_path / "raw" / "*.jsonl")]}, "output": {"dir": str(tmp_path / "o")}}
    path = write_spec(tmp_path / "s.yaml", spec)
    res = llmops("validate", str(path))
    assert res.returncode == 2 and "prepare.input.paths.0" in res.stderr and "matches no file" in res.stderr
    res = llmops("run", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 2 and not (tmp_path / "runs").exists() and not (tmp_path / "o").exists()


def test_strict_mode_takes_profiles_by_name_not_a_file_the_spec_brings(tmp_path):
    """`profile: ./evil-profile.yaml` under --strict brought the spec author's own "platform" settings (root, the
    host's network, kube-system) past strict mode, which leaves those to the platform team."""
    from llmops_testing import llmops

    evil = tmp_path / "evil-profile.yaml"
    evil.write_text("k8s: {allow_root: true, namespace: kube-system}\nenv: {LD_PRELOAD: /x.so}\n")
    spec = write_spec(tmp_path / "s.yaml", {**tiny_spec("byfile"), "backend": "k8s", "profile": str(evil),
                                                   "k8s": {"image": "registry.example/llmops:1"}})
    assert llmops("validate", str(spec)).returncode == 0  # a path is fine outside strict mode
    res = llmops("--strict", "validate", str(spec))
    assert res.returncode == 2 and f"profile = '{evil}'" in res.stderr and "LLMOPS_PROFILE_PATH" in res.stderr
    by_name = write_spec(tmp_path / "n.yaml", {**tiny_spec("byname"), "backend": "k8s", "profile": "evil-profile",
                                                      "k8s": {"image": "registry.example/llmops:1"}})
    ok = llmops("--strict", "validate", str(by_name), env={"LLMOPS_PROFILE_PATH": str(tmp_path)})
    assert ok.returncode == 0, ok.stderr


def test_resuming_a_run_still_stopping_after_its_cancel_says_so(tmp_path, monkeypatch):
    """A resume while the cancelled run's processes were still stopping said "is RUNNING, not stopped ... cancel it
    first", though it had been cancelled (a Slurm prepare shard runs on until it is killed)."""
    from llmops.backends.local.backend import LocalBackend
    from llmops.runs.rundir import RunDir, Status

    run = RunDir.create(parse_spec(tiny_spec("stopping")), tmp_path / "runs" / "stopping-1")
    run.write_status(Status(state="RUNNING", message="stopping after the cancel: task(s) 7_1 still on the cluster"))
    run.cancel_marker.touch()
    monkeypatch.setattr(LocalBackend, "refresh", lambda self, run: None)  # the processes as the backend sees them
    with pytest.raises(UserError, match="still stopping after its cancel") as info:
        runner.resume(run)
    assert "task(s) 7_1 still on the cluster" in info.value.message and "says CANCELLED" in info.value.fix
