"""GEMMs with cuBLASLt epilogues that torch does not expose: bias + GELU with its input kept, its backward,
and a linear whose output is added to a residual inside the GEMM.

Without Transformer Engine, the GPT's MLP runs its bias + GELU and that
activation's backward as separate passes over the layer's widest
activation ([tokens, 4h]): on one H100 they are about 4% of a GPT-1.3B step.
cuBLASLt can apply both inside the GEMMs' epilogues, as Transformer Engine
does:

* ``GELU_AUX_BIAS`` on the first MLP linear writes ``gelu(x @ w^T + b)`` and,
  as the auxiliary output, the pre-activation that the backward pass needs;
* ``DGELU`` on the second linear's input-gradient GEMM multiplies by
  ``gelu'(pre-activation)``.

Measured on one H100 at the 1.3B MLP's shapes (16,384 tokens, 2048 -> 8192),
against the GEMM plus a compiled elementwise kernel: the forward 0.95 ms
against 0.98, the backward (with the bias gradient as a separate sum) 1.08 ms
against 1.16. cuBLASLt's ``DGELU_BGRAD``, which would reduce the bias
gradient in the epilogue too, ran there as a GEMM plus a generic epilogue
kernel, 2.09 ms, and is not used.

``linear_residual`` is the output projection of a pre-norm transformer
sub-layer together with the residual connection after it: cuBLASLt reads the
residual as the GEMM's ``C`` operand (``beta = 1``) and adds the bias in the
epilogue, so ``residual + x @ w^T + b`` is one GEMM that writes the next
residual stream. torch's ``addmm`` takes a full ``C`` only by first copying
it into the output, and its bias must then be a separate add.

The GELU is the tanh approximation, the one Megatron-Core's fused
``bias_gelu`` uses. The library is the cuBLASLt that torch itself loaded,
called through ``ctypes``; every call is made on torch's current stream with
a workspace allocated once per device, so it can be captured in a CUDA graph.
Both GEMMs are torch custom operators (``torch.ops.llmops.*``), which a
compiled transformer layer calls from inside its graph.
"""

from __future__ import annotations

import ctypes
import functools
import threading

import torch

# cublasLt.h
_COMPUTE_32F = 68
_R_32F, _R_16F, _R_16BF = 0, 2, 14
_OP_N, _OP_T = 0, 1
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
_DESC_AUX_POINTER, _DESC_AUX_LD = 11, 12
_PREF_MAX_WORKSPACE_BYTES = 1
EPILOGUE_DEFAULT, EPILOGUE_BIAS = 1, 4
EPILOGUE_GELU_AUX_BIAS = 164
EPILOGUE_DGELU = 192
_WORKSPACE_BYTES = 32 * 2**20
_CANDIDATES = 8  # algorithms timed per shape and epilogue, on first use
_TUNE_RUNS = 3
_DTYPES = {torch.bfloat16: _R_16BF, torch.float16: _R_16F}


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace_size", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves_count", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


