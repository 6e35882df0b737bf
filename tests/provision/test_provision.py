"""`llmops provision` end to end through the real CLI process, never reaching a cloud.

Error paths run for real (no terraform on PATH, no credentials, bad
arguments). The success paths use stand-ins for terraform and kubectl that
record what llmops asked of them; the tfvars llmops writes are then planned
by the real Terraform against the mocked AWS provider, so that the file and
the environment's variables cannot drift apart.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmops_testing.provision import AWS_FACTS, base_env, calls, install_fakes
from llmops_testing.terraform import run_tf, tf_init

AWS_ARGS = ["aws", "--name", "llm", "--nodes", "4", "--gpu-type", "p5.48xlarge", "--region", "us-east-1"]


def provision(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmops", "provision", *args], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return base_env(tmp_path) | install_fakes(tmp_path / "bin")


@pytest.mark.parametrize("args, message", [
    (["aws", "--nodes", "0", "--gpu-type", "p5.48xlarge", "--region", "us-east-1"], "--nodes 0 is out of range"),
    (["aws", "--nodes", "2", "--gpu-type", "m5.large", "--region", "us-east-1"], "not an AWS GPU instance type"),
    (["aws", "--nodes", "2", "--gpu-type", "p5.48xlarge"], "no region given"),
    (["aws", "--nodes", "2", "--gpu-type", "p5.48xlarge", "--region", "us-east-1", "--name", "My_Cluster"],
     "not a valid cluster name"),
    (["aws", "--nodes", "2", "--gpu-type", "p5.48xlarge", "--region", "us-east-1", "--api-cidr", "0.0.0.0/0"],
     "whole internet"),
    (["aws", "--nodes", "2", "--gpu-type", "p5.48xlarge", "--region", "us-east-1", "--reservation",
      "cr-0123456789abcdef0"], "--reservation needs --zone"),
    (["gcp", "--nodes", "2", "--gpu-type", "a3-highgpu-8g", "--region", "us-central1"], "unknown cloud 'gcp'"),
    (["oci", "--nodes", "2", "--gpu-type", "BM.GPU.H100.8", "--region", "us-ashburn-1"], "--tenancy is missing"),
    (["oci", "--nodes", "2", "--gpu-type", "VM.GPU.A10.1", "--region", "us-ashburn-1"], "not an RDMA bare-metal"),
    (["aws", "--plan", "--destroy", "--gpu-type", "p5.48xlarge", "--region", "us-east-1"], "both given"),
    ([*AWS_ARGS, "--zone", "us-west-2a"], "--zone 'us-west-2a' is not a zone of us-east-1"),
    ([*AWS_ARGS, "--capacity-block"], "--capacity-block qualifies a --reservation"),
    ([*AWS_ARGS, "--tenancy", "ocid1.tenancy.oc1..x"], "--tenancy: no effect on aws"),
    (["oci", "--nodes", "2", "--gpu-type", "BM.GPU.H100.8", "--region", "us-ashburn-1", "--tenancy",
      "ocid1.tenancy.oc1..a", "--compartment", "ocid1.compartment.oc1..b", "--gpu-image", "ocid1.image.oc1..c",
      "--zone", "us-ashburn-1"], "is not an OCI availability domain"),
    (["oci", "--nodes", "2", "--gpu-type", "BM.GPU.H100.8", "--region", "us-ashburn-1", "--tenancy",
      "ocid1.tenancy.oc1..a", "--compartment", "ocid1.compartment.oc1..b", "--gpu-image", "ocid1.image.oc1..c",
      "--zone", "Uocm:US-ASHBURN-AD-1", "--reservation", "cr-0123456789abcdef0"], "not a capacity reservation OCID"),
])
def test_bad_arguments_exit_2_with_the_fix_before_terraform_runs(args, message, env):
    proc = provision(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert calls(env) == []


def test_missing_terraform_exits_2(env):
    env = env | {"PATH": str(Path(sys.executable).parent)}
    env.pop("LLMOPS_TERRAFORM")
    proc = provision(*AWS_ARGS, env=env)
    assert proc.returncode == 2 and "Terraform is not installed" in proc.stderr and "LLMOPS_TERRAFORM" in proc.stderr


def test_missing_aws_credentials_exit_2(env):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key)
    proc = provision(*AWS_ARGS, env=env)
    assert proc.returncode == 2 and "no AWS credentials found" in proc.stderr
    assert [c["argv"][0] for c in calls(env)] == ["version"]  # only the version check ran


def test_aws_profile_in_the_config_file_counts_as_credentials(env):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key)
    aws = Path(env["HOME"]) / ".aws"
    aws.mkdir()
    (aws / "config").write_text("[profile sso]\nsso_session = corp\nregion = us-east-1\n")
    assert provision(*AWS_ARGS, "--plan", env=env).returncode == 0


def test_missing_oci_config_exits_2(env):
    proc = provision("oci", "--nodes", "2", "--gpu-type", "BM.GPU.H100.8", "--region", "us-ashburn-1",
                     "--tenancy", "ocid1.tenancy.oc1..a", "--compartment", "ocid1.compartment.oc1..b",
                     "--gpu-image", "ocid1.image.oc1..c", env=env)
    assert proc.returncode == 2 and "no OCI credentials found" in proc.stderr and "oci setup config" in proc.stderr


def test_plan_writes_the_folder_and_runs_init_then_plan_only(env, tmp_path):
    proc = provision(*AWS_ARGS, "--zone", "us-east-1b", "--reservation", "cr-0123456789abcdef0",
                     "--capacity-block", "--api-cidr", "203.0.113.0/24", "--plan", env=env)
    assert proc.returncode == 0, proc.stderr
    env_dir = tmp_path / "clusters" / "llm" / "terraform" / "environments" / "aws"
    assert [c["argv"][0] for c in calls(env) if c["argv"][0] != "version"] == ["init", "plan"]
    assert all(c["cwd"] == str(env_dir) for c in calls(env) if c["argv"][0] != "version")
    assert "-out=llmops.tfplan" in calls(env)[-1]["argv"]
    tfvars = json.loads((env_dir / "llmops.auto.tfvars.json").read_text())
    assert tfvars == {"name": "llm", "region": "us-east-1", "gpu_node_count": 4, "gpu_instance_type": "p5.48xlarge",
                      "gpu_availability_zone": "us-east-1b",
                      "capacity_reservation": {"id": "cr-0123456789abcdef0", "type": "capacity-block"},
                      "endpoint_public_access_cidrs": ["203.0.113.0/24"]}
    copied = env_dir.parents[1] / "modules" / "aws-gpu-nodes"
    assert (copied / "main.tf").is_file() and not (copied / "tests").exists()
    assert not (Path(env["HOME"]) / ".config" / "llmops" / "profiles" / "llm.yaml").exists()


def test_apply_hands_back_kubeconfig_profile_and_addons(env, tmp_path):
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(AWS_FACTS))
    proc = provision(*AWS_ARGS, "--yes", env=env | {"FAKE_FACTS": str(facts)})
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "clusters" / "llm"
    tf = [c["argv"] for c in calls(env) if c["tool"] == "terraform" and c["argv"][0] != "version"]
    assert tf == [["init", "-input=false"], ["apply", "-input=false", "-auto-approve"], ["output", "-json", "cluster"]]
    kube = root / "kubeconfig"
    assert kube.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(kube.read_text())["clusters"][0]["cluster"]["server"] == AWS_FACTS["endpoint"]
    profile = yaml.safe_load((Path(env["HOME"]) / ".config/llmops/profiles/llm.yaml").read_text())
    assert profile["k8s"]["network"] == "efa" and profile["k8s"]["efa_per_node"] == 32
    kubectl = [c["argv"] for c in calls(env) if c["tool"] == "kubectl"]
    applied = [a[a.index("-k") + 1] if "-k" in a else a[a.index("-f") + 1] for a in kubectl if a[0] == "apply"]
    assert applied[0].endswith("environments/aws/addons") and applied[-1].endswith("k8s/shared-volume.yaml")
    if (Path(__file__).resolve().parents[2] / "cluster/k8s/overlays/aws/kustomization.yaml").is_file():
        platform = list(yaml.safe_load_all((root / "k8s" / "platform.yaml").read_text()))
        assert [o["kind"] for o in platform] == ["Namespace", "ServiceAccount"]  # no dynamic claim or class
        assert any(p.endswith("k8s/platform.yaml") for p in applied)
    assert "is ready" in proc.stderr
    assert _labels_after_server_side_apply(kubectl, root, "Namespace", "llmops").get(
        "pod-security.kubernetes.io/enforce") == ("restricted" if any("platform" in p for p in applied) else None)


def _labels_after_server_side_apply(kubectl: list[list[str]], root: Path, kind: str, name: str) -> dict:
    """An object's labels after the applies in order, merged as server-side apply does: each field manager owns
    the labels it applied last; an apply drops the labels its manager set before and leaves out now, and keeps
    every other manager's."""
    owned: dict[str, dict] = {}
    for argv in kubectl:
        if argv[0] != "apply" or "-f" not in argv:
            continue
        manager = next(a.split("=", 1)[1] for a in argv if a.startswith("--field-manager="))
        for obj in yaml.safe_load_all(Path(argv[argv.index("-f") + 1]).read_text()):
            if obj and obj["kind"] == kind and obj["metadata"]["name"] == name:
                owned[manager] = obj["metadata"].get("labels") or {}
    merged: dict = {}
    for labels in owned.values():
        merged |= labels
    return merged


