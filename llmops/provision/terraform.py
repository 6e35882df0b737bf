"""Create (or destroy) a GPU cluster with infra/terraform, then hand it back.

One cluster is one working directory (``$LLMOPS_CLUSTERS_DIR/<name>``,
default ``~/.local/share/llmops/clusters/<name>``) holding a copy of the
Terraform modules and the cloud's environment folder, the
``llmops.auto.tfvars.json`` written from the command line, the Terraform
state, the kubeconfig and the post-apply manifests. The copy makes the
folder self-contained: ``--destroy`` later uses the exact code that created
the cluster, whatever the repository looks like by then.

Everything that can be checked before Terraform starts is checked first
(arguments, the terraform binary, cloud credentials) and fails with exit
code 2 and the fix. Terraform itself runs with its own output on the
terminal, so the user sees its plan and progress.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from llmops.errors import EXIT_FAILED, UserError
from llmops.files import atomic_write
from llmops.provision.checks import check_credentials, find_kubectl, find_terraform, validate
from llmops.provision.outputs import SHARED_CLAIM, kubeconfig, profile, shared_volume
from llmops.provision.request import Request

TFVARS = "llmops.auto.tfvars.json"
PLAN = "llmops.tfplan"  # what `--plan` saves, and what is applied once confirmed
MARKER = "llmops-cluster.json"  # the cluster folder's owner: this cluster's name and cloud, the files copied
_REPO_TERRAFORM = Path(__file__).resolve().parents[2] / "infra" / "terraform"
_REPO_K8S = Path(__file__).resolve().parents[2] / "cluster" / "k8s" / "overlays"


class ProvisionFailed(UserError):
    """Terraform or kubectl failed after starting: exit 1, with what to do next."""

    exit_code = EXIT_FAILED


def terraform_source() -> Path:
    """The infra/terraform tree to copy ($LLMOPS_TERRAFORM_DIR, else this checkout's)."""
    src = Path(os.environ.get("LLMOPS_TERRAFORM_DIR") or _REPO_TERRAFORM)
    if not (src / "modules").is_dir() or not (src / "environments").is_dir():
        raise UserError(f"the Terraform code was not found in {src}",
                        "run llmops from a checkout of the repository, or set LLMOPS_TERRAFORM_DIR "
                        "to its infra/terraform folder")
    return src


def owned(req: Request) -> dict[str, Any] | None:
    """The cluster folder's record (MARKER) if llmops made the folder for this cluster; None for a folder that
    does not exist or is empty. UserError for a folder llmops did not make, or made for another cluster."""
    marker = req.root / MARKER
    try:
        record = json.loads(marker.read_text())
    except FileNotFoundError:
        legacy = req.env_dir / TFVARS  # a folder an llmops older than the marker made: its tfvars name the cluster
        try:
            if json.loads(legacy.read_text()).get("name") == req.name:
                return {"name": req.name, "cloud": req.cloud, "copied": []}
        except (OSError, ValueError, AttributeError):
            pass
        if req.root.is_dir() and any(req.root.iterdir()):
            raise UserError(f"{req.root} is not a cluster folder llmops made (it has no {MARKER}): llmops would copy "
                            "its Terraform code over the files there, or destroy whatever state they hold",
                            "pass --workdir a new or empty folder, or the folder of an earlier `llmops "
                            "provision` of this cluster") from None
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"{marker} cannot be read ({exc})", "restore it, or move the folder away") from None
    if not isinstance(record, dict) or (record.get("name"), record.get("cloud")) != (req.name, req.cloud):
        name, cloud = (record.get("name"), record.get("cloud")) if isinstance(record, dict) else ("?", "?")
        raise UserError(f"{req.root} is the folder of cluster {name!r} ({cloud}), not of {req.name!r} ({req.cloud})",
                        f"use `llmops provision {cloud} --name {name}` to act on that cluster, or give this one "
                        "another --name (or --workdir)")
    return record


