"""Secrets reach the jobs and nothing else: never spec.yaml, a script, a manifest, a dry run or a log."""

from __future__ import annotations

import stat

import psutil
import pytest

from llmops import runner
from llmops.errors import SpecError, UserError
from llmops.spec.load import parse_spec
from llmops_testing import llmops, start, status, tiny_spec, wait_step, write_spec

VALUE = "hf_s3cr3t-value-that-must-not-leak"


def _everything_written(folder) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file() and p.name != "secrets.env")


def test_a_secret_is_read_at_submit_and_reaches_only_the_jobs_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", VALUE)
    (tmp_path / "key").write_text("from-a-file\n")
    spec = {**tiny_spec("secret", steps=2000), "secrets": {"HF_TOKEN": {}, "OTHER": {"file": str(tmp_path / "key")}}}
    run = start(write_spec(tmp_path / "s.yaml", spec), tmp_path / "runs")
    try:
        wait_step(run, 1)
        workers = psutil.Process(status(run)["job_pgid"]).children(recursive=True)
        env = next(p.environ() for p in workers if "llmops_model.entrypoint" in " ".join(p.cmdline()))
        assert env["HF_TOKEN"] == VALUE and env["OTHER"] == "from-a-file"  # the training processes have them
        assert "HF_TOKEN" in (run / "spec.yaml").read_text() and VALUE not in _everything_written(run)
    finally:
        llmops("cancel", "--force", str(run))


def test_a_missing_secret_is_exit_2_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    spec = write_spec(tmp_path / "s.yaml", {**tiny_spec("nosecret"), "secrets": ["WANDB_API_KEY"]})
    res = llmops("run", str(spec), "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 2 and "$WANDB_API_KEY is not set" in res.stderr and "export WANDB_API_KEY" in res.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    with pytest.raises(SpecError) as info:
        parse_spec({**tiny_spec("x"), "secrets": {"BAD-NAME": {}}})
    assert "secrets" in info.value.render() and "not a variable name" in info.value.render()


def test_slurm_gets_a_private_file_the_script_reads_and_a_dry_run_holds_no_value(tmp_path, monkeypatch):
    from llmops.backends.slurm.backend import SlurmBackend

    monkeypatch.setenv("HF_TOKEN", VALUE)
    spec = parse_spec({**tiny_spec("sec"), "backend": "slurm", "secrets": ["HF_TOKEN"]})
    request = runner.plan(spec, path=tmp_path / "sec-1")
    script = request.files()["slurm/pretrain.sbatch"]
    assert '. "$RUN_DIR/secrets.env"' in script and VALUE not in request.render()
    monkeypatch.setattr(SlurmBackend, "_check_live", lambda self, request, transport: None)
    monkeypatch.setattr("llmops.backends.slurm.transport.LocalTransport.run",
                        lambda self, argv, timeout=60: __import__("subprocess").CompletedProcess(argv, 1, "", "no"))
    with pytest.raises(UserError, match="Slurm refused"):  # stops at sbatch: the file is written by then
        request.secrets = {"HF_TOKEN": VALUE}
        SlurmBackend().submit(request, __import__("llmops.runs.rundir", fromlist=["RunDir"]).RunDir.create(
            request.spec, request.run_path))
    path = tmp_path / "sec-1" / "secrets.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == f"HF_TOKEN={VALUE}\n"
    assert VALUE not in _everything_written(tmp_path / "sec-1")
