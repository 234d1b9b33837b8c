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
def row_max_sum(dtype, four_per_trip=True):
    """Device function: the (max, sum of exp(x - max)) of row ``row`` of ``x``, in every
    thread of the block (shared with the cross-entropy kernel).  ``four_per_trip``: read
    four columns per trip of the loop (else one), see below."""
    T = numba_type(dtype)

    @cuda.jit(device=True, inline=True)
    def add_column(m, s, v):
        # one more column into the running (max, sum of exp(x - max))
        new_m = max(m, v)
        if new_m != NEG_INF:  # else v and m are -inf and add nothing (avoid nan)
            s = s * math.exp(m - new_m) + math.exp(v - new_m)
            m = new_m
        return m, s

    @cuda.jit(device=True, inline=True)
    def max_sum(x, row, scratch_m, scratch_s):
        m = T(NEG_INF)
        s = T(0)
        width = x.shape[1]
        step = cuda.blockDim.x
        c = cuda.threadIdx.x
        # Four columns per trip, all loaded before the first is used: four loads in
        # flight per thread instead of one keep enough bytes moving to approach the
        # memory bandwidth (one at a time gave 42% of it on an H200), and the running
        # sum is rescaled once per four columns, not once per column.
        if four_per_trip:  # a compile-time constant
            while c + 3 * step < width:
                v0 = x[row, c]
                v1 = x[row, c + step]
                v2 = x[row, c + 2 * step]
                v3 = x[row, c + 3 * step]
                new_m = max(max(m, v0), max(max(v1, v2), v3))
                if new_m != NEG_INF:  # else all are -inf and add nothing (avoid nan)
                    s = s * math.exp(m - new_m) + ((math.exp(v0 - new_m) + math.exp(v1 - new_m))
                                                   + (math.exp(v2 - new_m) + math.exp(v3 - new_m)))
                    m = new_m
                c += 4 * step
            while c < width:  # what is left, one at a time
                m, s = add_column(m, s, x[row, c])
                c += step
        else:
            for c in range(c, width, step):
                m, s = add_column(m, s, x[row, c])
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
        width = x.shape[1]
        step = cuda.blockDim.x
        c = cuda.threadIdx.x
        if log:
            log_s = log_of_sum(s, T(math.nan))
            # four loads in flight per thread, as in row_max_sum
            while c + 3 * step < width:
                v0 = x[row, c]
                v1 = x[row, c + step]
                v2 = x[row, c + 2 * step]
                v3 = x[row, c + 3 * step]
                out[row, c] = (v0 - m) - log_s
                out[row, c + step] = (v1 - m) - log_s
                out[row, c + 2 * step] = (v2 - m) - log_s
                out[row, c + 3 * step] = (v3 - m) - log_s
                c += 4 * step
            while c < width:
                out[row, c] = (x[row, c] - m) - log_s
                c += step
        else:
            # s >= 1 for any row with a finite max; s == 0 (all -inf) gives nan below
            inv_s = T(1) / s if s > 0 else T(math.nan)
            while c + 3 * step < width:
                v0 = x[row, c]
                v1 = x[row, c + step]
                v2 = x[row, c + 2 * step]
                v3 = x[row, c + 3 * step]
                out[row, c] = math.exp(v0 - m) * inv_s
                out[row, c + step] = math.exp(v1 - m) * inv_s
                out[row, c + 2 * step] = math.exp(v2 - m) * inv_s
                out[row, c + 3 * step] = math.exp(v3 - m) * inv_s
                c += 4 * step
            while c < width:
                out[row, c] = math.exp(x[row, c] - m) * inv_s
                c += step

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