def prepare(req: Request) -> Path:
    """Copy the Terraform code into the cluster's folder and write the tfvars; returns the env folder.

    Files the user added to the folder (a backend.tf for remote state, say)
    are left alone; those an earlier copy made are replaced, not merged (a file
    renamed in the repository would stay as a duplicate); state, provider links
    and plans are never copied.
    """
    record = owned(req) or {"name": req.name, "cloud": req.cloud, "copied": []}
    src = terraform_source()
    for rel in record.get("copied", []):  # the earlier copy, so that nothing stale stays
        if isinstance(rel, str) and rel.startswith("terraform/") and ".." not in Path(rel).parts:
            (req.root / rel).unlink(missing_ok=True)
    skip = shutil.ignore_patterns(".terraform", "*.tfstate*", "*.tfplan", ".terraform.lock.hcl", TFVARS, "tests")
    copied: list[str] = []

    def copy(source: str, target: str) -> None:
        copied.append(str(Path(target).relative_to(req.root)))
        shutil.copy2(source, target)

    req.root.mkdir(parents=True, exist_ok=True)
    _write_marker(req, record | {"copied": record.get("copied", [])})  # ours before anything is copied
    for part in ("modules", f"environments/{req.cloud}"):
        shutil.copytree(src / part, req.root / "terraform" / part, ignore=skip, dirs_exist_ok=True,
                        copy_function=copy)
    _write_marker(req, record | {"copied": sorted(copied)})
    (req.env_dir / TFVARS).write_text(json.dumps(req.tfvars(), indent=2, sort_keys=True) + "\n")
    return req.env_dir


def _write_marker(req: Request, record: dict[str, Any]) -> None:
    atomic_write(req.root / MARKER, json.dumps(record, indent=1) + "\n")


def run(req: Request, *, say: Callable[[str], None] = print) -> None:
    """Do what the request asks: plan, apply (then hand back the cluster) or destroy."""
    validate(req)
    terraform = find_terraform()
    check_credentials(req.cloud)
    check_profile_free(req)
    if req.action != "destroy":
        owned(req)  # a folder llmops made for this cluster, or a new or empty one
    if req.action == "destroy":
        _destroy(req, terraform, say)
        return
    env_dir = prepare(req)
    say(f"Terraform folder: {env_dir}")
    _terraform(terraform, env_dir, "init", "-input=false")
    if req.action == "plan":
        _terraform(terraform, env_dir, "plan", "-input=false", f"-out={PLAN}")
        say(f"plan saved in {env_dir / PLAN}; run without --plan to create the cluster")
        return
    if req.yes:
        _terraform(terraform, env_dir, "apply", "-input=false", "-auto-approve")
    else:
        _apply_when_confirmed(terraform, env_dir, [], f"Create or change cluster '{req.name}' as planned above?",
                              "nothing was created or changed")
    facts = read_facts(terraform, env_dir)
    hand_back(req, facts, say=say)


def _destroy(req: Request, terraform: str, say: Callable[[str], None]) -> None:
    none = UserError(f"there is no cluster '{req.name}' to destroy: no Terraform state in {req.env_dir}",
                     "check --name (and LLMOPS_CLUSTERS_DIR or --workdir), or destroy by hand with "
                     "`terraform destroy` in the folder that holds the state")
    if owned(req) is None or not req.env_dir.is_dir():  # only a folder llmops made, for this very cluster
        raise none
    _terraform(terraform, req.env_dir, "init", "-input=false")
    # Terraform's word on the state, which may live in a backend.tf's remote store rather than in the folder
    listed = subprocess.run([terraform, "state", "list"], cwd=req.env_dir, capture_output=True, text=True)
    if listed.returncode == 0 and not listed.stdout.strip():
        raise none
    if req.yes:
        _terraform(terraform, req.env_dir, "destroy", "-input=false", "-auto-approve")
    else:
        _apply_when_confirmed(terraform, req.env_dir, ["-destroy"], f"Destroy cluster '{req.name}' as planned above?",
                              "nothing was destroyed")
    (req.root / "kubeconfig").unlink(missing_ok=True)  # in the folder llmops made
    kept = req.profile_path.exists() and not _ours(req.profile_path, req)
    if not kept:
        req.profile_path.unlink(missing_ok=True)
    say(f"cluster '{req.name}' destroyed; its kubeconfig was removed, "
        + (f"its profile {req.profile_path} kept (llmops provision did not write it: remove it yourself)" if kept
           else "and its profile") + " (the bucket is kept unless force_destroy_bucket was set)")


