"""Numba CPU log-softmax and softmax over the last axis, one row per parallel task."""

import numpy as np
from numba import prange

from ._jit import helper, kernel


@helper
def row_max_and_log_sum_exp(row):
    # Shift by the row max so exp only sees arguments <= 0 (never exp of an unshifted
    # logit); the sum is accumulated in float64.  Returns (max, log(sum(exp(row - max)))).
    # A row of all -inf has max -inf; row - max is then nan, and so is the result.
    m = row[0]
    for c in range(1, row.shape[0]):
        m = max(m, row[c])
    s = 0.0
    for c in range(row.shape[0]):
        s += np.exp(row[c] - m)
    return m, np.log(s)


@kernel
def _log_softmax_forward(x, out):
    # x (N, C) -> out (N, C)
    for i in prange(x.shape[0]):
        row = x[i]
        m, log_sum = row_max_and_log_sum_exp(row)
        out_row = out[i]
        for c in range(row.shape[0]):
            out_row[c] = (row[c] - m) - log_sum


@kernel
def _softmax_forward(x, out):
    # x (N, C) -> out (N, C)
    for i in prange(x.shape[0]):
        row = x[i]
        m, log_sum = row_max_and_log_sum_exp(row)
        out_row = out[i]
        for c in range(row.shape[0]):
            out_row[c] = np.exp((row[c] - m) - log_sum)


@kernel
def _log_softmax_backward(y, dy, out):
    # y, dy (N, C) -> out (N, C): dx = dy - exp(y) * sum(dy)
    for i in prange(y.shape[0]):
        y_row = y[i]
        dy_row = dy[i]
        total = 0.0
        for c in range(dy_row.shape[0]):
            total += dy_row[c]
        out_row = out[i]
        for c in range(dy_row.shape[0]):
            out_row[c] = dy_row[c] - np.exp(y_row[c]) * total


def log_softmax_forward(x):
    out = np.empty(x.shape, dtype=x.dtype)
    _log_softmax_forward(np.ascontiguousarray(x), out)
    return out


def softmax_forward(x):
    out = np.empty(x.shape, dtype=x.dtype)
    _softmax_forward(np.ascontiguousarray(x), out)
    return out


def log_softmax_backward(y, dy):
    out = np.empty(y.shape, dtype=y.dtype)
    _log_softmax_backward(np.ascontiguousarray(y), np.ascontiguousarray(dy), out)
    return out
