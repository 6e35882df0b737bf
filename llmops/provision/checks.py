"""Checks `llmops provision` makes before Terraform starts, each a UserError with its fix.

A Terraform run that dies at minute twelve on a typo, a missing binary or an
expired login wastes the user's time and can leave half a cluster; these
checks catch what can be known up front. The Terraform variables repeat the
input rules (they guard hand-written tfvars too); here they come with the
flag to change.
"""

from __future__ import annotations

import configparser
import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from llmops.errors import UserError
from llmops.provision.request import Request

MIN_TERRAFORM = (1, 9)
# Every pattern is matched whole (fullmatch): with re.match, `$` also matches before a final newline, and
# 'llm\n' passed as a cluster name. The variables.tf files hold the same patterns (RE2, anchored).
_NAME = re.compile(r"[a-z][a-z0-9-]{1,30}[a-z0-9]")
_AWS_GPU = re.compile(r"(p[3-9][a-z0-9-]*|g[4-9][a-z0-9-]*)\.[0-9]*xlarge")
_AWS_REGION = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]")
_AWS_ZONE = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9][a-z]")
_AWS_RESERVATION = re.compile(r"cr-[0-9a-f]{8,17}")
_OCI_REGION = re.compile(r"[a-z]{2}-[a-z]+-[0-9]")
_OCI_DOMAIN = re.compile(r"[A-Za-z0-9]+:[A-Z0-9-]+-AD-[1-3]")
# IPv4 with a prefix of 1 to 32 bits, as environments/*/variables.tf: `cidrhost` refuses a bare address or a
# netmask, and a /0 of any address is the whole internet.
_CIDR = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}/([1-9]|[12][0-9]|3[0-2])")
OCI_SHAPES = ("BM.GPU.H100.8", "BM.GPU.H200.8", "BM.GPU.B200.8", "BM.GPU.A100-v2.8", "BM.GPU4.8")
_OCI_REQUIRED = {"tenancy_id": ("tenancy", "--tenancy"),
                 "compartment_id": ("compartment", "--compartment"),
                 "gpu_image_id": ("image", "--gpu-image")}


def _ocid(kind: str) -> re.Pattern[str]:
    """A whole OCID of one kind: ocid1.<kind>.<realm>.[region][.future].<unique id>, lower-case letters, digits
    and hyphens between its dots. The compartment OCID is written into IAM policy statements and a dynamic
    group's matching rule (modules/oci-security, oci-storage), so nothing else may pass: a space, quote or brace
    would change what they allow."""
    return re.compile(rf"ocid1\.{kind}\.[a-z0-9]+(\.[a-z0-9-]*){{1,2}}\.[a-z0-9]+")


def validate(req: Request) -> None:
    """Refuse requests Terraform would refuse (or that would build the wrong thing)."""
    if req.cloud not in ("aws", "oci"):
        raise UserError(f"unknown cloud '{req.cloud}'", "use `llmops provision aws ...` or `llmops provision oci ...`")
    if not _NAME.fullmatch(req.name):
        raise UserError(f"--name {req.name!r} is not a valid cluster name",
                        "use 3-32 lowercase letters, digits and hyphens, starting with a letter (e.g. llm-p5)")
    if req.action == "destroy":
        return  # the state knows what exists; only the name matters
    if not 1 <= req.nodes <= 512:
        raise UserError(f"--nodes {req.nodes} is out of range", "ask for 1 to 512 GPU nodes")
    if req.cloud == "aws":
        _validate_aws(req)
    else:
        _validate_oci(req)
    for cidr in req.tfvars_extra.get("endpoint_public_access_cidrs", req.tfvars_extra.get("api_allowed_cidrs", [])):
        _check_cidr(cidr)


def _validate_aws(req: Request) -> None:
    if not _AWS_GPU.fullmatch(req.gpu_type):
        raise UserError(f"--gpu-type {req.gpu_type!r} is not an AWS GPU instance type",
                        "use a P or G family type such as p5.48xlarge, p5en.48xlarge or p4d.24xlarge")
    if not _AWS_REGION.fullmatch(req.region):
        raise UserError(f"--region {req.region!r} is not an AWS region", "use a region name such as us-east-1")
    zone = req.tfvars_extra.get("gpu_availability_zone")
    if zone is not None and not (_AWS_ZONE.fullmatch(zone) and zone[:-1] == req.region):
        raise UserError(f"--zone {zone!r} is not a zone of {req.region}",
                        f"pass a zone of the region, such as {req.region}a")
    reservation = req.tfvars_extra.get("capacity_reservation")
    if reservation:
        if not _AWS_RESERVATION.fullmatch(reservation["id"]):
            raise UserError(f"--reservation {reservation['id']!r} is not a capacity reservation ID",
                            "pass the cr-... ID of the Capacity Block or On-Demand Capacity Reservation")
        if not req.tfvars_extra.get("gpu_availability_zone"):
            raise UserError("--reservation needs --zone: reserved capacity lives in one availability zone",
                            "pass --zone with the reservation's zone (e.g. us-east-1a)")


