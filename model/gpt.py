"""The GPT: a Megatron-Core ``GPTModel`` built from a run spec.

Variants are chosen by layer spec, as Megatron intends (``ModuleSpec``), not
by branches inside the model: :func:`layer_spec` picks the implementation
and :func:`transformer_config` carries the shape and the parallel layout.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)

from llmops.errors import UserError
from llmops.spec.run import RunSpec


def param_dtype(spec: RunSpec) -> torch.dtype:
    """bf16 on GPUs unless the spec says fp32; always fp32 on CPUs."""
    if spec.resources.cpu or (spec.train is not None and spec.train.precision == "fp32"):
        return torch.float32
    return torch.bfloat16


def transformer_config(spec: RunSpec) -> TransformerConfig:
    """Megatron's TransformerConfig for the spec's model shape and layout."""
    m, par = spec.model, spec.parallelism
    dtype = param_dtype(spec)
    cpu = spec.resources.cpu
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        ffn_hidden_size=m.ffn_hidden_size,
        normalization=m.normalization,
        gated_linear_unit=m.activation == "swiglu",
        activation_func=F.silu if m.activation == "swiglu" else F.gelu,
        add_bias_linear=m.activation != "swiglu",
        add_qkv_bias=m.qkv_bias,
        layernorm_epsilon=m.norm_epsilon,
        hidden_dropout=m.dropout,
        attention_dropout=m.dropout,
        init_method_std=m.init_std,
        tensor_model_parallel_size=par.tensor,
        pipeline_model_parallel_size=par.pipeline,
        sequence_parallel=par.sequence_parallel,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        # Weights are created on the CPU and then re-drawn layout-invariantly (below).
        use_cpu_initialization=cpu,
        perform_initialization=True,
        # Fusions: the bias/activation and bias/dropout ones are TorchScript (any GPU); the
        # softmax and persistent layer-norm kernels come from Apex/TE, which the sdpa and
        # megatron specs do without.
        bias_activation_fusion=not cpu,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        bias_dropout_fusion=not cpu,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,  # switched on in build_model where a kernel for it exists
        cross_entropy_loss_fusion=False,
        deallocate_pipeline_outputs=True,
    )


def attention_backend(spec: RunSpec) -> str:
    """The core attention this process will use (resolving `auto`)."""
    from llmops_model.attention import available_backends

    choice = spec.model.attention
    have = available_backends()
    if choice == "auto":
        # By measurement, not by presence: in bf16 the project's fast path was as fast as TE's layers or faster
        # (model.attention's help has the figures); FP8 GEMMs exist only in TE's.
        choice = "te" if spec.train is not None and spec.train.precision == "fp8" else "sdpa"
    if choice not in have:
        if spec.train is not None and spec.train.precision == "fp8":
            from llmops_model import fp8

            fp8.transformer_engine()  # says what is missing and how to get it
        raise UserError(f"model.attention {choice} is not available here (available: {', '.join(have)})",
                        "install Transformer Engine (the GPU image has it), or set model.attention: auto")
    return choice


def layer_spec(spec: RunSpec, backend: str | None = None) -> ModuleSpec:
    """The transformer layer, chosen by spec (Megatron's way), not by branches in the model.

    te: Transformer Engine's fused layers. sdpa: Megatron-Core's local modules with
    the SDPA core attention and the linears of :mod:`llmops_model.fast.layers`. megatron: the
    local modules unchanged (unfused attention). `backend`: :func:`attention_backend`'s answer, if known.
    """
    backend = backend or attention_backend(spec)
    if backend == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    layer = get_gpt_layer_local_spec(normalization=spec.model.normalization)
    if backend == "sdpa":
        from llmops_model.attention import SDPAttention
        from llmops_model.fast import layers

        layer.submodules.self_attention.submodules.core_attention = SDPAttention
        layers.use_in(layer, fused_mlp=spec.train.fused_kernels and not spec.resources.cpu)
    return layer


def decoder_spec(spec: RunSpec, config: TransformerConfig) -> ModuleSpec:
    """This pipeline stage's decoder block: :func:`layer_spec`'s layer for each of its layers, and the norm after
    the last one.

    Given a layer spec alone, Megatron ends the block in the norm that imports (Transformer Engine's ``TENorm``
    wherever TE is installed, else Apex's, else torch's), whatever the layers are. The project's own layers
    would then end in a TE module on a machine with TE and in torch's norm on one without: two models for one
    spec. TE's layers keep TE's norm; the local layers end in the norm they use themselves.
    """
    backend = attention_backend(spec)
    layer = layer_spec(spec, backend)
    if backend == "te":
        return layer
    layers = get_num_layers_to_build(config, pp_rank=parallel_state.get_pipeline_model_parallel_rank())
    return ModuleSpec(module=TransformerBlock, submodules=TransformerBlockSubmodules(
        layer_specs=[layer] * layers, layer_norm=layer.submodules.input_layernorm))


class GPT(GPTModel):
    """Megatron-Core's GPTModel with the two-pass vocabulary-parallel cross entropy (:mod:`llmops_model.fast.loss`)."""

    fused_loss = True

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not self.fused_loss:
            return super().compute_language_model_loss(labels, logits)
        from llmops_model.fast.loss import vocab_parallel_cross_entropy

        # labels [b, s], logits [s, b, v/tp] -> loss [b, s], as Megatron's method returns it
        group = parallel_state.get_tensor_model_parallel_group() if self.config.tensor_model_parallel_size > 1 else None
        loss = vocab_parallel_cross_entropy(logits, labels.transpose(0, 1).contiguous(), group)
        return loss.transpose(0, 1).contiguous()


def compiles_layers(spec: RunSpec, *, graphed: bool) -> bool:
    """Whether the transformer layers are compiled: model.compile, with auto meaning "where the step is a CUDA
    graph" (inside one, compiled kernels cost nothing per call; outside, their guards and launches did), and
    the layers are the project's own: TE's fuse their norms, activations and casts themselves, mark much of
    their Python as not to be traced, and under FP8 TorchDynamo fails in their quantized tensors (a guard in
    their ``detach``)."""
    if spec.model.compile == "auto":
        return graphed and attention_backend(spec) != "te"
    return bool(spec.model.compile)


def build_model(spec: RunSpec, *, device: torch.device, compile_layers: bool = False) -> GPTModel:
    """This process's pipeline stage of the GPT, initialised identically for every layout.

    Precondition: parallel_state is initialised for the spec's layout.
    """
    config = transformer_config(spec)
    if spec.train.precision == "fp8":
        from llmops_model import fp8

        fp8.configure(config, spec, device)
    if device.type == "cuda" and spec.train.fused_kernels:
        from llmops_model.fast import fallbacks

        fallbacks.install(device)
        config.gradient_accumulation_fusion = fallbacks.wgrad_accumulation_available(device)
    model = GPT(
        config=config,
        transformer_layer_spec=decoder_spec(spec, config),
        vocab_size=spec.model.padded_vocab_size,
        max_sequence_length=spec.model.seq_length,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=spec.model.tie_embeddings,
        position_embedding_type=spec.model.position_embedding,
        rotary_base=spec.model.rope_base,
        rope_scaling=spec.model.rope_scaling_factor is not None,
        rope_scaling_factor=spec.model.rope_scaling_factor or 8.0,
    )
    model.fused_loss = spec.train.fused_kernels
    if config.gradient_accumulation_fusion and model.pre_process:
        from llmops_model.fast import layers

        layers.use_fused_embedding_grad(model.embedding.word_embeddings)
    model.to(device)
    reinitialize(model, seed=spec.train.seed, std=spec.model.init_std, num_layers=spec.model.num_layers)
    if compile_layers:
        if device.type == "cuda":
            from llmops_model.fast import inductor

            inductor.install()
        # In place (nn.Module.compile), so parameter names and checkpoints are unchanged.
        for layer in model.decoder.layers:
            layer.compile()
    return model


_OUTPUT_PROJECTIONS = ("linear_proj.weight", "linear_fc2.weight")


@torch.no_grad()
def reinitialize(model: GPTModel, *, seed: int, std: float, num_layers: int) -> None:
    """Draw every weight from a generator keyed by (seed, global name, layer).

    Megatron's own initialisation draws from one stream in construction order,
    so a different tensor or pipeline layout sees different weights. Drawing
    each global tensor from its own seeded generator and taking this rank's
    slice of it makes the model the same function for every layout, which is
    what lets TP/PP layouts be compared and resumed into one another.
    Norm weights stay one and biases zero, as Megatron sets them; output
    projections use the scaled init, std / sqrt(2 * num_layers).
    """
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    scaled_std = std / (2.0 * num_layers) ** 0.5
    tensors = model.sharded_state_dict(prefix="")
    # Factories first: SwiGLU's first MLP weight is two global tensors (gate and up halves, each split over
    # tensor-parallel ranks); built, each half is a view of this rank's weight, drawn like any other tensor.
    apply_factories(tensors)
    for sh in _sharded_tensors(tensors, ShardedTensor):
        if not _is_random_weight(sh.key):
            continue
        layer_ix = sh.global_offset[: sh.prepend_axis_num]
        gen_seed = zlib.crc32(f"{seed}:{sh.key}:{layer_ix}".encode())
        g = torch.Generator(device=sh.data.device).manual_seed(gen_seed)
        full_shape = sh.global_shape[sh.prepend_axis_num :]
        full = torch.empty(full_shape, dtype=torch.float32, device=sh.data.device)
        full.normal_(0.0, scaled_std if sh.key.endswith(_OUTPUT_PROJECTIONS) else std, generator=g)
        local = full[sh.global_slice()[sh.prepend_axis_num :]]
        sh.data.copy_(local.to(sh.data.dtype))
    if model.share_embeddings_and_output_weights and model.post_process and not model.pre_process:
        _init_tied_output(model, seed=seed, std=std)


def _init_tied_output(model: GPTModel, *, seed: int, std: float) -> None:
    # The last stage holds its own copy of a tied embedding; draw it from the embedding's key.
    weight = model.shared_embedding_or_output_weight()
    tp, rank = parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()
    rows = weight.shape[0]
    key = f"{seed}:embedding.word_embeddings.weight:()"
    g = torch.Generator(device=weight.device).manual_seed(zlib.crc32(key.encode()))
    full = torch.empty((rows * tp, weight.shape[1]), dtype=torch.float32, device=weight.device)
    full.normal_(0.0, std, generator=g)
    weight.data.copy_(full[rank * rows : (rank + 1) * rows].to(weight.dtype))


def _is_random_weight(key: str) -> bool:
    if not key.endswith(".weight"):
        return False
    return "norm" not in key.rsplit(".", 2)[-2] and "layer_norm" not in key


def _sharded_tensors(tree, cls):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _sharded_tensors(v, cls)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _sharded_tensors(v, cls)
    elif isinstance(tree, cls) and tree.data is not None:
        yield tree
