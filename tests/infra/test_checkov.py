"""Static security scan of the Terraform, the add-on manifests and cluster/k8s with checkov.

checkov pins versions of packages the project also uses, so it lives in its
own virtual environment; the tests find it through $LLMOPS_CHECKOV (the
checkov executable) or PATH and skip with the reason otherwise. A finding
is either fixed or skipped in the code with its reason; these tests fail on
any other finding and on a skip without a reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from llmops_testing.terraform import REPO, TERRAFORM_DIR


@pytest.fixture(scope="module")
def checkov() -> str:
    path = os.environ.get("LLMOPS_CHECKOV") or shutil.which("checkov")
    if not path:
        pytest.skip("checkov is not installed: python3 -m venv DIR && DIR/bin/pip install checkov==3.3.30, "
                    "then set LLMOPS_CHECKOV=DIR/bin/checkov (its own venv: it pins packages llmops also uses)")
    return path


def scan(checkov: str, folder: Path, *frameworks: str) -> list[dict]:
    proc = subprocess.run([checkov, "-d", str(folder), "--framework", *frameworks, "--skip-download",
                           "-o", "json"], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false"))
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    reports = json.loads(proc.stdout)
    return reports if isinstance(reports, list) else [reports]


def _findings(reports: list[dict]) -> list[str]:
    return [f"{c['check_id']} {c['resource']} ({c['file_path']})"
            for r in reports for c in r.get("results", {}).get("failed_checks", [])]


def test_terraform_and_addons_have_no_unexplained_findings(checkov):
    reports = scan(checkov, TERRAFORM_DIR, "terraform", "kubernetes")
    assert {r["check_type"] for r in reports} == {"terraform", "kubernetes"}
    assert not _findings(reports), "fix these or skip them in the code with a reason:\n" + "\n".join(_findings(reports))
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 300, f"only {passed} checks passed: did checkov parse the modules?"
    skipped = [c for r in reports for c in r["results"].get("skipped_checks", [])]
    unexplained = [c["check_id"] for c in skipped
                   if len((c.get("check_result") or {}).get("suppress_comment", "")) < 20]
    assert skipped and not unexplained, f"skips without a reason: {unexplained}"


def test_images_have_no_findings(checkov):
    reports = scan(checkov, REPO / "infra" / "docker", "dockerfile")
    assert not _findings(reports), "\n".join(_findings(reports))
    assert sum(r["summary"]["passed"] for r in reports) > 50


def test_platform_manifests_have_no_findings(checkov):
    """cluster/k8s rendered through kustomize, as it is applied (namespaces resolved)."""
    if not (REPO / "cluster" / "k8s" / "base" / "kustomization.yaml").is_file():
        pytest.skip("cluster/k8s has no kustomize base yet")
    reports = scan(checkov, REPO / "cluster" / "k8s", "kustomize")
    assert not _findings(reports), "\n".join(_findings(reports))
    assert sum(r["summary"]["passed"] for r in reports) > 0


def test_the_scan_catches_an_insecure_launch_template(checkov, tmp_path):
    """The gate can fail: IMDSv1 and an unencrypted volume are reported."""
    (tmp_path / "main.tf").write_text('''
resource "aws_launch_template" "bad" {
  name = "bad"
  metadata_options {
    http_tokens = "optional"
  }
  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      encrypted = false
    }
  }
}
''')
    found = {f.split()[0] for f in _findings(scan(checkov, tmp_path, "terraform"))}
    assert "CKV_AWS_79" in found  # IMDSv1 allowed
