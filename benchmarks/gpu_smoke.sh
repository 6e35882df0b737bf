#!/usr/bin/env bash
# A GPU machine trains, checkpoints asynchronously and resumes: the 350M example
# for 60 steps, then the same run extended to 80 steps from its checkpoints.
# Usage: benchmarks/gpu_smoke.sh OUT_DIR   (needs llmops importable and one GPU)
set -euo pipefail
out=${1:?usage: gpu_smoke.sh OUT_DIR}
runs="$out/runs"
mkdir -p "$runs"
python3 -m llmops run examples/gpt-350m-1gpu.yaml --runs-dir "$runs"
first=$(ls -d "$runs"/gpt-350m-1gpu-* | head -1)
sed -e "s|^  steps: 60|  steps: 80|" -e "s|^  keep_last: 2|  keep_last: 2\n  dir: $first/checkpoints|" \
    examples/gpt-350m-1gpu.yaml > "$out/extended.yaml"
sed -i "s|^name: gpt-350m-1gpu|name: gpt-350m-1gpu-extended|" "$out/extended.yaml"
python3 -m llmops run "$out/extended.yaml" --runs-dir "$runs"
grep -h "resumed from\|checkpoint" "$runs"/*/logs/pretrain.restart-0.log
