"""`llmops provision` without --yes asks before it creates or destroys, and applies the very plan it showed.

Real terraform, offline: the environment is a stand-in made of Terraform's builtin resources and the AWS
environment's real variables (llmops_testing.provision.stand_in), with its state in the cluster folder.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from llmops_testing.provision import offline_env, stand_in

pytestmark = pytest.mark.terraform
AWS = ["aws", "--name", "llm", "--nodes", "1", "--gpu-type", "p5.48xlarge", "--region", "us-east-1"]


def provision(*args: str, env: dict[str, str], answer: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmops", "provision", *args], env=env, input=answer,
                          capture_output=True, text=True, timeout=120)


def resources(env: dict[str, str]) -> list[str]:
    folder = f"{env['LLMOPS_CLUSTERS_DIR']}/llm/terraform/environments/aws"
    listed = subprocess.run([env["LLMOPS_TERRAFORM"], "state", "list"], cwd=folder, env=env, capture_output=True,
                            text=True, timeout=60)
    return listed.stdout.split()


def test_an_answer_other_than_yes_changes_nothing_and_says_so(tmp_path, terraform):
    """Terraform's own prompt answered "no" exits 1 like a failure, and llmops said "`terraform apply` failed
    ... fix the cause" to a user who had only changed their mind. llmops now plans, asks and applies that
    plan; any answer but yes is "cancelled", with nothing created or destroyed."""
    env = offline_env(tmp_path, terraform) | stand_in(tmp_path, 'resource "terraform_data" "cluster" {\n'
                                                                '  input = var.name\n}\n')
    declined = provision(*AWS, env=env, answer="no\n")
    assert declined.returncode == 1, declined.stdout + declined.stderr
    assert "cancelled: nothing was created or changed" in declined.stderr and "failed" not in declined.stderr
    assert "Fix: run the same command again and answer yes, or add --yes" in declined.stderr
    shown = re.sub(r"\x1b\[[0-9;]*m", "", declined.stdout)  # Terraform's colours
    assert "terraform_data.cluster will be created" in shown  # the plan the question is about
    assert resources(env) == []

    created = provision(*AWS, env=env, answer="yes\n")
    assert created.returncode == 0, created.stdout + created.stderr
    assert resources(env) == ["terraform_data.cluster"]

    for answer in ("", "y\n"):  # no answer (stdin closed), or anything short of yes
        kept = provision("aws", "--name", "llm", "--destroy", env=env, answer=answer)
        assert kept.returncode == 1 and "cancelled: nothing was destroyed" in kept.stderr, kept.stderr
        assert resources(env) == ["terraform_data.cluster"]
    destroyed = provision("aws", "--name", "llm", "--destroy", env=env, answer="yes\n")
    assert destroyed.returncode == 0 and "cluster 'llm' destroyed" in destroyed.stdout + destroyed.stderr
    assert resources(env) == []