def test_private_api_prints_the_remaining_steps_instead_of_failing(env, tmp_path):
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(AWS_FACTS | {"endpoint_public": False}))
    proc = provision(*AWS_ARGS, "--yes", env=env | {"FAKE_FACTS": str(facts)})
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls(env) if c["tool"] == "kubectl" and c["argv"][0] == "apply"]
    assert "The Kubernetes API is private" in proc.stderr and "kubectl apply --server-side" in proc.stderr


def test_terraform_failure_exits_1_and_says_how_to_resume(env):
    proc = provision(*AWS_ARGS, "--yes", env=env | {"FAKE_FAIL": "apply"})
    assert proc.returncode == 1
    assert "`terraform apply` failed" in proc.stderr and "resumes from its state" in proc.stderr


def test_destroy_needs_state_then_removes_profile_and_kubeconfig(env, tmp_path):
    proc = provision("aws", "--name", "llm", "--destroy", env=env)
    assert proc.returncode == 2 and "no cluster 'llm' to destroy" in proc.stderr
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(AWS_FACTS | {"endpoint_public": False}))
    assert provision(*AWS_ARGS, "--yes", env=env | {"FAKE_FACTS": str(facts)}).returncode == 0
    profile = Path(env["HOME"]) / ".config/llmops/profiles/llm.yaml"
    assert profile.exists()
    proc = provision("aws", "--name", "llm", "--destroy", "--yes", env=env)
    assert proc.returncode == 0, proc.stderr
    assert calls(env)[-1]["argv"] == ["destroy", "-input=false", "-auto-approve"]
    assert not profile.exists() and not (tmp_path / "clusters/llm/kubeconfig").exists()


