#!/usr/bin/env bash
# Install llmops (and llmops_model) into an image without touching its torch.
#
# NGC PyTorch images carry their own CUDA build of torch with a pre-release
# version (e.g. 2.6.0a0+ecf3bae40a) that pip does not count as ">=2.6"; a
# plain `pip install .` would replace it with a generic wheel from PyPI and
# lose NGC's NCCL, cuDNN and Transformer Engine pairing. So: install the
# project's other dependencies as declared in pyproject.toml, then the
# project itself without dependencies, then prove torch was kept.
set -euo pipefail
src=${1:-/opt/llmops/src}
before=$(python -c 'import torch; print(torch.__version__)')
python - "$src/pyproject.toml" > /tmp/llmops-deps.txt <<'PY'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
# The core dependencies and the `hf` extra (transformers: export, generate, the samples each stage writes).
deps = project["dependencies"] + project["optional-dependencies"]["hf"]
print("\n".join(d for d in deps if re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower() != "torch"))
PY
pip install --no-cache-dir -r /tmp/llmops-deps.txt
pip install --no-cache-dir --no-deps "$src"
after=$(python -c 'import torch; print(torch.__version__)')
if [[ "$before" != "$after" ]]; then
  echo "torch changed from $before to $after while installing llmops" >&2
  exit 1
fi
python -c 'import llmops, llmops_model; print("llmops installed over torch", __import__("torch").__version__)'
