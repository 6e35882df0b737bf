"""The GPU side of llmops: a Megatron-Core GPT, its training loop and checkpoints.

Installed as the import package ``llmops_model`` (the folder is ``model/``).
This is the only code that imports torch and megatron; the control plane in
``llmops`` launches it as ``python -m llmops_model.entrypoint RUN_DIR``.
"""

import importlib.util as _util
import os as _os


def _same_cudnn_as_torch() -> None:
    """Transformer Engine loads cuDNN itself, globally, preferring a system copy (CUDNN_HOME, CUDNN_PATH,
    CUDA_HOME, /usr/local/cuda) to the one torch's pip wheels bundle. Where the two differ, torch's cuDNN then
    fails its version check: its cuDNN attention is off and SDPA falls back to a slower kernel (GPT-1.3B on an
    H200 with TE importable: 8% slower). TE is pointed at torch's copy when there is one and nobody chose."""
    if "CUDNN_HOME" in _os.environ or "CUDNN_PATH" in _os.environ:
        return
    try:
        found = _util.find_spec("nvidia.cudnn")
    except (ImportError, ValueError):
        return
    for folder in (found.submodule_search_locations or []) if found else []:
        if _os.path.isdir(_os.path.join(folder, "lib")):
            _os.environ["CUDNN_HOME"] = folder
            return


_same_cudnn_as_torch()