@pytest.mark.terraform
def test_tfvars_written_by_llmops_plan_with_real_terraform(env, tmp_path, aws_plugins):
    """The folder llmops prepares, planned by real Terraform (mocked provider): inputs arrive intact."""
    proc = provision(*AWS_ARGS, "--zone", "us-east-1c", "--reservation", "cr-0123456789abcdef0", "--plan", env=env)
    assert proc.returncode == 0, proc.stderr
    env_dir = tmp_path / "clusters" / "llm" / "terraform" / "environments" / "aws"
    repo_tests = Path(__file__).resolve().parents[2] / "infra/terraform/environments/aws/tests/inputs.tftest.hcl"
    mock = repo_tests.read_text()
    mock = mock[mock.index("mock_provider"):mock.index("variables {")]
    (env_dir / "tests").mkdir()
    (env_dir / "tests" / "llmops.tftest.hcl").write_text(mock + '''
run "llmops_inputs_reach_the_plan" {
  command = plan
  assert {
    condition     = output.cluster.gpu_node_count == 4 && output.cluster.gpu_instance_type == "p5.48xlarge"
    error_message = "node count or instance type lost"
  }
  assert {
    condition     = output.cluster.gpu_zone == "us-east-1c" && output.gpu_placement_group == null
    error_message = "zone or reservation lost"
  }
}
''')
    tf_init(env_dir, aws_plugins)
    result = run_tf("test", cwd=env_dir)
    assert result.returncode == 0 and re.search(r"1 passed, 0 failed", result.stdout), result.stdout + result.stderr
    shutil.rmtree(env_dir / ".terraform")


