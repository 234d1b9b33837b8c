"""Every kernel variant the CUDA launchers start: argument types and block size.

The static check (``kernprop cuda-check``, ``kernprop.cuda_check``) and the compile test
(``tests/cuda/device_compile_check.py``) compile exactly this list, so that a kernel a
launcher can start is a kernel that was compiled, assembled and measured without a GPU.
Numba compiles one specialisation per tuple of argument types, so the list holds one
entry per type tuple a launcher can pass:

* array layouts: ``C`` for what the launchers allocate or copy from NumPy (always
  C-contiguous), and ``A`` for the row, GEMM, attention and embedding-lookup kernels
  when the caller hands in a strided device view (a transposed or sliced device array,
  heads interleaved with positions), which those kernels read in place.  Elementwise
  kernels, optimizer steps, small vectors (layer-norm weights and statistics, lse) and
  the embedding gradient always get ``C`` arrays (``_common.to_device_flat``).
* Python scalars reach a kernel as ``int64``, ``float64`` or ``boolean``; the kernels
  cast them to the array dtype themselves.
* compile-time variants (GEMM transposes, log or plain softmax, with or without the
  cross-entropy gradient) are separate dispatchers, built by the modules' factories.

``wide`` marks kernels whose float64 arithmetic is intended in float32 too (a float64
accumulator for a deterministic sum); every other float32 kernel must do none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import types

from . import _common, activations, attention, embedding, losses, matmul, normalization, optimizers, softmax

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Launch:
    """One compiled specialisation of one kernel, as a launcher starts it.

    kernel      name of the ``_kernel`` function
    variant     its compile-time variant (``""`` when it has none) and input layout
    dtype       the dtype of the arrays it computes on
    dispatcher  the ``numba.cuda`` dispatcher the launcher calls
    argtypes    the Numba types of its arguments
    block       threads per block, as the launcher configures it (the largest it uses)
    wide        float64 arithmetic is intended even for float32 arrays
    """

    kernel: str
    variant: str
    dtype: np.dtype
    dispatcher: object
    argtypes: tuple
    block: tuple
    wide: bool = False

    @property
    def threads(self) -> int:
        """Threads per block."""
        total = 1
        for extent in self.block:
            total *= extent
        return total

    @property
    def name(self) -> str:
        """``kernel[variant]`` for tables."""
        return f"{self.kernel}[{self.variant}]" if self.variant else self.kernel

    @property
    def signature(self) -> str:
        """The argument types, short: ``f4[:,:]C`` is a C-contiguous float32 matrix."""
        return "(" + ", ".join(short_type(t) for t in self.argtypes) + ")"


def short_type(t) -> str:
    """A compact name of a Numba argument type for one table cell."""
    if isinstance(t, types.Array):
        return f"{np.dtype(str(t.dtype)).str[1:]}[{','.join(':' * t.ndim)}]{t.layout}"
    return {types.float64: "f8", types.int64: "i8", types.boolean: "b1"}.get(t, str(t))


def _arr(dtype, ndim, layout="C"):
    return types.Array(numba.from_dtype(np.dtype(dtype)), ndim, layout)


def launches(dtypes=DTYPES) -> list[Launch]:
    """Every (kernel, argument types, block) the launchers of this backend can start,
    for each dtype in ``dtypes``."""
    out = []
    for dtype in map(np.dtype, dtypes):
        out += _matmul(dtype) + _activations(dtype) + _softmax(dtype) + _losses(dtype) + _optimizers(dtype)
        out += _normalization(dtype) + _attention(dtype) + _embedding(dtype)
    return out


def _matmul(dtype):
    i64, b = types.int64, types.boolean
    c1, c2 = _arr(dtype, 1), _arr(dtype, 2)
    gemm_block = (matmul.THREADS_X, matmul.THREADS_Y)
    colsum_block = (matmul.COLSUM_X, matmul.COLSUM_Y)
    out = []
    for layout in "CA":
        a2 = _arr(dtype, 2, layout)
        for ta, tb in ((False, False), (False, True), (True, False)):
            out.append(Launch(
                "gemm_kernel", f"trans_a={ta}, trans_b={tb}, {layout}", dtype,
                matmul._gemm_kernel(dtype, ta, tb), (a2, a2, c1, c2, b, i64, b), gemm_block,
            ))
        # float64 on purpose: the bias gradient sums N rows, float32 would lose digits
        out.append(Launch("column_sum_kernel", layout, dtype, matmul._column_sum_kernel(dtype),
                          (a2, c1, b), colsum_block, wide=True))
    return out


def _activations(dtype):
    c1 = _arr(dtype, 1)
    block = (_common.ELEMENTWISE_THREADS,)
    out = []
    for name, kernel in activations._kernels(dtype).items():
        nargs = 2 if name.endswith("forward") else 3
        out.append(Launch(f"{name}_kernel", "", dtype, kernel, (c1,) * nargs, block))
    return out


def _softmax(dtype):
    c2 = _arr(dtype, 2)
    block = (_common.ROW_THREADS,)
    out = []
    for layout in "CA":
        a2 = _arr(dtype, 2, layout)
        for log in (True, False):
            out.append(Launch("softmax_forward_kernel", f"log={log}, {layout}", dtype,
                              softmax._forward_kernel(dtype, log), (a2, c2), block))
        out.append(Launch("log_softmax_backward_kernel", layout, dtype, softmax._backward_kernel(dtype),
                          (a2, a2, c2), block))
    return out


def _losses(dtype):
    f64, i64, b = types.float64, types.int64, types.boolean
    c1, c2 = _arr(dtype, 1), _arr(dtype, 2)
    out = []
    # "none" keeps each row's loss in the logits' dtype; a reduction sums float64 rows
    row_loss_dtypes = sorted({np.dtype(np.float64), dtype}, key=str)
    for layout in "CA":
        a1, a2 = _arr(dtype, 1, layout), _arr(dtype, 2, layout)
        labels = _arr(np.int64, 1, layout)
        for write_grad in (True, False):
            for loss_dtype in row_loss_dtypes:
                out.append(Launch(
                    "cross_entropy_kernel",
                    f"write_grad={write_grad}, row_loss={loss_dtype.name}, {layout}", dtype,
                    losses._cross_entropy_kernel(dtype, write_grad),
                    (a2, labels, a1, b, i64, f64, f64, f64, _arr(loss_dtype, 1), c2),
                    (_common.ROW_THREADS,),
                ))
    partial, squared, backward = losses._mse_kernels(dtype)
    block = (_common.ELEMENTWISE_THREADS,)
    # float64 on purpose: per-block partial sums of squares, summed wide
    out.append(Launch("mse_partial_kernel", "", dtype, partial, (c1, c1, _arr(np.float64, 1)), block, wide=True))
    out.append(Launch("squared_error_kernel", "", dtype, squared, (c1, c1, c1), block))
    out.append(Launch("mse_backward_kernel", "", dtype, backward, (c1, c1, f64, c1), block))
    return out


def _optimizers(dtype):
    f64, b = types.float64, types.boolean
    c1 = _arr(dtype, 1)
    block = (_common.ELEMENTWISE_THREADS,)
    sgd, adam = optimizers._kernels(dtype)
    return [
        Launch("sgd_step_kernel", "", dtype, sgd, (c1, c1, c1, f64, f64, b, f64), block),
        Launch("adam_step_kernel", "", dtype, adam, (c1, c1, c1, c1) + (f64,) * 6 + (b, f64), block),
    ]


def _normalization(dtype):
    f64, i64, b = types.float64, types.int64, types.boolean
    c1, c2 = _arr(dtype, 1), _arr(dtype, 2)
    part = _arr(np.float64, 2)
    row_block = (_common.ROW_THREADS,)
    partial, total = normalization._params_kernels(dtype)
    out = []
    for layout in "CA":
        a2 = _arr(dtype, 2, layout)
        out.append(Launch("layer_norm_forward_kernel", layout, dtype, normalization._forward_kernel(dtype),
                          (a2, c1, c1, b, f64, c2, c1, c1), row_block))
        out.append(Launch("layer_norm_backward_kernel", layout, dtype, normalization._backward_kernel(dtype),
                          (a2, c1, c1, c1, a2, c2), row_block))
        # float64 on purpose: column sums over every row, as matmul's column_sum_kernel
        out.append(Launch("layer_norm_params_partial_kernel", layout, dtype, partial,
                          (a2, c1, c1, a2, b, i64, part, part),
                          (normalization.PARAMS_X, normalization.PARAMS_Y), wide=True))
    out.append(Launch("column_total_kernel", "", dtype, total, (part, c1), (normalization.TOTAL_THREADS,),
                      wide=True))
    return out


def _attention(dtype):
    f64, b = types.float64, types.boolean
    c3, c4 = _arr(dtype, 3), _arr(dtype, 4)
    out = []
    for layout in "CA":
        # "A": q, k, v and dout strided (heads interleaved with positions, as a fused
        # qkv projection leaves them); out, lse and delta are the backend's own, "C"
        a4 = _arr(dtype, 4, layout)
        out.append(Launch("attention_delta_kernel", layout, dtype, attention._delta_kernel(dtype),
                          (c4, a4, c3), (attention.DELTA_WARPS * _common.WARP,)))
        for head in attention.HEADS:
            fwd = attention.FORWARD_TILES[(dtype, head)]
            out.append(Launch("attention_forward_kernel", f"head={head}, {layout}", dtype,
                              attention._forward_kernel(dtype, head),
                              (a4, a4, a4, f64, b, c4, c3), (fwd.threads,)))
            bwd = attention.BACKWARD_TILES[(dtype, head)]
            dkdv, dq = attention._backward_kernels(dtype, head)
            out.append(Launch("attention_backward_dkdv_kernel", f"head={head}, {layout}", dtype, dkdv,
                              (a4, a4, a4, a4, c3, c3, f64, b, c4, c4), (bwd.threads,)))
            out.append(Launch("attention_backward_dq_kernel", f"head={head}, {layout}", dtype, dq,
                              (a4, a4, a4, a4, c3, c3, f64, b, c4), (bwd.threads,)))
    return out


def _embedding(dtype):
    ids = _arr(np.int64, 1)
    c2 = _arr(dtype, 2)
    block = (_common.ELEMENTWISE_THREADS,)
    forward, backward = embedding._kernels(dtype)
    out = [Launch("embedding_forward_kernel", layout, dtype, forward, (ids, _arr(dtype, 2, layout), c2), block)
           for layout in "CA"]
    out.append(Launch("embedding_backward_kernel", "", dtype, backward, (ids, ids, c2, c2), block))
    return out
