"""Numba CPU GEMM and linear layer.

Variants:
  1. ``_gemm``: C tiles of ``_ROWS x _COLS`` split over threads; inside a tile an i-k-j
     loop whose innermost loop runs over a zero-based contiguous row of B and C, which
     LLVM vectorises.  Epilogue: bias, activation, or accumulation into C.
"""

import numpy as np
from numba import prange

from ._jit import kernel
from .activations import ACTIVATION_CODES, activate

_ROWS = 32
_COLS = 256
# The k loop runs in slabs so the slab of B (_K_SLAB x _COLS) stays in L2 across rows.
_K_SLAB = 256


@kernel
def _gemm(a, b, c, bias, has_bias, activation, accumulate):
    # a (M, K) @ b (K, N) -> c (M, N), all C-contiguous; bias (N,) when has_bias.
    # c = act(a @ b + bias), or c += a @ b when accumulate.  Each task owns one C tile,
    # so no two threads write the same element.
    m, k = a.shape
    n = b.shape[1]
    col_tiles = (n + _COLS - 1) // _COLS
    tiles = ((m + _ROWS - 1) // _ROWS) * col_tiles
    for tile in prange(tiles):
        i0 = (tile // col_tiles) * _ROWS
        j0 = (tile % col_tiles) * _COLS
        i1 = min(i0 + _ROWS, m)
        width = min(j0 + _COLS, n) - j0
        if not accumulate:
            for i in range(i0, i1):
                c[i, j0 : j0 + width] = 0
        for k0 in range(0, k, _K_SLAB):
            k1 = min(k0 + _K_SLAB, k)
            for i in range(i0, i1):
                c_row = c[i, j0 : j0 + width]
                for kk in range(k0, k1):
                    a_ik = a[i, kk]
                    b_row = b[kk, j0 : j0 + width]
                    for j in range(width):
                        c_row[j] += a_ik * b_row[j]
        if has_bias or activation != 0:
            for i in range(i0, i1):
                c_row = c[i, j0 : j0 + width]
                bias_part = bias[j0 : j0 + width]
                for j in range(width):
                    value = c_row[j] + bias_part[j] if has_bias else c_row[j]
                    c_row[j] = activate(value, activation)


@kernel
def _column_sums(x, out, accumulate):
    # x (M, N) -> out (N,): sums over rows, accumulated in float64, split over columns.
    m, n = x.shape
    for tile in prange((n + _COLS - 1) // _COLS):
        j0 = tile * _COLS
        width = min(j0 + _COLS, n) - j0
        sums = np.zeros(width, dtype=np.float64)
        for i in range(m):
            row = x[i, j0 : j0 + width]
            for j in range(width):
                sums[j] += row[j]
        out_part = out[j0 : j0 + width]
        for j in range(width):
            out_part[j] = sums[j] + out_part[j] if accumulate else sums[j]


_NO_BIAS = {np.dtype(np.float32): np.zeros(1, np.float32), np.dtype(np.float64): np.zeros(1, np.float64)}


def gemm(a, b, out=None, bias=None, activation=None, accumulate=False):
    """``out = activation(a @ b + bias)`` (or ``out += a @ b``) with contiguous copies
    of strided operands; returns ``out``."""
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    has_bias = bias is not None
    bias = np.ascontiguousarray(bias) if has_bias else _NO_BIAS[a.dtype]
    _gemm(a, b, out, bias, has_bias, ACTIVATION_CODES[activation], accumulate)
    return out


def column_sums(x, out=None, accumulate=False):
    """Sum of the rows of ``x`` (M, N) -> (N,)."""
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty(x.shape[1], dtype=x.dtype)
    _column_sums(x, out, accumulate)
    return out


def matmul(a, b):
    return gemm(a, b)


def linear_forward(x, w, b, activation):
    return gemm(x, w, bias=b, activation=activation)


def linear_backward(x, w, dy, has_bias):
    # y = x @ w + b: dx = dy @ w.T, dw = x.T @ dy, db = column sums of dy
    dx = gemm(dy, w.T)
    dw = gemm(x.T, dy)
    db = column_sums(dy) if has_bias else None
    return dx, dw, db
