"""Fixtures of the infra tests; the helpers behind them are in tf_testing.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from infra.tf_testing import TERRAFORM_DIR, plugin_dir, terraform_bin


@pytest.fixture(scope="session")
def terraform() -> str:
    path = terraform_bin()
    if not path:
        pytest.skip("terraform is not installed (install Terraform >= 1.9 or set LLMOPS_TERRAFORM)")
    return path


@pytest.fixture(scope="session")
def aws_plugins(terraform) -> Path:
    found = plugin_dir()
    if found is None:
        pytest.skip("no offline copy of the hashicorp/aws provider: set LLMOPS_TF_PLUGIN_DIR to the folder "
                    "that holds registry.terraform.io/")
    return found


@pytest.fixture(scope="session")
def tf_tree(tmp_path_factory) -> Path:
    """A copy of infra/terraform, so that init never writes .terraform/ into the checkout."""
    dest = tmp_path_factory.mktemp("tf") / "terraform"
    shutil.copytree(TERRAFORM_DIR, dest, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*",
                                                                      ".terraform.lock.hcl"))
    return dest
