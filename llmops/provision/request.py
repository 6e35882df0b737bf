"""One `llmops provision` invocation: the command line mapped onto the Terraform environment's inputs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.errors import UserError


@dataclass(frozen=True)
class Request:
    """One `llmops provision` invocation (validated by :func:`llmops.provision.checks.validate`)."""

    cloud: str
    name: str
    nodes: int
    gpu_type: str
    region: str
    action: str = "apply"  # "plan" | "apply" | "destroy"
    yes: bool = False
    tfvars_extra: dict[str, Any] = field(default_factory=dict)
    workdir: Path | None = None
    profile_dir: Path | None = None

    @property
    def root(self) -> Path:
        """The cluster's folder, absolute: the profile's first line records it (a later --destroy, from
        anywhere, recognises the profile by it) and the printed kubectl commands name it."""
        base = Path(os.environ.get("LLMOPS_CLUSTERS_DIR") or Path.home() / ".local/share/llmops/clusters")
        return (self.workdir or base / self.name).resolve()

    @property
    def env_dir(self) -> Path:
        return self.root / "terraform" / "environments" / self.cloud

    @property
    def profile_path(self) -> Path:
        return (self.profile_dir or Path.home() / ".config" / "llmops" / "profiles") / f"{self.name}.yaml"

    def tfvars(self) -> dict[str, Any]:
        """The environment's inputs; names match infra/terraform/environments/<cloud>/variables.tf."""
        base = {"name": self.name, "region": self.region, "gpu_node_count": self.nodes}
        base["gpu_instance_type" if self.cloud == "aws" else "gpu_shape"] = self.gpu_type
        return base | self.tfvars_extra


def request_from_args(cloud: str, *, nodes: int, gpu_type: str | None, name: str, region: str | None,
                      zone: str | None = None, reservation: str | None = None, capacity_block: bool = False,
                      api_cidrs: list[str] | None = None, tenancy: str | None = None,
                      compartment: str | None = None, gpu_image: str | None = None,
                      home_region: str | None = None, plan: bool = False, destroy: bool = False,
                      yes: bool = False, workdir: Path | None = None, profile_dir: Path | None = None) -> Request:
    """Map the command line onto a Request and the environment's variable names."""
    if plan and destroy:
        raise UserError("--plan and --destroy were both given", "pass one of them")
    region = region or os.environ.get("AWS_REGION" if cloud == "aws" else "OCI_CLI_REGION") \
        or (os.environ.get("AWS_DEFAULT_REGION") if cloud == "aws" else None)
    if not region and not destroy:
        raise UserError("no region given", "pass --region (or set AWS_REGION for aws, OCI_CLI_REGION for oci)")
    if not gpu_type and not destroy:
        raise UserError("no GPU type given", "pass --gpu-type, e.g. p5.48xlarge on aws or BM.GPU.H100.8 on oci")
    # Flags that would change nothing: the user would get what they did not ask for, without a word
    ignored = ({"--tenancy": tenancy, "--compartment": compartment, "--gpu-image": gpu_image,
                "--home-region": home_region} if cloud == "aws" else {"--capacity-block": capacity_block})
    given = sorted(flag for flag, value in ignored.items() if value)
    if given and not destroy:
        raise UserError(f"{', '.join(given)}: no effect on {cloud}", "leave them out")
    if cloud == "aws" and capacity_block and not reservation and not destroy:
        raise UserError("--capacity-block qualifies a --reservation, and none was given",
                        "pass --reservation cr-... --zone ZONE with it, or leave it out")
    extra: dict[str, Any] = {}
    if cloud == "aws":
        extra |= {"gpu_availability_zone": zone} if zone else {}
        if reservation:
            extra["capacity_reservation"] = {"id": reservation,
                                             "type": "capacity-block" if capacity_block else "on-demand"}
        extra |= {"endpoint_public_access_cidrs": list(api_cidrs)} if api_cidrs else {}
    else:
        extra |= {"tenancy_id": tenancy, "compartment_id": compartment, "gpu_image_id": gpu_image,
                  "home_region": home_region or region}
        extra |= {"gpu_availability_domain": zone} if zone else {}
        extra |= {"capacity_reservation_id": reservation} if reservation else {}
        extra |= {"api_allowed_cidrs": list(api_cidrs)} if api_cidrs else {}
    action = "destroy" if destroy else "plan" if plan else "apply"
    return Request(cloud=cloud, name=name, nodes=nodes, gpu_type=gpu_type or "", region=region or "",
                   action=action, yes=yes, tfvars_extra=extra, workdir=workdir, profile_dir=profile_dir)
