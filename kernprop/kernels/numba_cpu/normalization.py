"""Numba CPU layer normalization over the last axis, forward and backward.

Rows go through in chunks of _CHUNK_ROWS, a task each.  The forward reads a row twice
(the mean, then the centred sum of squares: two passes, no cancellation of a large mean)
and writes it once.  The backward computes dx row by row and, in the same pass, the
chunk's column sums of ``dy * xhat`` and ``dy`` (dweight, dbias) into a partial row of
its own; the partials are then added in chunk order.  Chunks are fixed by the row count,
never by the thread count, so the bits do not depend on the threads.  Every row loop is
over a contiguous row: LLVM vectorises the sums (fastmath reassoc, ``_jit``).

    y = (x - mean) rstd w + b,          rstd = 1 / sqrt(var + eps), var biased
    dx = rstd (g - mean(g) - xhat mean(g xhat)),   g = dy w,  xhat = (x - mean) rstd
"""

import numpy as np
from numba import prange

from ._jit import kernel

_CHUNK_ROWS = 64


@kernel
def _layer_norm_forward(x, weight, bias, has_bias, eps, y, mean, rstd):
    # x (N, C) contiguous, weight/bias (C,) -> y (N, C), mean (N,), rstd (N,)
    rows, channels = x.shape
    inverse_channels = 1.0 / channels
    for chunk in prange((rows + _CHUNK_ROWS - 1) // _CHUNK_ROWS):
        for r in range(chunk * _CHUNK_ROWS, min(rows, (chunk + 1) * _CHUNK_ROWS)):
            line, out = x[r], y[r]
            total = 0.0
            for c in range(channels):
                total += line[c]
            m = x.dtype.type(total * inverse_channels)
            squares = 0.0
            for c in range(channels):
                d = line[c] - m
                squares += d * d
            s = x.dtype.type(1.0 / np.sqrt(squares * inverse_channels + eps))
            if has_bias:
                for c in range(channels):
                    out[c] = (line[c] - m) * s * weight[c] + bias[c]
            else:
                for c in range(channels):
                    out[c] = (line[c] - m) * s * weight[c]
            mean[r] = m
            rstd[r] = s


@kernel
def _layer_norm_backward(x, weight, mean, rstd, dy, dx, partial_dweight, partial_dbias):
    # x, dy, dx (N, C); weight (C,); mean, rstd (N,); partials (chunks, C): each chunk's
    # column sums of dy * xhat and dy
    rows, channels = x.shape
    inverse_channels = 1.0 / channels
    zero = x.dtype.type(0)
    for chunk in prange((rows + _CHUNK_ROWS - 1) // _CHUNK_ROWS):
        pw, pb = partial_dweight[chunk], partial_dbias[chunk]
        for c in range(channels):
            pw[c] = zero
            pb[c] = zero
        for r in range(chunk * _CHUNK_ROWS, min(rows, (chunk + 1) * _CHUNK_ROWS)):
            line, grad, out = x[r], dy[r], dx[r]
            m, s = mean[r], rstd[r]
            sum_g = 0.0
            sum_g_xhat = 0.0
            for c in range(channels):
                xhat = (line[c] - m) * s
                g = grad[c] * weight[c]
                sum_g += g
                sum_g_xhat += g * xhat
                pw[c] += grad[c] * xhat
                pb[c] += grad[c]
            mean_g = x.dtype.type(sum_g * inverse_channels)
            mean_g_xhat = x.dtype.type(sum_g_xhat * inverse_channels)
            for c in range(channels):
                xhat = (line[c] - m) * s
                out[c] = s * (grad[c] * weight[c] - mean_g - xhat * mean_g_xhat)


@kernel
def _sum_partials(partials, out):
    # partials (chunks, C) -> out (C,): the chunks added in order, columns split over threads
    chunks, channels = partials.shape
    for block in prange((channels + 255) // 256):
        for c in range(block * 256, min(channels, block * 256 + 256)):
            total = partials.dtype.type(0)
            for k in range(chunks):
                total += partials[k, c]
            out[c] = total


def layer_norm_forward(x, weight, bias, eps):
    x = np.ascontiguousarray(x)
    rows = x.shape[0]
    y = np.empty_like(x)
    mean = np.empty(rows, x.dtype)
    rstd = np.empty(rows, x.dtype)
    has_bias = bias is not None
    _layer_norm_forward(x, np.ascontiguousarray(weight), np.ascontiguousarray(bias if has_bias else weight),
                        has_bias, float(eps), y, mean, rstd)
    return y, mean, rstd


def layer_norm_backward(x, weight, mean, rstd, dy, has_bias):
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    rows, channels = x.shape
    chunks = (rows + _CHUNK_ROWS - 1) // _CHUNK_ROWS
    dx = np.empty_like(x)
    partial_dweight = np.empty((chunks, channels), x.dtype)
    partial_dbias = np.empty((chunks, channels), x.dtype)
    _layer_norm_backward(x, np.ascontiguousarray(weight), np.ascontiguousarray(mean), np.ascontiguousarray(rstd),
                         dy, dx, partial_dweight, partial_dbias)
    dweight = np.empty(channels, x.dtype)
    _sum_partials(partial_dweight, dweight)
    dbias = None
    if has_bias:
        dbias = np.empty(channels, x.dtype)
        _sum_partials(partial_dbias, dbias)
    return dx, dweight, dbias
