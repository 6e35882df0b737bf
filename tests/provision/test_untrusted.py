"""`llmops provision` with careless and hostile input, through the real CLI and the real terraform binary.

Every value of the command line reaches Terraform: a value llmops passes must
be one Terraform takes and the cloud reads as meant (the compartment OCID is
written into IAM policy text). The variables.tf files refuse the same values,
for hand-written tfvars. Terraform runs for real and offline: its CLI
configuration points at an empty provider mirror, and where a test needs a
whole provision (apply, Ctrl-C, destroy) the environment folder is a stand-in
made of builtin resources and the real variables.tf, since no cloud answers
here.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from llmops_testing.provision import offline_env, stand_in
from llmops_testing.terraform import TERRAFORM_DIR

pytestmark = pytest.mark.terraform  # the terraform binary; no provider (none is reached)
AWS = ["aws", "--name", "llm", "--nodes", "1", "--gpu-type", "p5.48xlarge", "--region", "us-east-1"]
OCI = ["oci", "--name", "llm", "--nodes", "2", "--gpu-type", "BM.GPU.H100.8", "--region", "us-ashburn-1",
       "--tenancy", "ocid1.tenancy.oc1..aaaa", "--compartment", "ocid1.compartment.oc1..bbbb",
       "--gpu-image", "ocid1.image.oc1.iad.cccc"]
# Runs a command with SIGINT at its default, whatever this test process inherited (a shell's background job
# ignores it), so that the interrupt test's Ctrl-C reaches llmops as it would from a terminal.
_DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.argv[1], sys.argv[1:])")


@pytest.fixture
def env(tmp_path, terraform) -> dict[str, str]:
    return offline_env(tmp_path, terraform)


def provision(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmops", "provision", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    ([*AWS, "--name", "llm\n"], "--name 'llm\\n' is not a valid cluster name"),
    ([*AWS, "--region", "us-east-1\n"], "is not an AWS region"),
    ([*AWS, "--gpu-type", "p5.48xlarge\n"], "is not an AWS GPU instance type"),
    ([*AWS, "--zone", "us-east-1a", "--reservation", "cr-0123456789abcdef0\n"], "is not a capacity reservation ID"),
    ([*AWS, "--api-cidr", "203.0.113.7"], "--api-cidr '203.0.113.7' is not an IPv4 CIDR block"),
    ([*AWS, "--api-cidr", "10.0.0.0/255.0.0.0"], "is not an IPv4 CIDR block"),
    ([*OCI, "--region", "us-ashburn-1\n"], "is not an OCI region"),
    ([*OCI, "--zone", "Uocm:US-ASHBURN-AD-1\n"], "is not an OCI availability domain"),
    ([*OCI, "--compartment", "ocid1.compartment.oc1..bbbb where any {request.principal.type != 'x'}"],
     "--compartment is \"ocid1.compartment.oc1..bbbb where any"),
    ([*OCI, "--compartment", "ocid1.compartment.oc1..bbbb'} , ANY {instance.id != '"], "not an OCID of that kind"),
    ([*OCI, "--tenancy", "ocid1.tenancy.oc1..aaaa\n"], "--tenancy is 'ocid1.tenancy.oc1..aaaa\\n'"),
    ([*OCI, "--gpu-image", 'ocid1.image.oc1..c"}'], "--gpu-image is 'ocid1.image.oc1..c\"}', not an OCID"),
    ([*OCI, "--zone", "Uocm:US-ASHBURN-AD-1", "--reservation", "ocid1.capacityreservation.oc1..x y"],
     "is not a capacity reservation OCID"),
])
def test_values_terraform_or_the_cloud_would_misread_are_refused_before_anything_is_written(args, message, env,
                                                                                             tmp_path):
    """`$` of re.match also matched before a final newline ('llm\\n' made a folder of that name, then failed in
    `terraform plan` with exit 1); OCIDs were checked by their first characters only, and the compartment is
    written into IAM policy statements that allow any-user; CIDRs Terraform refuses passed."""
    proc = provision(*args, "--plan", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "clusters").exists()


_BASE_VARS = {
    "environments/aws": {"name": "llm", "region": "us-east-1", "gpu_node_count": 1},
    "environments/oci": {"name": "llm", "tenancy_id": "ocid1.tenancy.oc1..aaaa",
                         "compartment_id": "ocid1.compartment.oc1..bbbb", "region": "us-ashburn-1",
                         "home_region": "us-ashburn-1", "gpu_node_count": 2,
                         "gpu_image_id": "ocid1.image.oc1.iad.cccc"},
    "modules/aws-eks": {"name": "llm", "vpc_id": "vpc-0123abcd",
                        "subnet_ids": ["subnet-0123abcd", "subnet-4567abcd"]},
    "modules/oci-network": {"name": "llm", "compartment_id": "ocid1.compartment.oc1..bbbb"},
    "modules/oci-security": {"name": "llm", "tenancy_id": "ocid1.tenancy.oc1..aaaa",
                             "compartment_id": "ocid1.compartment.oc1..bbbb", "region": "us-ashburn-1"},
    "modules/oci-storage": {"name": "llm", "compartment_id": "ocid1.compartment.oc1..bbbb",
                            "availability_domain": "Uocm:US-ASHBURN-AD-1", "subnet_id": "ocid1.subnet.oc1.iad.d",
                            "nsg_id": "ocid1.networksecuritygroup.oc1.iad.e", "client_cidr": "10.0.16.0/20",
                            "kms_key_id": "ocid1.key.oc1.iad.f", "cluster_id": "ocid1.cluster.oc1.iad.g"},
}
_INJECTED = "ocid1.compartment.oc1..bbbb where any {request.principal.type != 'x'}"
_HOSTILE_VARS = {
    "environments/aws": {"endpoint_public_access_cidrs": ["203.0.113.0/24", "203.0.113.0/0"]},
    "environments/oci": {"compartment_id": _INJECTED, "tenancy_id": "ocid1.tenancy.oc1..aaaa\n",
                         "gpu_image_id": 'ocid1.image.oc1..c"}', "api_allowed_cidrs": ["1.2.3.4/0"],
                         "gpu_availability_domain": "Uocm:US-ASHBURN-AD-1",
                         "capacity_reservation_id": "ocid1.capacityreservation.oc1..x y"},
    "modules/aws-eks": {"endpoint_public_access_cidrs": ["10.0.0.0/00"]},
    "modules/oci-network": {"api_allowed_cidrs": ["192.0.2.1/0"]},
    "modules/oci-security": {"compartment_id": _INJECTED, "tenancy_id": "ocid1.tenancy.oc1..a' , x = 'y"},
    "modules/oci-storage": {"compartment_id": _INJECTED},
}


def _plan_variables(terraform: str, folder: str, values: dict, tmp: Path) -> subprocess.CompletedProcess:
    """Terraform's own checks of the inputs: the folder's variables.tf alone (no provider, no init needed)."""
    work = tmp / folder.replace("/", "-")
    work.mkdir(exist_ok=True)
    shutil.copy(TERRAFORM_DIR / folder / "variables.tf", work)
    (work / "inputs.auto.tfvars.json").write_text(json.dumps(values))
    return subprocess.run([terraform, "plan", "-input=false", "-no-color", "-lock=false"], cwd=work,
                          env=os.environ | {"TF_CLI_CONFIG_FILE": "", "CHECKPOINT_DISABLE": "1"},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("folder", sorted(_HOSTILE_VARS))
def test_terraform_variables_refuse_what_llmops_refuses(folder, terraform, tmp_path):
    """Hand-written tfvars get the same checks: '1.2.3.4/0' was no '0.0.0.0/0' and opened the API to the
    internet; an OCID with a space, quote or newline reached the policy statements."""
    good = _plan_variables(terraform, folder, _BASE_VARS[folder], tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr  # the harness plans good values
    bad = _plan_variables(terraform, folder, _BASE_VARS[folder] | _HOSTILE_VARS[folder], tmp_path)
    assert bad.returncode == 1, bad.stdout
    refused = {name for name in _HOSTILE_VARS[folder] if f"var.{name} is" in bad.stderr}
    assert refused == set(_HOSTILE_VARS[folder]) - {"gpu_availability_domain"}, bad.stderr


def test_a_relative_workdir_is_recorded_whole_so_destroy_from_elsewhere_removes_the_profile(env, tmp_path):
    """The profile's first line recorded `--workdir rel` as given: a destroy from another folder, or with the
    absolute path, said the profile was not written by llmops provision and left it naming a deleted cluster."""
    env |= stand_in(tmp_path, 'resource "terraform_data" "cluster" {\n  input = var.name\n}\n')
    here = tmp_path / "here"
    here.mkdir()
    proc = provision(*AWS, "--yes", "--workdir", "rel", env=env, cwd=here)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    profile = Path(env["HOME"]) / ".config/llmops/profiles/llm.yaml"
    assert yaml.safe_load(profile.read_text())["name"] == "llm"
    assert f"KUBECONFIG={(here / 'rel' / 'kubeconfig').resolve()} kubectl apply" in proc.stderr  # a command to copy
    proc = provision("aws", "--name", "llm", "--destroy", "--yes", "--workdir", str(here / "rel"), env=env,
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "did not write it" not in proc.stderr and not profile.exists()


def test_a_folder_of_the_same_name_on_the_other_cloud_names_the_command_that_fits(env, tmp_path):
    """The fix said `pass --name llm`, the very name given: the folder's cluster is on the other cloud."""
    env |= stand_in(tmp_path, "")
    assert provision(*AWS, "--plan", env=env).returncode == 0
    for args in ([*OCI, "--plan"], ["oci", "--name", "llm", "--destroy"]):
        proc = provision(*args, env=env | {"LLMOPS_SKIP_CREDENTIAL_CHECK": "1"})
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "is the folder of cluster 'llm' (aws), not of 'llm' (oci)" in proc.stderr
        assert "`llmops provision aws --name llm`" in proc.stderr


