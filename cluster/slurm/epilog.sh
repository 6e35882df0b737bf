#!/usr/bin/env bash
# Slurm Epilog: leave the node clean for the next job, and take it out of service if a GPU broke.
#
# slurm.conf:  Epilog=/etc/slurm/epilog.sh
#
# Runs as root after every job on every node of the job. It kills processes of the job's user that
# still hold a GPU (a crashed torchrun can leave workers behind), then checks that the GPUs answer.
# A GPU that does not answer drains the node with a reason an operator sees in `sinfo -R`, instead of
# failing the next job. Nodes without GPUs pass.
set -u

say() { logger -t slurm-epilog "job ${SLURM_JOB_ID:-?} on ${SLURMD_NODENAME:-$(hostname)}: $*" 2>/dev/null || echo "epilog: $*" >&2; }

command -v nvidia-smi >/dev/null 2>&1 || exit 0   # a CPU node: nothing to clean

# Only when no other job of this user runs here: with shared nodes their processes are not ours to kill.
if [ -n "${SLURM_JOB_USER:-}" ] && [ "$(squeue -h -w "${SLURMD_NODENAME:-}" -u "$SLURM_JOB_USER" -t R -o %i | grep -vc "^${SLURM_JOB_ID:-}$")" = 0 ]; then
    for pid in $(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null); do
        [ "$(ps -o user= -p "$pid" 2>/dev/null | tr -d ' ')" = "$SLURM_JOB_USER" ] && kill -9 "$pid" 2>/dev/null
    done
fi

if ! timeout 30 nvidia-smi -L >/dev/null 2>&1; then
    say "nvidia-smi failed after the job; draining the node"
    scontrol update nodename="${SLURMD_NODENAME:-$(hostname)}" state=drain reason="epilog: nvidia-smi failed after job ${SLURM_JOB_ID:-?}"
fi
exit 0   # a non-zero epilog would also drain the node, but without saying why