def test_folders_and_profiles_llmops_did_not_make_are_never_overwritten_or_destroyed(env, tmp_path):
    """--workdir at a folder of the user's own Terraform copied llmops's code over it, and --destroy ran there
    (or, with --name alpha and the folder of beta, destroyed beta and removed alpha's profile); a hand-written
    profile of the cluster's name was replaced by apply and deleted by destroy."""
    mine = tmp_path / "mine"
    (mine / "terraform" / "environments" / "aws").mkdir(parents=True)
    (mine / "terraform" / "environments" / "aws" / "main.tf").write_text("# the user's own\n")
    for args in ([*AWS_ARGS, "--plan"], ["aws", "--name", "llm", "--destroy", "--yes"]):
        proc = provision(*args, "--workdir", str(mine), env=env)
        assert proc.returncode == 2 and "is not a cluster folder llmops made" in proc.stderr, proc.stderr
    assert (mine / "terraform" / "environments" / "aws" / "main.tf").read_text() == "# the user's own\n"

    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(AWS_FACTS | {"endpoint_public": False}))
    beta = tmp_path / "beta"
    beta_args = ["aws", "--name", "beta", "--nodes", "2", "--gpu-type", "p5.48xlarge", "--region", "us-east-1"]
    assert provision(*beta_args, "--yes", "--workdir", str(beta), env=env | {"FAKE_FACTS": str(facts)}).returncode == 0
    proc = provision("aws", "--name", "alpha", "--destroy", "--yes", "--workdir", str(beta), env=env)
    assert proc.returncode == 2 and "is the folder of cluster 'beta'" in proc.stderr, proc.stderr
    assert not [c for c in calls(env) if c["argv"][0] == "destroy"]

    # An earlier copy's files are replaced, not merged; what the user added to the folder stays.
    record = json.loads((beta / "llmops-cluster.json").read_text())
    (beta / "terraform" / "modules" / "renamed-since.tf").write_text("# an earlier copy's\n")
    (beta / "llmops-cluster.json").write_text(json.dumps(record | {"copied": [*record["copied"],
                                                                              "terraform/modules/renamed-since.tf"]}))
    (beta / "terraform" / "environments" / "aws" / "backend.tf").write_text("# the user's remote state\n")
    assert provision(*beta_args, "--plan", "--workdir", str(beta), env=env).returncode == 0
    assert not (beta / "terraform" / "modules" / "renamed-since.tf").exists()
    assert (beta / "terraform" / "environments" / "aws" / "backend.tf").exists()

    profiles = Path(env["HOME"]) / ".config/llmops/profiles"
    (profiles / "llm.yaml").write_text("# mine, by hand\nk8s: {network: rdma}\n")
    proc = provision(*AWS_ARGS, "--yes", env=env | {"FAKE_FACTS": str(facts)})
    assert proc.returncode == 2 and "was not written by `llmops provision`" in proc.stderr, proc.stderr
    assert (profiles / "llm.yaml").read_text().startswith("# mine, by hand")
    (profiles / "beta.yaml").write_text("# rewritten by hand after provisioning\n")
    proc = provision("aws", "--name", "beta", "--destroy", "--yes", "--workdir", str(beta), env=env)
    assert proc.returncode == 0 and "beta.yaml kept" in proc.stderr, proc.stderr
    assert (profiles / "beta.yaml").exists() and not (beta / "kubeconfig").exists()

    # A cluster folder an llmops older than the marker made is still its own: its tfvars name the cluster
    (beta / "llmops-cluster.json").unlink()
    (beta / "terraform" / "environments" / "aws" / "terraform.tfstate").write_text("{}")
    proc = provision("aws", "--name", "beta", "--destroy", "--yes", "--workdir", str(beta), env=env)
    assert proc.returncode == 0, proc.stderr
