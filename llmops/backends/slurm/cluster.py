"""What the cluster offers and what it is doing: sinfo, squeue, sbatch and scancel through a transport.

:func:`check_fit` refuses a request the cluster cannot run (an unknown
partition, more GPUs or CPUs than a node has, more nodes than a partition
holds, the data-preparation tasks included) with a message that names the
setting and the fix. It runs twice:
against the facts a cluster profile declares when the run is planned, and
against what `sinfo` reports right before the jobs are submitted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llmops.backends.slurm.spec import SlurmSpec
from llmops.backends.slurm.status import Job, parse_squeue
from llmops.errors import Problem, UserError
from llmops.spec.run import RunSpec

_SQUEUE_FORMAT = "JobArrayID:|,ArrayJobID:|,State:|,Reason:|,RestartCnt:|"
_GRES_GPU = re.compile(r"gpu(?::[\w.-]+)?:(\d+)")


@dataclass
class Facts:
    """What is known about the cluster's partitions and nodes (from a profile, or from sinfo)."""

    source: str
    partitions: list[str] | None = None
    default_partition: str | None = None
    gpus_per_node: dict[str, int] = field(default_factory=dict)
    """Most GPUs on any node of each partition."""
    cpus_per_node: dict[str, int] = field(default_factory=dict)
    """Most CPUs on any node of each partition."""
    nodes: dict[str, int] = field(default_factory=dict)
    """Nodes in each partition."""


def parse_sinfo(text: str) -> Facts:
    """Facts from `sinfo -h -N -o '%N|%P|%c|%G'` (one line per node and partition)."""
    facts = Facts(source="sinfo", partitions=[])
    for line in text.splitlines():
        cells = line.strip().split("|")
        if len(cells) < 4:
            continue
        _, part, cpus, gres = cells[:4]
        if part.endswith("*"):
            part = part[:-1]
            facts.default_partition = part
        if part not in facts.partitions:
            facts.partitions.append(part)
        gpus = sum(int(n) for n in _GRES_GPU.findall(gres))
        facts.gpus_per_node[part] = max(facts.gpus_per_node.get(part, 0), gpus)
        facts.cpus_per_node[part] = max(facts.cpus_per_node.get(part, 0), int(cpus) if cpus.isdigit() else 0)
        facts.nodes[part] = facts.nodes.get(part, 0) + 1
    return facts


def check_fit(spec: RunSpec, slurm: SlurmSpec, facts: Facts) -> list[Problem]:
    """Every way the request exceeds what the cluster (as `facts` describe it) offers."""
    out: list[Problem] = []
    part = slurm.partition or facts.default_partition
    where = f"by {facts.source}"
    if slurm.partition and facts.partitions is not None and slurm.partition not in facts.partitions:
        out.append(Problem("slurm.partition", slurm.partition, f"is not a partition of this cluster ({where}: "
                           f"{', '.join(facts.partitions) or 'none'})", "name one of those partitions"))
        return out
    res = spec.resources
    gpus = facts.gpus_per_node.get(part) if part else None
    if not res.cpu and gpus is not None and res.gpus_per_node > gpus:
        out.append(Problem("resources.gpus_per_node", res.gpus_per_node,
                           f"is more than a node of partition {part} has ({gpus} GPU(s), {where})",
                           f"use at most {gpus} GPUs per node and more nodes, or a partition with larger nodes"
                           if gpus else "choose a partition with GPU nodes, or set cpu: true"))
    cpus = facts.cpus_per_node.get(part) if part else None
    if cpus and slurm.cpus_per_task and slurm.cpus_per_task > cpus:
        out.append(Problem("slurm.cpus_per_task", slurm.cpus_per_task,
                           f"is more than a node of partition {part} has ({cpus} CPUs, {where})",
                           f"use at most {cpus}"))
    if cpus and "prepare" in spec.stages and slurm.prepare_cpus_per_task > cpus:  # else PENDING forever, or refused
        out.append(Problem("slurm.prepare_cpus_per_task", slurm.prepare_cpus_per_task,
                           f"is more than a node of partition {part} has ({cpus} CPUs, {where}); each data-"
                           "preparation task needs them on one node", f"use at most {cpus}"))
    nodes = facts.nodes.get(part) if part else None
    if nodes and res.nodes > nodes:
        out.append(Problem("resources.nodes", res.nodes, f"is more than partition {part} holds ({nodes}, {where})",
                           f"use at most {nodes} nodes, or another partition"))
    return out


def profile_facts(name: str, partitions: list[str] | None, gpus: int | None, cpus: int | None,
                  partition: str | None) -> Facts:
    """The facts a cluster profile declares (they apply to every partition it allows)."""
    facts = Facts(source=f"profile {name}", partitions=partitions)
    for part in ([partition] if partition else []) + list(partitions or []):
        if gpus is not None:
            facts.gpus_per_node[part] = gpus
        if cpus is not None:
            facts.cpus_per_node[part] = cpus
    facts.default_partition = partition
    return facts


def sinfo_command() -> list[str]:
    return ["sinfo", "-h", "-N", "-o", "%N|%P|%c|%G"]


def squeue_command(job_ids: list[str]) -> list[str]:
    return ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-O", _SQUEUE_FORMAT]


def jobs_from(res) -> dict[str, Job]:
    """squeue's answer; jobs it no longer knows (purged after MinJobAge) are simply absent."""
    if res.returncode != 0 and "Invalid job id" not in res.stderr:
        raise UserError(f"squeue failed: {res.stderr.strip() or f'exit code {res.returncode}'}",
                        "check that the Slurm controller is reachable (`sinfo`), then ask again")
    return parse_squeue(res.stdout if res.returncode == 0 else "")
