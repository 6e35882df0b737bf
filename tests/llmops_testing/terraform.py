"""Helpers for the infra tests (import as `from llmops_testing.terraform import ...`).

The terraform binary, its offline provider copy, checkov.

Nothing here reaches a cloud or a registry. Tests that need a tool skip with
the reason when it is absent:

* ``terraform`` on PATH (or ``$LLMOPS_TERRAFORM``);
* a local copy of the hashicorp/aws provider: ``$LLMOPS_TF_PLUGIN_DIR`` (the
  folder that holds ``registry.terraform.io/``), else Terraform's own implied
  mirror folders, else a shallow search of /opt and /usr/local/share;
* ``checkov``: ``$LLMOPS_CHECKOV`` or PATH (it pins packages that clash with
  the project's, so CI installs it in a virtual environment of its own).
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "infra" / "terraform"


def terraform_bin() -> str | None:
    return os.environ.get("LLMOPS_TERRAFORM") or shutil.which("terraform")


def _platform() -> str:
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
    return f"{platform.system().lower()}_{machine}"


def plugin_dir() -> Path | None:
    """A folder with registry.terraform.io/hashicorp/aws/<version>/<os_arch>/terraform-provider-aws*."""
    home = Path.home()
    xdg = [Path(p) / "terraform" / "plugins" for p in os.environ.get("XDG_DATA_DIRS", "").split(":") if p]
    candidates = [os.environ.get("LLMOPS_TF_PLUGIN_DIR"), home / ".terraform.d" / "plugins",
                  home / ".local" / "share" / "terraform" / "plugins", *xdg,
                  "/usr/local/share/terraform/plugins", "/usr/share/terraform/plugins",
                  *(str(Path(p).parent) for p in glob.glob("/opt/*/registry.terraform.io")),
                  *(str(Path(p).parent) for p in glob.glob("/usr/local/share/*/registry.terraform.io"))]
    for c in candidates:
        if c and glob.glob(f"{c}/registry.terraform.io/hashicorp/aws/*/{_platform()}/terraform-provider-aws*"):
            return Path(c)
    return None


def tf_env() -> dict[str, str]:
    """Terraform environment for tests: no prompts, no version check calls, no broken CLI config."""
    env = dict(os.environ, TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1", TF_INPUT="0")
    if env.get("TF_CLI_CONFIG_FILE") and not Path(env["TF_CLI_CONFIG_FILE"]).is_file():
        env.pop("TF_CLI_CONFIG_FILE")  # a missing file makes every command print a warning
    return env


def run_tf(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([terraform_bin(), *args, "-no-color"] if args[0] not in ("fmt",) else
                          [terraform_bin(), *args], cwd=cwd, env=tf_env(), capture_output=True, text=True,
                          timeout=timeout)


def tf_init(folder: Path, plugins: Path) -> None:
    proc = run_tf("init", "-backend=false", "-input=false", f"-plugin-dir={plugins}", cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Fixtures: the infra and provision tests' conftest.py files import them.

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
