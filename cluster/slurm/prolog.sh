#!/usr/bin/env bash
# Slurm Prolog: a GPU health check before a job starts on this node.
#
# slurm.conf:  Prolog=/etc/slurm/prolog.sh   (with PrologFlags=Alloc it runs when the job is
#              allocated, before the batch script, instead of at the node's first step)
#
# A non-zero exit drains the node and requeues the job onto healthy nodes, which is much cheaper than
# a 512-GPU job that hangs on its first NCCL all-reduce because one GPU fell off the bus. Keep it
# fast (it runs on every job start) and quiet on success. Nodes without GPUs pass.
#
# Tunables (environment of slurmd, or edit here):
#   EXPECTED_GPUS   GPUs every node must show (default: whatever the node shows, >= 1)
#   MAX_USED_MIB    memory a GPU may hold before the job starts (default 1024: leftovers of a dead job)
set -u

say() { logger -t slurm-prolog "job ${SLURM_JOB_ID:-?} on ${SLURMD_NODENAME:-$(hostname)}: $*" 2>/dev/null || echo "prolog: $*" >&2; }

command -v nvidia-smi >/dev/null 2>&1 || exit 0   # a CPU node: nothing to check

# nvidia-smi itself hanging is the classic symptom of a wedged driver.
if ! out=$(timeout 30 nvidia-smi --query-gpu=index,memory.used,ecc.errors.uncorrected.volatile.total \
        --format=csv,noheader,nounits 2>&1); then
    say "nvidia-smi failed or timed out: $out"
    exit 1
fi
count=$(printf '%s\n' "$out" | grep -c .)
if [ -n "${EXPECTED_GPUS:-}" ] && [ "$count" -ne "$EXPECTED_GPUS" ]; then
    say "sees $count GPU(s), expected $EXPECTED_GPUS"
    exit 1
fi
status=0
while IFS=', ' read -r index used ecc; do
    if [ "$used" -gt "${MAX_USED_MIB:-1024}" ] 2>/dev/null; then
        say "GPU $index already holds $used MiB (a process of an earlier job is still alive)"
        status=1
    fi
    case $ecc in
        ''|0|'[N/A]'|N/A) ;;
        *) say "GPU $index reports $ecc uncorrected ECC error(s) since boot"; status=1 ;;
    esac
done <<<"$out"
exit $status
