"""A checkpoint's full weights in one process, whatever TP/PP layout saved it.

The model is built for a one-process layout (TP1, PP1) in a process group of
one, and `dist_checkpointing` reshards the saved tensors into it, as a resume
on another layout does. Names are the Megatron-Core module's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from llmops.spec.run import RunSpec


def one_process_spec(spec: RunSpec) -> RunSpec:
    """The spec's model on one CPU process in fp32, unfused: the layout every conversion reads from."""
    from llmops.spec.run import TrainSpec

    train = spec.train or TrainSpec(steps=1, global_batch_size=1, micro_batch_size=1)  # an align-only run
    return spec.model_copy(update={
        "parallelism": spec.parallelism.model_copy(update={"tensor": 1, "pipeline": 1, "sequence_parallel": False}),
        "resources": spec.resources.model_copy(update={"cpu": True, "nodes": 1, "processes_per_node": 1}),
        "train": train.model_copy(update={"precision": "fp32", "fused_kernels": False, "cuda_graphs": False}),
        "model": spec.model.model_copy(update={"attention": "sdpa", "compile": False}),
    })


@contextlib.contextmanager
def process_group_of_one(spec: RunSpec) -> Iterator[None]:
    """A gloo group of this process alone with Megatron's groups for TP1/PP1 (torn down after)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from llmops_model.compat import cpu

    if dist.is_initialized():  # a caller that already has a group (a test, a training process) keeps it
        yield
        return
    cpu.activate()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
        cpu.seed_model_parallel_rng(spec.train.seed if spec.train is not None else 0)
        yield
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def build(spec: RunSpec):
    """The one-process GPT of `spec` (inside :func:`process_group_of_one`)."""
    from llmops_model.gpt import build_model

    return build_model(one_process_spec(spec), device=torch.device("cpu"))


def load(spec: RunSpec, checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every weight of `checkpoint` as full fp32 tensors, keyed by Megatron-Core's parameter names."""
    from llmops_model.train import checkpoint as ckpt

    with process_group_of_one(spec):
        model = build(spec)
        state = ckpt.load(checkpoint, sharded_state={"model": model.sharded_state_dict(prefix="")})
        ckpt.load_model(model, state["model"])
        return {k: v.detach().float().clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def load_hf(module, folder: Path, spec: RunSpec) -> int:
    """This rank's slices of a transformers checkpoint's weights, copied into `module` (any TP/PP layout).

    Every rank reads only the tensors its pipeline stage holds, memory-mapped from the safetensors files, and
    takes its tensor-parallel slice of each, as :func:`llmops_model.gpt.reinitialize` does for random weights;
    no collective is involved. Returns the number of parameters this rank loaded.
    """
    import re

    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory

    from llmops_model.hf import convert

    read = _reader(folder, spec)
    tp, rank = parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()
    loaded = 0
    with torch.no_grad():
        for key, sh in module.sharded_state_dict(prefix="").items():
            if isinstance(sh, ShardedObject) or key.endswith("_extra_state"):
                continue
            local = re.match(r"decoder\.layers\.(\d+)\.", key)  # this stage's layer j: global layer_number - 1
            name = key if local is None else \
                f"decoder.layers.{module.decoder.layers[int(local.group(1))].layer_number - 1}.{key[local.end():]}"
            full = convert.from_hf(name, read, spec.model)
            if isinstance(sh, ShardedTensor):
                part = full[sh.global_slice()[sh.prepend_axis_num:]]
            elif isinstance(sh, ShardedTensorFactory):  # the gated MLP's input linear: [gate | up], each split by TP
                gate, up = full.chunk(2)
                part = torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]])
            else:
                raise TypeError(f"{key}: no way to load a {type(sh).__name__}")
            sh.data.copy_(part.reshape(sh.data.shape).to(sh.data.dtype))
            loaded += part.numel()
        if module.share_embeddings_and_output_weights and module.post_process and not module.pre_process:
            weight = module.shared_embedding_or_output_weight()  # the last stage's copy of the tied embedding
            full = convert.from_hf("embedding.word_embeddings.weight", read, spec.model)
            weight.copy_(full.chunk(tp)[rank].to(weight.dtype))
    return loaded


def _reader(folder: Path, spec: RunSpec):
    """read(name) -> a tensor of the folder's safetensors files (the index's map, else every file's keys), by its
    *ForCausalLM name or the base model's (`wte.weight` in the Hub's GPT-2). `llmops validate` checked the
    folder against its config.json (llmops.spec.hf_weights.check_weights); a folder changed since is exit 2 here too."""
    from safetensors import safe_open

    from llmops.errors import UserError
    from llmops.spec import hf_weights
    from llmops_model.hf import convert

    where = hf_weights.weight_files(folder)  # the folder's own files only, whatever its index says
    family = convert.family(spec.model)
    handles: dict[Path, object] = {}

    def read(name: str) -> torch.Tensor:
        stored = hf_weights.stored_name(name, where, family)
        if stored is None:
            raise UserError(f"{folder} has no tensor {name}: its weights changed since the run was validated, or "
                            "do not fit its config.json", "start from the folder transformers' save_pretrained wrote")
        f = where[stored]
        if f not in handles:
            handles[f] = safe_open(f, "pt")
        return handles[f].get_tensor(stored).float()

    return read