def _validate_oci(req: Request) -> None:
    if req.gpu_type not in OCI_SHAPES:
        raise UserError(f"--gpu-type {req.gpu_type!r} is not an RDMA bare-metal GPU shape",
                        f"use one of {', '.join(OCI_SHAPES)}")
    for key in ("region", "home_region"):
        value = req.region if key == "region" else req.tfvars_extra.get(key, "")
        if not _OCI_REGION.fullmatch(value or ""):
            raise UserError(f"--{key.replace('_', '-')} {value!r} is not an OCI region",
                            "use a region identifier such as us-ashburn-1")
    domain, reservation = (req.tfvars_extra.get(k) for k in ("gpu_availability_domain", "capacity_reservation_id"))
    if domain is not None and not _OCI_DOMAIN.fullmatch(domain):
        raise UserError(f"--zone {domain!r} is not an OCI availability domain",
                        "pass its full name, such as Uocm:US-ASHBURN-AD-1 (`oci iam availability-domain list`)")
    if reservation is not None:
        if not _ocid("capacityreservation").fullmatch(reservation):
            raise UserError(f"--reservation {reservation!r} is not a capacity reservation OCID",
                            "pass the whole ocid1.capacityreservation... OCID of the reservation")
        if domain is None:
            raise UserError("--reservation needs --zone: a reservation lives in one availability domain",
                            "pass --zone with the reservation's availability domain")
    for key, (kind, flag) in _OCI_REQUIRED.items():
        value = req.tfvars_extra.get(key) or ""
        if not _ocid(kind).fullmatch(value):
            raise UserError(f"{flag} is {'missing' if not value else repr(value) + ', not an OCID of that kind'}",
                            f"pass {flag} with the whole ocid1.{kind}... OCID as the console shows it "
                            "(lower-case letters, digits, dots and hyphens)"
                            + (" (import the oci-hpc-oke GPU image first; see infra/terraform/environments/oci)"
                               if key == "gpu_image_id" else ""))


def _check_cidr(cidr: str) -> None:
    prefix = cidr.rpartition("/")[2]
    if prefix.isdigit() and int(prefix) == 0:
        raise UserError(f"--api-cidr {cidr!r} would open the Kubernetes API to the whole internet",
                        "list your office or VPN ranges, or leave the API private and reach it from the network")
    try:
        ipaddress.IPv4Network(cidr, strict=False)  # an octet over 255, or a leading zero
        valid = _CIDR.fullmatch(cidr) is not None
    except ValueError:
        valid = False
    if not valid:
        raise UserError(f"--api-cidr {cidr!r} is not an IPv4 CIDR block",
                        "write it as address/prefix bits, like 203.0.113.0/24 (one address is 203.0.113.7/32)")


def find_terraform() -> str:
    """The terraform binary ($LLMOPS_TERRAFORM, else PATH), at least version 1.9."""
    path = os.environ.get("LLMOPS_TERRAFORM") or shutil.which("terraform")
    if not path or not Path(path).is_file():
        raise UserError("Terraform is not installed (no `terraform` on PATH)",
                        "install Terraform 1.9 or newer (https://developer.hashicorp.com/terraform/install), "
                        "or set LLMOPS_TERRAFORM to its path")
    try:
        out = subprocess.run([path, "version", "-json"], capture_output=True, text=True, timeout=60).stdout
        version = tuple(int(x) for x in json.loads(out)["terraform_version"].split(".")[:2])
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        raise UserError(f"{path} did not report its version (`terraform version -json`)",
                        "check that it is a working Terraform binary") from None
    if version < MIN_TERRAFORM:
        raise UserError(f"Terraform {'.'.join(map(str, version))} is too old",
                        f"install Terraform {'.'.join(map(str, MIN_TERRAFORM))} or newer")
    return path


def find_kubectl() -> str:
    path = os.environ.get("LLMOPS_KUBECTL") or shutil.which("kubectl")
    if not path:
        raise UserError("kubectl is not installed; the cluster exists but its add-ons are not applied",
                        "install kubectl and run `llmops provision` again (Terraform will find nothing to change)")
    return path


def check_credentials(cloud: str) -> None:
    """Fail before Terraform starts when no cloud login can be found.

    Looks where the providers look (environment, then the CLI's files). Set
    LLMOPS_SKIP_CREDENTIAL_CHECK=1 where credentials come from elsewhere
    (an EC2 instance role, OCI instance principals).
    """
    if os.environ.get("LLMOPS_SKIP_CREDENTIAL_CHECK") == "1":
        return
    if cloud == "aws" and not _aws_credentials():
        raise UserError("no AWS credentials found (environment, ~/.aws/credentials or ~/.aws/config)",
                        "log in (`aws configure`, `aws sso login --profile X` with AWS_PROFILE=X), "
                        "or set LLMOPS_SKIP_CREDENTIAL_CHECK=1 on a machine with an instance role")
    if cloud == "oci" and not _oci_credentials():
        raise UserError("no OCI credentials found (~/.oci/config, profile "
                        f"{os.environ.get('OCI_CLI_PROFILE', 'DEFAULT')})",
                        "run `oci setup config` (or set OCI_CLI_CONFIG_FILE / OCI_CLI_PROFILE), "
                        "or set LLMOPS_SKIP_CREDENTIAL_CHECK=1 with instance principals")


def _aws_credentials() -> bool:
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if any(env.get(k) for k in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                                "AWS_CONTAINER_CREDENTIALS_FULL_URI")):
        return True
    files = [Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials"),
             Path(env.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config")]
    return any(_sections(f) for f in files)


def _oci_credentials() -> bool:
    path = Path(os.environ.get("OCI_CLI_CONFIG_FILE") or Path.home() / ".oci" / "config")
    return os.environ.get("OCI_CLI_PROFILE", "DEFAULT") in _sections(path, keep_default=True)


def _sections(path: Path, *, keep_default: bool = False) -> set[str]:
    parser = configparser.ConfigParser(default_section="__none__" if keep_default else "DEFAULT")
    try:
        parser.read(path)
    except configparser.Error:
        return set()
    return set(parser.sections())
