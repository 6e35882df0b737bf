"""Real Terraform on the real code: fmt for every file, validate and `terraform test` for AWS.

`terraform test` runs the *.tftest.hcl files beside each module against
`mock_provider "aws"` (the provider's real schema and validation, no API
calls). The OCI provider is not available offline; test_hcl_structure.py
covers the OCI code.
"""

from __future__ import annotations

import re

import pytest

from llmops_testing.terraform import TERRAFORM_DIR, run_tf, tf_init

pytestmark = pytest.mark.terraform

AWS_TESTED = ["modules/aws-gpu-nodes", "modules/aws-eks", "modules/aws-storage", "environments/aws"]


def test_every_terraform_file_is_formatted(terraform):
    proc = run_tf("fmt", "-check", "-recursive", "-diff", cwd=TERRAFORM_DIR)
    assert proc.returncode == 0, f"run `terraform fmt -recursive infra/terraform`:\n{proc.stdout}{proc.stderr}"


def test_aws_environment_validates_with_the_real_provider(tf_tree, aws_plugins):
    env = tf_tree / "environments" / "aws"
    tf_init(env, aws_plugins)
    proc = run_tf("validate", cwd=env)
    assert proc.returncode == 0 and "The configuration is valid" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("folder", AWS_TESTED)
def test_terraform_test_runs_every_case_and_all_pass(folder, tf_tree, aws_plugins):
    root = tf_tree / folder
    expected = sum(len(re.findall(r'^run "', f.read_text(), re.M)) for f in (root / "tests").glob("*.tftest.hcl"))
    assert expected > 0, f"{folder} has no terraform test runs"
    if not (root / ".terraform").is_dir():
        tf_init(root, aws_plugins)
    proc = run_tf("test", cwd=root)
    summary = re.search(r"(\d+) passed, (\d+) failed", proc.stdout)
    assert proc.returncode == 0 and summary, proc.stdout + proc.stderr
    assert (int(summary[1]), int(summary[2])) == (expected, 0), proc.stdout


def test_a_broken_plan_makes_terraform_test_fail(tf_tree, aws_plugins, tmp_path):
    """The harness notices failures: an assertion the GPU module cannot meet must fail the run."""
    root = tf_tree / "modules" / "aws-gpu-nodes"
    if not (root / ".terraform").is_dir():
        tf_init(root, aws_plugins)
    broken = root / "tests" / "zz_broken.tftest.hcl"
    original = (root / "tests" / "gpu_nodes.tftest.hcl").read_text()
    head = original[:original.index("run \"")]
    broken.write_text(head + '''run "metadata_v1_would_be_caught" {
  command = plan
  assert {
    condition     = aws_launch_template.gpu.metadata_options[0].http_tokens == "optional"
    error_message = "expected failure"
  }
}
''')
    try:
        proc = run_tf("test", "-filter=tests/zz_broken.tftest.hcl", cwd=root)
    finally:
        broken.unlink()
    assert proc.returncode != 0 and "0 passed, 1 failed" in proc.stdout, proc.stdout