class _SlowState(http.server.BaseHTTPRequestHandler):
    """Terraform's http backend, as slow as a state store far away: each write and unlock takes a second."""

    state: bytes | None = None
    lock: bytes | None = None

    def log_message(self, *args) -> None:
        pass

    def _reply(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self) -> None:
        self._reply(200, type(self).state) if type(self).state else self._reply(404)

    def do_POST(self) -> None:
        body = self._body()
        time.sleep(1)
        type(self).state = body
        self._reply(200)

    def do_LOCK(self) -> None:
        body = self._body()
        if type(self).lock:
            return self._reply(423, type(self).lock)
        type(self).lock = body
        self._reply(200)

    def do_UNLOCK(self) -> None:
        self._body()
        time.sleep(1)
        type(self).lock = None
        self._reply(200)


@pytest.fixture
def slow_state():
    handler = type("Store", (_SlowState,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/state"
    server.shutdown()


def test_ctrl_c_during_apply_lets_terraform_save_its_state_and_release_its_lock(env, tmp_path, slow_state):
    """subprocess.run killed Terraform a quarter second after Ctrl-C, while it was still writing its state: the
    remote state stayed locked (every later command failed to acquire the lock, and the fix said to run it
    again) and what the apply had made could be missing from the state."""
    store, url = slow_state
    env |= stand_in(tmp_path, f'''terraform {{
  backend "http" {{
    address        = "{url}"
    lock_address   = "{url}"
    unlock_address = "{url}"
  }}
}}

resource "terraform_data" "cluster" {{
  input = var.name
  provisioner "local-exec" {{
    command = "sleep 60" # a node group coming up
  }}
}}
''')
    out = tmp_path / "terminal.txt"
    with open(out, "w") as terminal:  # its own process group, as a terminal's foreground job
        proc = subprocess.Popen([sys.executable, "-c", _DEFAULT_SIGINT, sys.executable, "-m", "llmops", "provision",
                                 *AWS, "--yes"], env=env, stdout=terminal, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Executing:" not in out.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, out.read_text()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    shown = out.read_text()
    assert store.lock is None, "Terraform was stopped before it released the state lock"
    assert b"terraform_data" in (store.state or b""), "Terraform was stopped before it saved what it made"
    assert code == 1 and "Traceback" not in shown, shown
    assert "interrupted: `terraform apply`" in shown and "run the same `llmops provision` again" in shown
    proc = provision(*AWS, "--plan", env=env)  # the next command gets the lock
    assert proc.returncode == 0, proc.stdout + proc.stderr
