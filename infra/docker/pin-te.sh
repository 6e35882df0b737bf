#!/usr/bin/env bash
# Put Transformer Engine at the version llmops's TE and FP8 paths were measured and tested with.
#
#   pin-te.sh 2.20.2     # replace the image's TE unless it is that version already
#   pin-te.sh image      # keep whatever TE the image ships
#
# NGC images ship a TE of their own release, built from source; the version
# each NGC tag carries is in its release notes, and it moves under llmops
# (FP8 recipes, the THD attention of packed SFT, the scaling-state
# checkpoints). So the image installs the pinned one: the core library as
# the wheel for the image's CUDA major version, and TE's PyTorch extension
# built against the image's own torch (no build isolation: pip must not
# fetch another torch to build it with). torch itself is left as it is.
set -euo pipefail
want=${1:?usage: pin-te.sh VERSION|image}
# Versions from the installed distributions' metadata: importing TE needs a GPU driver, which a build has not.
version() { python -c "import importlib.metadata as m; print(m.version('$1').split('+')[0])" 2>/dev/null || echo none; }
have=$(version transformer_engine)
if [[ "$want" == image ]]; then
  echo "Transformer Engine: keeping the image's ($have)"
  exit 0
fi
if [[ "$have" != "$want" ]]; then
  torch_before=$(python -c 'import torch; print(torch.__version__)')
  cuda_major=$(python -c 'import torch; print(torch.version.cuda.split(".")[0])')
  echo "Transformer Engine: $have -> $want (CUDA $cuda_major)"
  NVTE_FRAMEWORK=pytorch MAX_JOBS=${MAX_JOBS:-8} pip install --no-cache-dir --no-build-isolation \
      "transformer-engine[pytorch,core_cu${cuda_major}]==${want}"
  torch_after=$(python -c 'import torch; print(torch.__version__)')
  if [[ "$torch_before" != "$torch_after" ]]; then
    echo "torch changed from $torch_before to $torch_after while installing Transformer Engine" >&2
    exit 1
  fi
  # TE's PyTorch half, which pip built above (an image's own TE, built from source, is one distribution)
  got=$(version transformer_engine_torch)
  if [[ "$got" != "$want" ]]; then
    echo "transformer_engine_torch is $got, not $want" >&2
    exit 1
  fi
fi
got=$(version transformer_engine)
if [[ "$got" != "$want" ]]; then
  echo "Transformer Engine is $got, not $want" >&2
  exit 1
fi
echo "Transformer Engine $want"
