"""Golden files: the sbatch scripts and submit.sh that `llmops render --backend slurm` writes.

A change to the rendered scripts shows up as a diff of the files in golden/, to be read in review.
Regenerate them with:  LLMOPS_REGEN_GOLDEN=1 pytest tests/backends/slurm/test_render.py
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from llmops import runner
from llmops.spec.load import load_spec

HERE = Path(__file__).parent
SPECS = sorted((HERE / "specs").glob("*.yaml"))
REGEN = os.environ.get("LLMOPS_REGEN_GOLDEN") == "1"


def render(spec_path: Path, tmp_path: Path, *, neutral: bool = True) -> dict[str, str]:
    """Render a spec as `llmops render` does; `neutral` writes the local run directory as <run-dir>."""
    spec = load_spec(spec_path)
    out = tmp_path / f"{spec.name}-20260101-000000"
    written = runner.render(runner.plan(spec, path=out))
    local = str(out.resolve())
    return {p.relative_to(out).as_posix(): p.read_text().replace(local, "<run-dir>" if neutral else local)
            for p in written}


def check_golden(name: str, text: str) -> None:
    golden = HERE / "golden" / name
    if REGEN:
        golden.write_text(text)
        return
    assert golden.exists(), f"no golden file {golden.name}; create it with LLMOPS_REGEN_GOLDEN=1"
    assert text == golden.read_text(), f"{name} differs from its golden file; if intended, regenerate it"


@pytest.mark.parametrize("spec_path", SPECS, ids=[p.stem for p in SPECS])
def test_rendered_scripts_match_golden_files(spec_path: Path, tmp_path: Path) -> None:
    files = render(spec_path, tmp_path)
    stages = load_spec(spec_path).stages
    # A batch script per torchrun stage; data preparation goes through submitit, from submit.sh.
    assert set(files) == {"spec.yaml", "slurm/submit.sh"} | {f"slurm/{s}.sbatch" for s in stages if s != "prepare"}
    for stage in stages:
        if stage != "prepare":
            check_golden(f"{spec_path.stem}.{stage}.sbatch", files[f"slurm/{stage}.sbatch"])
    check_golden(f"{spec_path.stem}.submit.sh", files["slurm/submit.sh"])


def test_chain_submits_each_stage_after_the_one_before(tmp_path: Path) -> None:
    files = render(HERE / "specs" / "chain-prepare-align.yaml", tmp_path)
    submit = files["slurm/submit.sh"]
    order = [submit.index(f"# Stage {i}: {s}") for i, s in enumerate(("prepare", "pretrain", "sft"), 1)]
    assert order == sorted(order)
    assert "-m llmops.backends.slurm.fanout \"$RUN_DIR\" prepare" in submit
    assert submit.count('${DEP:+--dependency="$DEP"}') == 3 and submit.count('DEP="afterok:${ids##* }"') == 3
    assert 'STAGE=sft' in files["slurm/sft.sbatch"] and 'LLMOPS_STAGE="$STAGE"' in files["slurm/sft.sbatch"]


def test_reference_scripts_in_cluster_slurm_are_what_llmops_renders(tmp_path: Path) -> None:
    """cluster/slurm/reference/ shows platform engineers the real output; it must not drift from it."""
    reference = HERE.parents[2] / "cluster" / "slurm" / "reference"
    files = render(reference / "gpt-1b3-dgx.yaml", tmp_path)
    for name in ("pretrain.sbatch", "submit.sh"):
        target = reference / name
        if REGEN:
            target.write_text(files[f"slurm/{name}"])
        assert files[f"slurm/{name}"] == target.read_text(), f"{target} is stale; regenerate it"


@pytest.mark.parametrize("spec_path", SPECS, ids=[p.stem for p in SPECS])
def test_rendered_scripts_are_valid_bash(spec_path: Path, tmp_path: Path) -> None:
    for name, text in render(spec_path, tmp_path, neutral=False).items():
        if name.endswith((".sbatch", ".sh")):
            res = subprocess.run(["bash", "-n"], check=False, input=text, capture_output=True, text=True)
            assert res.returncode == 0, f"{name}: {res.stderr}"


def test_pyxis_profile_puts_the_container_on_srun(tmp_path: Path) -> None:
    script = render(HERE / "specs" / "gpu-dgx-pyxis.yaml", tmp_path)["slurm/pretrain.sbatch"]
    assert "CONTAINER=(\n    --container-image=/lustre/images/llmops-pytorch-24.07.sqsh\n" in script
    # The runs folder on the cluster is always mounted; the site's mounts follow.
    assert "--container-mounts='/lustre/llmops/runs:/lustre/llmops/runs,/lustre:/lustre'" in script
    assert "grep -q -- --container-image" not in script  # the profile says pyxis is there: no probing
    assert "#SBATCH --gpus-per-node=h100:8" in script and "#SBATCH --exclusive" in script
    assert "export NCCL_IB_HCA='=mlx5_0,mlx5_3," in script  # the profile's network environment


def test_auto_container_falls_back_where_pyxis_is_absent(tmp_path: Path) -> None:
    script = render(HERE / "specs" / "gpu-gres-auto-container.yaml", tmp_path)["slurm/pretrain.sbatch"]
    assert "if srun --help 2>&1 | grep -q -- --container-image; then" in script
    assert "running without the container image" in script
    assert "#SBATCH --gres=gpu:a100:4" in script


def test_cpu_run_without_container_or_gpus(tmp_path: Path) -> None:
    script = render(HERE / "specs" / "cpu-dev-local.yaml", tmp_path)["slurm/pretrain.sbatch"]
    assert "CONTAINER=()" in script and "--gpus" not in script and "--gres" not in script
    assert "#SBATCH --exclusive" not in script  # the slurm-dev profile shares nodes
    assert "export CUDA_VISIBLE_DEVICES=" in script
    assert "RUN_DIR=<run-dir>" in script


def test_profile_settings_are_resolved_into_the_run_directory(tmp_path: Path) -> None:
    files = render(HERE / "specs" / "gpu-dgx-pyxis.yaml", tmp_path)
    slurm = yaml.safe_load(files["spec.yaml"])["slurm"]
    # The spec's own settings win; the profile fills the rest, and restarts read only spec.yaml.
    assert slurm["account"] == "team-nlp" and slurm["partition"] == "batch"
    assert slurm["remote_root"] == "/lustre/llmops/runs" and slurm["login"] == "dgx-login"
    assert slurm["env"]["NCCL_SOCKET_IFNAME"] == "bond0"
    assert slurm["setup"] == ["ulimit -n 65536"]
