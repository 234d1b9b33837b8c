"""CUDA layer normalization over the last axis, as ``torch.nn.functional.layer_norm``.

Kernels:
    layer_norm_forward_kernel      one block per row: the mean by a block reduction
                                   (warp shuffles, then shared memory: ``_common.block_sum``),
                                   then the variance of the centred row by a second one
                                   (two passes: no cancellation of E[x^2] - E[x]^2, exact
                                   for a row of 1e4 +- 1 as far as the dtype holds it),
                                   then y = (x - mean) rstd weight + bias.  The row is read
                                   three times; after the first, from L1/L2.
    layer_norm_backward_kernel     one block per row: dx = rstd (g - mean(g) - xhat
                                   mean(g xhat)) with g = dy weight, both means from one
                                   read of the row.
    layer_norm_params_partial_kernel  dweight = sum over rows of dy xhat and dbias = sum of
                                   dy, per chunk of rows: a block takes 32 columns of one
                                   chunk, 8 row-strided float64 partial sums per column
                                   added in a fixed order, written to (chunks, C) partials.
    column_total_kernel            the chunk partials of each column summed in chunk
                                   order: deterministic (no atomics), the same bits on
                                   every run and device, float64 throughout.

Derivative of y = xhat weight + bias, xhat = (x - mean) rstd (the reference's formula,
``kernels/reference/normalization.py``): dxhat = g = dy weight, and
dx = rstd (g - mean(g) - xhat mean(g xhat)).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import cuda

from ._common import (
    MAX_WARPS,
    any_device,
    block_sum,
    cdiv,
    dummy,
    finish,
    numba_type,
    row_threads,
    to_device,
    to_device_flat,
)

# the parameter-gradient blocks: 32 columns x 8 row-strided partial sums
PARAMS_X, PARAMS_Y = 32, 8
# rows per chunk of the parameter gradients, before the cap on chunks below: enough
# blocks to fill a GPU at (8192, 768) (24 x 64 blocks), few partials to add afterwards
ROWS_PER_CHUNK = 128
MAX_CHUNKS = 1024
TOTAL_THREADS = 256  # column_total_kernel


@lru_cache(maxsize=None)
def _forward_kernel(dtype):
    T = numba_type(dtype)

    @cuda.jit
    def layer_norm_forward_kernel(x, weight, bias, has_bias, eps, y, mean, rstd):
        # x (N, C), weight (C,), bias (C,) -> y (N, C), mean (N,), rstd (N,); block = row
        scratch = cuda.shared.array(MAX_WARPS, T)
        row = cuda.blockIdx.x
        width = x.shape[1]
        partial = T(0)
        for c in range(cuda.threadIdx.x, width, cuda.blockDim.x):
            partial += x[row, c]
        mu = block_sum(partial, scratch, T(0)) / T(width)
        partial = T(0)
        for c in range(cuda.threadIdx.x, width, cuda.blockDim.x):
            d = x[row, c] - mu
            partial += d * d
        var = block_sum(partial, scratch, T(0)) / T(width)  # biased, as PyTorch
        r = T(1) / math.sqrt(var + T(eps))
        for c in range(cuda.threadIdx.x, width, cuda.blockDim.x):
            value = (x[row, c] - mu) * r * weight[c]
            if has_bias:
                value += bias[c]
            y[row, c] = value
        if cuda.threadIdx.x == 0:
            mean[row] = mu
            rstd[row] = r

    return layer_norm_forward_kernel


@lru_cache(maxsize=None)
def _backward_kernel(dtype):
    T = numba_type(dtype)

    @cuda.jit
    def layer_norm_backward_kernel(x, weight, mean, rstd, dy, dx):
        # x (N, C), weight (C,), mean (N,), rstd (N,), dy (N, C) -> dx (N, C); block = row
        scratch = cuda.shared.array(MAX_WARPS, T)
        row = cuda.blockIdx.x
        width = x.shape[1]
        mu = mean[row]
        r = rstd[row]
        sum_g = T(0)
        sum_gx = T(0)
        for c in range(cuda.threadIdx.x, width, cuda.blockDim.x):
            g = dy[row, c] * weight[c]
            sum_g += g
            sum_gx += g * ((x[row, c] - mu) * r)
        mean_g = block_sum(sum_g, scratch, T(0)) / T(width)
        mean_gx = block_sum(sum_gx, scratch, T(0)) / T(width)
        for c in range(cuda.threadIdx.x, width, cuda.blockDim.x):
            xhat = (x[row, c] - mu) * r
            dx[row, c] = r * (dy[row, c] * weight[c] - mean_g - xhat * mean_gx)

    return layer_norm_backward_kernel


@lru_cache(maxsize=None)
def _params_kernels(dtype):
    T = numba_type(dtype)

    @cuda.jit
    def layer_norm_params_partial_kernel(x, mean, rstd, dy, has_bias, rows_per_chunk, dweight_part, dbias_part):
        # x, dy (N, C), mean, rstd (N,) -> dweight_part, dbias_part (chunks, C) float64
        # Block (bx, chunk): columns 32 bx + tx, rows of the chunk; thread (tx, ty) sums
        # rows ty, ty + 8, ... (a warp reads 32 consecutive columns of one row: coalesced),
        # then thread ty == 0 adds the 8 partials in a fixed order.
        part_w = cuda.shared.array((PARAMS_Y, PARAMS_X), np.float64)
        part_b = cuda.shared.array((PARAMS_Y, PARAMS_X), np.float64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        c = cuda.blockIdx.x * PARAMS_X + tx
        chunk = cuda.blockIdx.y
        first = chunk * rows_per_chunk
        last = min(first + rows_per_chunk, x.shape[0])
        total_w = 0.0
        total_b = 0.0
        if c < x.shape[1]:
            for r in range(first + ty, last, PARAMS_Y):
                g = dy[r, c]
                total_w += g * ((x[r, c] - mean[r]) * rstd[r])  # dy xhat in the dtype, as the reference
                total_b += g
        part_w[ty, tx] = total_w
        part_b[ty, tx] = total_b
        cuda.syncthreads()
        if ty == 0 and c < x.shape[1]:
            for k in range(1, PARAMS_Y):
                total_w += part_w[k, tx]
                total_b += part_b[k, tx]
            dweight_part[chunk, c] = total_w
            if has_bias:
                dbias_part[chunk, c] = total_b

    @cuda.jit
    def column_total_kernel(part, out):
        # part (chunks, C) float64 -> out (C,) in the dtype: each column's chunks in order
        for c in range(cuda.grid(1), part.shape[1], cuda.gridsize(1)):
            total = 0.0
            for k in range(part.shape[0]):
                total += part[k, c]
            out[c] = T(total)

    return layer_norm_params_partial_kernel, column_total_kernel


def param_chunks(rows: int, rows_per_chunk: int | None = None) -> tuple[int, int]:
    """(chunks, rows per chunk) of the parameter gradients of ``rows`` rows: chunks of
    ``rows_per_chunk`` rows (default ROWS_PER_CHUNK, widened to keep at most MAX_CHUNKS)."""
    if rows_per_chunk is None:
        chunks = min(cdiv(rows, ROWS_PER_CHUNK), MAX_CHUNKS)
        rows_per_chunk = cdiv(rows, chunks)
    return cdiv(rows, rows_per_chunk), rows_per_chunk


def layer_norm_param_grads(x, mean, rstd, dy, has_bias, rows_per_chunk=None):
    """(dweight (C,), dbias (C,) or None) of device arrays x, dy (N, C), mean, rstd (N,):
    column sums of dy xhat and dy over chunks of rows, then over the chunks, in a fixed
    order.  ``rows_per_chunk`` as in ``param_chunks``."""
    n, c = x.shape
    dtype = np.dtype(x.dtype)
    partial, total = _params_kernels(dtype)
    chunks, per_chunk = param_chunks(n, rows_per_chunk)
    dw_part = cuda.device_array((chunks, c), dtype=np.float64)
    db_part = cuda.device_array((chunks, c), dtype=np.float64) if has_bias else dummy(np.float64, 2)
    partial[(cdiv(c, PARAMS_X), chunks), (PARAMS_X, PARAMS_Y)](
        x, mean, rstd, dy, bool(has_bias), per_chunk, dw_part, db_part)
    blocks = min(cdiv(c, TOTAL_THREADS), 1024)
    dweight = cuda.device_array(c, dtype=dtype)
    total[blocks, TOTAL_THREADS](dw_part, dweight)
    dbias = None
    if has_bias:
        dbias = cuda.device_array(c, dtype=dtype)
        total[blocks, TOTAL_THREADS](db_part, dbias)
    return dweight, dbias


# --- the contract ---------------------------------------------------------------------


def layer_norm_forward(x, weight, bias, eps):
    # x (N, C), weight (C,), bias (C,) or None -> y (N, C), mean (N,), rstd (N,)
    on_device = any_device(x, weight, bias)
    d_x = to_device(x)
    dtype = np.dtype(d_x.dtype)
    n, c = d_x.shape
    d_w = to_device_flat(weight)  # small vectors: always contiguous, one kernel signature
    d_b = dummy(dtype) if bias is None else to_device_flat(bias)
    y = cuda.device_array((n, c), dtype=dtype)
    mean = cuda.device_array(n, dtype=dtype)
    rstd = cuda.device_array(n, dtype=dtype)
    _forward_kernel(dtype)[n, row_threads(c)](d_x, d_w, d_b, bias is not None, float(eps), y, mean, rstd)
    return finish(y, on_device), finish(mean, on_device), finish(rstd, on_device)


def layer_norm_backward(x, weight, mean, rstd, dy, has_bias):
    # x (N, C), weight (C,), mean (N,), rstd (N,), dy (N, C) -> dx (N, C), dweight (C,), dbias (C,) or None
    on_device = any_device(x, weight, mean, rstd, dy)
    d_x, d_dy = to_device(x), to_device(dy)
    d_w, d_mean, d_rstd = to_device_flat(weight), to_device_flat(mean), to_device_flat(rstd)
    dtype = np.dtype(d_x.dtype)
    n, c = d_x.shape
    dx = cuda.device_array((n, c), dtype=dtype)
    _backward_kernel(dtype)[n, row_threads(c)](d_x, d_w, d_mean, d_rstd, d_dy, dx)
    dweight, dbias = layer_norm_param_grads(d_x, d_mean, d_rstd, d_dy, has_bias)
    return finish(dx, on_device), finish(dweight, on_device), finish(dbias, on_device)
