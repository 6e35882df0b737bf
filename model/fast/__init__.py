"""The GPU fast path: what replaces Megatron-Core's fallbacks when Transformer Engine and Apex are absent.

* :mod:`.linear`, :mod:`.layers`, :mod:`.qkv`: Megatron's linears, MLP, attention and layer, same parameters;
* :mod:`.cublaslt`: GEMMs with cuBLASLt epilogues, as torch custom operators;
* :mod:`.fallbacks`: torch-native stand-ins for the Apex/TE kernels Megatron looks for;
* :mod:`.loss`: the two-pass vocabulary-parallel cross entropy;
* :mod:`.inductor`, :mod:`.graphs`: compiled layers and the CUDA-graph step.
"""