class CublasLtError(RuntimeError):
    pass


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The cuBLASLt torch loaded (found in this process's mappings), else one by name; None if there is none."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.init()
    candidates = []
    try:
        with open("/proc/self/maps") as maps:
            candidates += sorted({line.split()[-1] for line in maps if "libcublasLt.so" in line})
    except OSError:
        pass
    candidates += ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"]
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        _declare(lib)
        return lib
    return None


def _declare(lib: ctypes.CDLL) -> None:
    p, vp, sz = ctypes.POINTER, ctypes.c_void_p, ctypes.c_size_t
    lib.cublasLtCreate.argtypes = [p(vp)]
    lib.cublasLtMatmulDescCreate.argtypes = [p(vp), ctypes.c_int, ctypes.c_int]
    lib.cublasLtMatmulDescSetAttribute.argtypes = [vp, ctypes.c_int, vp, sz]
    lib.cublasLtMatrixLayoutCreate.argtypes = [p(vp), ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64]
    lib.cublasLtMatmulPreferenceCreate.argtypes = [p(vp)]
    lib.cublasLtMatmulPreferenceSetAttribute.argtypes = [vp, ctypes.c_int, vp, sz]
    lib.cublasLtMatmulAlgoGetHeuristic.argtypes = [vp, vp, vp, vp, vp, vp, vp, ctypes.c_int, p(_HeuristicResult),
                                                   p(ctypes.c_int)]
    lib.cublasLtMatmul.argtypes = [vp] * 13 + [vp, sz, vp]
    for name in ("cublasLtCreate", "cublasLtMatmulDescCreate", "cublasLtMatmulDescSetAttribute",
                 "cublasLtMatrixLayoutCreate", "cublasLtMatmulPreferenceCreate",
                 "cublasLtMatmulPreferenceSetAttribute", "cublasLtMatmulAlgoGetHeuristic", "cublasLtMatmul"):
        getattr(lib, name).restype = ctypes.c_int


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CublasLtError(f"{what} failed with cuBLAS status {status}")


def available() -> bool:
    """Whether the epilogue GEMMs can run in this process."""
    return _library() is not None


class _Plan:
    """A matmul descriptor, its layouts and the chosen algorithm, for one shape and epilogue."""

    def __init__(self, lib, handle, workspace_bytes, *, dtype, epilogue, trans_a, trans_b, a_shape, b_shape, d_shape):
        self.lib = lib
        vp = ctypes.c_void_p
        self.desc = vp()
        _check(lib.cublasLtMatmulDescCreate(ctypes.byref(self.desc), _COMPUTE_32F, _R_32F), "MatmulDescCreate")
        self._set(_DESC_TRANSA, ctypes.c_int32(trans_a))
        self._set(_DESC_TRANSB, ctypes.c_int32(trans_b))
        self._set(_DESC_EPILOGUE, ctypes.c_uint32(epilogue))
        if epilogue in (EPILOGUE_GELU_AUX_BIAS, EPILOGUE_DGELU):
            self._set(_DESC_AUX_LD, ctypes.c_int64(d_shape[0]))
        self.layouts = []
        for rows, cols in (a_shape, b_shape, d_shape):
            layout = vp()
            _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), dtype, rows, cols, rows), "MatrixLayoutCreate")
            self.layouts.append(layout)
        pref = vp()
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "MatmulPreferenceCreate")
        limit = ctypes.c_uint64(workspace_bytes)
        _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_MAX_WORKSPACE_BYTES, ctypes.byref(limit),
                                                         ctypes.sizeof(limit)), "MatmulPreferenceSetAttribute")
        results = (_HeuristicResult * _CANDIDATES)()
        found = ctypes.c_int(0)
        a, b, d = self.layouts
        _check(lib.cublasLtMatmulAlgoGetHeuristic(handle, self.desc, a, b, d, d, pref, _CANDIDATES, results,
                                                  ctypes.byref(found)), "MatmulAlgoGetHeuristic")
        self.candidates = [results[i] for i in range(found.value) if results[i].state == 0]
        if not self.candidates:
            raise CublasLtError(f"cuBLASLt has no algorithm for epilogue {epilogue} at {a_shape} x {b_shape}")
        self.heuristic = self.candidates[0]
        self.tuned = len(self.candidates) == 1

    def _set(self, attribute: int, value) -> None:
        _check(self.lib.cublasLtMatmulDescSetAttribute(self.desc, attribute, ctypes.byref(value), ctypes.sizeof(value)),
               f"MatmulDescSetAttribute({attribute})")

    def run(self, handle, a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, *, bias: torch.Tensor | None,
            aux: torch.Tensor | None, workspace: torch.Tensor, c: torch.Tensor | None = None) -> None:
        """``d = a @ b (+ c) + epilogue``; ``c``, when given, is read with ``beta = 1`` (it may not be ``d``)."""
        if not self.tuned and not torch.cuda.is_current_stream_capturing():
            self._tune(handle, a, b, d, bias=bias, aux=aux, workspace=workspace, c=c)
        self._launch(handle, a, b, d, bias=bias, aux=aux, workspace=workspace, c=c)

    def _tune(self, handle, a, b, d, **kwargs) -> None:
        """Time cuBLASLt's candidate algorithms on the first real operands and keep the fastest.

        The heuristic's first choice is not always the fastest with an epilogue: on an H100 it picked an
        older kernel for the GELU backward than the ones the plain GEMM of that shape runs. Each process
        tunes for itself, so two runs may differ in the last bits of these GEMMs.
        """
        times = []
        for candidate in self.candidates:
            self.heuristic = candidate
            try:
                self._launch(handle, a, b, d, **kwargs)  # warm-up
            except CublasLtError:
                times.append(float("inf"))
                continue
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(_TUNE_RUNS):
                self._launch(handle, a, b, d, **kwargs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        self.heuristic = self.candidates[min(range(len(times)), key=times.__getitem__)]
        self.tuned = True

    def _launch(self, handle, a, b, d, *, bias, aux, workspace, c) -> None:
        if bias is not None:
            self._set(_DESC_BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))
        if aux is not None:
            self._set(_DESC_AUX_POINTER, ctypes.c_void_p(aux.data_ptr()))
        alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0 if c is None else 1.0)
        c_ptr = d.data_ptr() if c is None else c.data_ptr()  # with beta = 0, C is not read
        la, lb, ld = self.layouts
        stream = torch.cuda.current_stream(d.device).cuda_stream
        # The algorithm is the first field of the heuristic result, so the result's address is the algorithm's.
        _check(self.lib.cublasLtMatmul(handle, self.desc, ctypes.addressof(alpha), a.data_ptr(), la, b.data_ptr(), lb,
                                       ctypes.addressof(beta), c_ptr, ld, d.data_ptr(), ld,
                                       ctypes.addressof(self.heuristic), workspace.data_ptr(), workspace.numel(),
                                       stream), "Matmul")


