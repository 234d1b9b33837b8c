"""CUDA log-softmax and softmax over the last axis: one block per row.

Kernels:
    softmax_forward_kernel       one read pass keeping an online max and a sum of
                                 exp(x - max) rescaled whenever the max grows (Milakov &
                                 Gimelshein 2018, "Online normalizer calculation for
                                 softmax"), reduced over the block by warp shuffles then
                                 shared memory (``_common.block_max_sum``); one write
                                 pass.  ``log`` picks log-softmax or softmax per variant.
    log_softmax_backward_kernel  dx = dy - exp(y) * sum(dy), one block per row.

Stability: exp only ever sees x - max <= 0.  A ``-inf`` logit adds exp(-inf) = 0; a row
of all ``-inf`` has no finite max and gives NaN, as PyTorch does.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import cuda

from ._common import (
    MAX_WARPS,
    NEG_INF,
    any_device,
    block_max_sum,
    block_sum,
    finish,
    log_of_sum,
    numba_type,
    row_threads,
    to_device,
)


@lru_cache(maxsize=None)
def row_max_sum(dtype):
    """Device function: the (max, sum of exp(x - max)) of row ``row`` of ``x``, in every
    thread of the block (shared with the cross-entropy kernel)."""
    T = numba_type(dtype)

    @cuda.jit(device=True, inline=True)
    def max_sum(x, row, scratch_m, scratch_s):
        m = T(NEG_INF)
        s = T(0)
        for c in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
            v = x[row, c]
            new_m = max(m, v)
            if new_m != NEG_INF:  # else v and m are -inf and add nothing (avoid nan)
                s = s * math.exp(m - new_m) + math.exp(v - new_m)
                m = new_m
        return block_max_sum(m, s, scratch_m, scratch_s, T(NEG_INF), T(0))

    return max_sum


@lru_cache(maxsize=None)
def _forward_kernel(dtype, log):
    T = numba_type(dtype)
    max_sum = row_max_sum(dtype)

    @cuda.jit
    def softmax_forward_kernel(x, out):
        # x (N, C) -> out (N, C): log_softmax(x) if log else softmax(x); block = one row
        scratch_m = cuda.shared.array(MAX_WARPS, T)
        scratch_s = cuda.shared.array(MAX_WARPS, T)
        row = cuda.blockIdx.x
        m, s = max_sum(x, row, scratch_m, scratch_s)
        if log:
            log_s = log_of_sum(s, T(math.nan))
            for c in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
                out[row, c] = (x[row, c] - m) - log_s
        else:
            # s >= 1 for any row with a finite max; s == 0 (all -inf) gives nan below
            inv_s = T(1) / s if s > 0 else T(math.nan)
            for c in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
                out[row, c] = math.exp(x[row, c] - m) * inv_s

    return softmax_forward_kernel


@lru_cache(maxsize=None)
def _backward_kernel(dtype):
    T = numba_type(dtype)

    @cuda.jit
    def log_softmax_backward_kernel(y, dy, dx):
        # y = log_softmax(x), dy (N, C) -> dx (N, C); block = one row
        scratch = cuda.shared.array(MAX_WARPS, T)
        row = cuda.blockIdx.x
        partial = T(0)
        for c in range(cuda.threadIdx.x, dy.shape[1], cuda.blockDim.x):
            partial += dy[row, c]
        total = block_sum(partial, scratch, T(0))
        for c in range(cuda.threadIdx.x, dy.shape[1], cuda.blockDim.x):
            dx[row, c] = dy[row, c] - math.exp(y[row, c]) * total

    return log_softmax_backward_kernel


def _forward(x, log):
    on_device = any_device(x)
    d_x = to_device(x)
    n, c = d_x.shape
    out = cuda.device_array((n, c), dtype=np.dtype(d_x.dtype))
    _forward_kernel(np.dtype(d_x.dtype), log)[n, row_threads(c)](d_x, out)
    return finish(out, on_device)


def log_softmax_forward(x):
    # x (N, C) -> (N, C)
    return _forward(x, True)


def softmax_forward(x):
    # x (N, C) -> (N, C)
    return _forward(x, False)


def log_softmax_backward(y, dy):
    # y, dy (N, C) -> dx (N, C)
    on_device = any_device(y, dy)
    d_y, d_dy = to_device(y), to_device(dy)
    n, c = d_y.shape
    dx = cuda.device_array((n, c), dtype=np.dtype(d_y.dtype))
    _backward_kernel(np.dtype(d_y.dtype))[n, row_threads(c)](d_y, d_dy, dx)
    return finish(dx, on_device)