def _apply_when_confirmed(terraform: str, cwd: Path, mode: list[str], question: str, kept: str) -> None:
    """Plan into a file, ask, and apply that very plan: what is applied is what the user read. Any answer but
    "yes" is ProvisionFailed (exit 1) saying that nothing was done. (Terraform's own prompt answered "no" exits 1
    like a failure, and its words go to the terminal: llmops said "failed ... fix the cause" to a user who had
    changed their mind.)"""
    _terraform(terraform, cwd, "plan", "-input=false", *mode, f"-out={PLAN}")
    print(f"\n{question}\n  Only 'yes' will be accepted (--yes skips this question).\n  Enter a value: ", end="",
          file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline().strip()
    except (KeyboardInterrupt, OSError):
        answer = ""
    if not sys.stdin.isatty():  # the answer was not echoed
        print(file=sys.stderr)
    if answer != "yes":
        raise ProvisionFailed(f"cancelled: {kept}", "run the same command again and answer yes, or add --yes")
    _terraform(terraform, cwd, "apply", "-input=false", PLAN)


def _terraform(terraform: str, cwd: Path, *args: str) -> None:
    """Run one Terraform command with its output on our terminal; failure is exit 1.

    Ctrl-C reaches Terraform as well (one process group), and Terraform stops gracefully: it waits for the
    calls in flight, writes its state and releases its lock. So llmops waits for it, however long that takes
    (subprocess.run would kill it a quarter second after the interrupt: resources made but not in the state,
    a remote state left locked). A second Ctrl-C is Terraform's own "exit now".
    """
    proc = subprocess.Popen([terraform, *args], cwd=cwd)
    interrupted = False
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise ProvisionFailed(f"interrupted: `terraform {args[0]}` in {cwd} stopped (exit {code}); Terraform "
                              "saves its state as it stops", "run the same `llmops provision` again to go on from "
                              "where it stopped, or `llmops provision <cloud> --name <name> --destroy` to remove "
                              "what it made")
    if code != 0:
        raise ProvisionFailed(f"`terraform {args[0]}` failed (exit {code}) in {cwd}",
                              "read Terraform's message above, fix the cause, and run the same "
                              "`llmops provision` again: Terraform resumes from its state")


def read_facts(terraform: str, env_dir: Path) -> dict[str, Any]:
    """The environment's `cluster` output (see environments/<cloud>/outputs.tf)."""
    proc = subprocess.run([terraform, "output", "-json", "cluster"], cwd=env_dir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProvisionFailed(f"`terraform output` failed in {env_dir}: {proc.stderr.strip()}",
                              "run `terraform output cluster` there to see why")
    return json.loads(proc.stdout)


def hand_back(req: Request, facts: dict[str, Any], *, say: Callable[[str], None] = print) -> None:
    """Write kubeconfig, profile and manifests, then install the add-ons when the API is reachable."""
    kube = req.root / "kubeconfig"
    cli_profile = os.environ.get("AWS_PROFILE" if req.cloud == "aws" else "OCI_CLI_PROFILE")
    _write_yaml(kube, kubeconfig(facts, cli_profile=cli_profile), mode=0o600)
    _write_yaml(req.profile_path, profile(facts), header=_profile_header(req))
    say(f"kubeconfig: {kube}\nprofile '{req.name}': {req.profile_path}")
    kubectl = shutil.which(os.environ.get("LLMOPS_KUBECTL") or "kubectl")
    steps = _addon_steps(req, facts, kubectl)
    if not facts.get("endpoint_public"):
        say("The Kubernetes API is private. From a machine inside the network (VPN, bastion), finish with:\n"
            + "\n".join(f"  KUBECONFIG={shlex.quote(str(kube))} {shlex.join(s)}" for s in steps))
        return
    kubectl = kubectl or find_kubectl()  # raises with the fix
    for step in steps:
        proc = subprocess.run([kubectl, *step[1:]], env=os.environ | {"KUBECONFIG": str(kube)})
        if proc.returncode != 0:
            raise ProvisionFailed(f"`{' '.join(step)}` failed (exit {proc.returncode}); the cluster exists",
                                  f"fix the cause and run it again with KUBECONFIG={kube}")
    say(f"cluster '{req.name}' is ready: set `profile: {req.name}` in a run spec with backend k8s")


def _addon_steps(req: Request, facts: dict[str, Any], kubectl: str | None) -> list[list[str]]:
    """kubectl commands after apply: device plugins, the platform overlay, the shared volume.

    The platform overlay (cluster/k8s/overlays/<cloud>: namespace, RBAC,
    service account, priority class...) is rendered here without its shared
    claim and storage classes: those provision a new file system
    dynamically, while this cluster already has one, bound statically.
    """
    folder = req.root / "k8s"
    folder.mkdir(parents=True, exist_ok=True)
    # One field manager per file: under server-side apply a manager's apply removes the fields it set before
    # and leaves out now, so the shared volume's bare Namespace, applied by the platform file's manager, would
    # strip the Pod Security labels the platform file set on it.
    def apply(manager: str) -> list[str]:
        return ["kubectl", "apply", "--server-side", f"--field-manager=llmops-provision-{manager}"]

    steps = [apply("addons") + ["-k", str(req.env_dir / "addons")]]
    overlay = _REPO_K8S / req.cloud
    if kubectl and (overlay / "kustomization.yaml").is_file():
        proc = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ProvisionFailed(f"`kubectl kustomize {overlay}` failed: {proc.stderr.strip()}",
                                  "fix the overlay (or run from a clean checkout) and run again")
        kept = [o for o in yaml.safe_load_all(proc.stdout) if o and not _provisioned_elsewhere(o)]
        (folder / "platform.yaml").write_text(yaml.safe_dump_all(kept, sort_keys=False))
        steps.append(apply("platform") + ["-f", str(folder / "platform.yaml")])
    (folder / "shared-volume.yaml").write_text(yaml.safe_dump_all(shared_volume(facts), sort_keys=False))
    steps.append(apply("storage") + ["-f", str(folder / "shared-volume.yaml")])
    return steps


def _provisioned_elsewhere(obj: dict[str, Any]) -> bool:
    """Objects of the platform overlay that the Terraform-made file system replaces."""
    return obj.get("kind") == "StorageClass" or (
        obj.get("kind") == "PersistentVolumeClaim" and obj["metadata"]["name"] == SHARED_CLAIM)


def _profile_header(req: Request) -> str:
    return f"# written by llmops provision for cluster {req.name} ({req.root}); --destroy removes it\n"


def _ours(path: Path, req: Request) -> bool:
    """A profile that `llmops provision` wrote for this cluster (a hand-written one is never replaced or
    removed)."""
    try:
        with open(path) as f:
            return f.readline() == _profile_header(req)
    except OSError:
        return False


def check_profile_free(req: Request) -> None:
    """UserError before anything is created when the cluster's profile would replace one llmops did not write."""
    if req.action == "apply" and req.profile_path.exists() and not _ours(req.profile_path, req):
        raise UserError(f"{req.profile_path} exists and was not written by `llmops provision` for this cluster: "
                        "the cluster's profile would replace it",
                        "choose another --name, or move that profile away")


def _write_yaml(path: Path, data: dict[str, Any], *, mode: int = 0o644, header: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, header + yaml.safe_dump(data, sort_keys=False), mode=mode)