class _Device:
    """One device's cuBLASLt handle, workspace and plans."""

    def __init__(self, lib, device: torch.device):
        self.lib = lib
        self.handle = ctypes.c_void_p()
        with torch.cuda.device(device):
            _check(lib.cublasLtCreate(ctypes.byref(self.handle)), "cublasLtCreate")
        self.workspace = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.plans: dict[tuple, _Plan] = {}

    def plan(self, **key) -> _Plan:
        k = tuple(sorted(key.items()))
        if k not in self.plans:
            self.plans[k] = _Plan(self.lib, self.handle, self.workspace.numel(), **key)
        return self.plans[k]


_devices: dict[int, _Device] = {}
_lock = threading.Lock()


def _device(t: torch.Tensor) -> _Device:
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    with _lock:
        if index not in _devices:
            lib = _library()
            if lib is None:
                raise CublasLtError("cuBLASLt is not available in this process")
            _devices[index] = _Device(lib, torch.device("cuda", index))
        return _devices[index]


def _check_operands(*tensors: torch.Tensor) -> None:
    dtype = tensors[0].dtype
    for t in tensors:
        if not t.is_cuda or t.dtype != dtype or dtype not in _DTYPES or not t.is_contiguous():
            raise ValueError("cuBLASLt epilogue GEMMs take contiguous CUDA bf16/fp16 tensors of one dtype")


