#!/bin/bash
# Submits run tiny-cpu-2node-20260101-000000: pretrain. Written by llmops; `llmops submit` runs it.
# Prints "<stage> <job id>..." for each stage submitted, "<stage> finished" for each skipped because it
# completed in an earlier submission. If a submission fails, the jobs submitted so far are cancelled.
set -euo pipefail
RUN_DIR=<run-dir>
cd "$RUN_DIR"
SUBMITTED=()
DEP=
trap 'status=$?; [ "$status" = 0 ] || [ ${#SUBMITTED[@]} = 0 ] || scancel "${SUBMITTED[@]}"' EXIT

# Stage 1: pretrain: torchrun on 2 node(s), as slurm/pretrain.sbatch says.
if [ -e slurm/pretrain.finished ]; then
    echo "pretrain finished"
else
    base=$(find logs -maxdepth 1 -name 'pretrain.restart-*.log' | sed 's/.*restart-//; s/[.]log$//' | sort -n | tail -n 1)
    base=$(( ${base:--1} + 1 ))  # after the attempts of earlier submissions
    ids=$(sbatch --parsable ${DEP:+--dependency="$DEP"} --export=ALL,LLMOPS_RESTART_BASE="$base" slurm/pretrain.sbatch)
    ids=${ids%%;*}  # --parsable prints <id>[;<cluster>]
    SUBMITTED+=($ids)
    echo "pretrain $ids"
    DEP="afterok:${ids##* }"
fi