# Custom operators, so that a compiled transformer layer keeps them as opaque calls (with the shapes their
# fake implementations give) instead of breaking its graph at a ctypes call.
@torch.library.custom_op("llmops::linear_gelu", mutates_args=())
def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gelu(x @ weight^T + bias), x @ weight^T + bias)`` for x [tokens, in], weight [out, in], bias [out]."""
    x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
    _check_operands(x, weight, bias)
    tokens, k = x.shape
    n = weight.shape[0]
    out = torch.empty(tokens, n, dtype=x.dtype, device=x.device)
    pre = torch.empty_like(out)
    dev = _device(x)
    # Column-major view: out^T [n, tokens] = weight [k, n]^T @ x^T [k, tokens].
    plan = dev.plan(dtype=_DTYPES[x.dtype], epilogue=EPILOGUE_GELU_AUX_BIAS, trans_a=_OP_T, trans_b=_OP_N,
                    a_shape=(k, n), b_shape=(k, tokens), d_shape=(n, tokens))
    plan.run(dev.handle, weight, x, out, bias=bias, aux=pre, workspace=dev.workspace)
    return out, pre


@linear_gelu.register_fake
def _(x, weight, bias):
    out = x.new_empty(x.shape[0], weight.shape[0])
    return out, torch.empty_like(out)


@torch.library.custom_op("llmops::matmul_dgelu", mutates_args=())
def matmul_dgelu(grad: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """``(grad @ weight) * gelu'(pre)`` for grad [tokens, out], weight [out, in], pre [tokens, in].

    The backward of ``linear(gelu(pre), weight)`` with respect to ``pre``; its sum over tokens is the
    gradient of the bias that ``pre`` included.
    """
    grad, weight, pre = grad.contiguous(), weight.contiguous(), pre.contiguous()
    _check_operands(grad, weight, pre)
    tokens, n = grad.shape
    k = weight.shape[1]
    out = torch.empty(tokens, k, dtype=grad.dtype, device=grad.device)
    dev = _device(grad)
    # Column-major view: out^T [k, tokens] = weight^T [k, n] @ grad^T [n, tokens].
    plan = dev.plan(dtype=_DTYPES[grad.dtype], epilogue=EPILOGUE_DGELU, trans_a=_OP_N, trans_b=_OP_N,
                    a_shape=(k, n), b_shape=(n, tokens), d_shape=(k, tokens))
    plan.run(dev.handle, weight, grad, out, bias=None, aux=pre, workspace=dev.workspace)
    return out


@matmul_dgelu.register_fake
def _(grad, weight, pre):
    return grad.new_empty(grad.shape[0], weight.shape[1])


def _residual_gemm_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           residual: torch.Tensor) -> bool:
    operands = [x, weight, residual] + ([bias] if bias is not None else [])
    return (all(t.is_cuda and t.dtype == x.dtype for t in operands) and x.dtype in _DTYPES
            and weight.shape[0] % 8 == 0 and weight.shape[1] % 8 == 0 and available())


@torch.library.custom_op("llmops::linear_residual", mutates_args=())
def linear_residual(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    residual: torch.Tensor) -> torch.Tensor:
    """``residual + x @ weight^T (+ bias)`` for x [tokens, in], weight [out, in], bias [out] and a residual of
    any shape with ``tokens * out`` elements; the result has the residual's shape.

    On CUDA in bf16/fp16 one cuBLASLt GEMM reads the residual as ``C``; elsewhere (CPUs, fp32) it is ``addmm``
    plus the bias, the same sum.
    """
    n = weight.shape[0]
    if not _residual_gemm_applies(x, weight, bias, residual):
        out = torch.empty_like(residual, memory_format=torch.contiguous_format)
        flat = torch.addmm(residual.reshape(-1, n), x, weight.t(), out=out.view(-1, n))
        if bias is not None:
            flat.add_(bias)
        return out
    x, weight, residual = x.contiguous(), weight.contiguous(), residual.contiguous()
    bias = bias.contiguous() if bias is not None else None
    tokens, k = x.shape
    out = torch.empty_like(residual)
    dev = _device(x)
    # Column-major view: out^T [n, tokens] = weight [k, n]^T @ x^T [k, tokens] + residual^T.
    plan = dev.plan(dtype=_DTYPES[x.dtype], epilogue=EPILOGUE_DEFAULT if bias is None else EPILOGUE_BIAS,
                    trans_a=_OP_T, trans_b=_OP_N, a_shape=(k, n), b_shape=(k, tokens), d_shape=(n, tokens))
    plan.run(dev.handle, weight, x, out, bias=bias, aux=None, workspace=dev.workspace, c=residual)
    return out


@linear_residual.register_fake
def _(x, weight, bias, residual):
    return torch.empty_like(residual)


__all__ = ["CublasLtError", "available", "linear_gelu", "linear_residual", "matmul_dgelu"]
