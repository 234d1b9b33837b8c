"""Numba CPU log-softmax and softmax over the last axis.

Row statistics (``row_stats``): the max and the log of the sum of exp(x - max), taken in
one read of the row by the online softmax of Milakov & Gimelshein (2018, "Online
normalizer calculation for softmax"): blocks of _BLOCK elements each update a running
max m and a float64 sum s, rescaled by exp(m_old - m_new) when the max grows.  Inside a
block both loops vectorise: the max through ``_math.vector_max`` (a max reduction
written in LLVM IR: LLVM does not vectorise one without the no-NaN flag, which we never
use; ``vmaxps zmm``), the sum with ``fast_exp`` (``_math``; ``inspect_asm``:
``vfmadd...ps`` on ymm, ``vcvtps2pd`` into the float64 sum).  Rows are split over
threads in chunks of about _CHUNK_ELEMENTS elements; each task owns its output rows.

    log_softmax: out = (x - m) - log s             (no exp of an unshifted logit)
    softmax:     out = exp(x - m) / s, exp stored on the way and scaled afterwards
    backward:    dx = dy - exp(y) * sum(dy)

A row of all -inf has m = -inf and s = 0: (x - m) is NaN, so is the row, as in PyTorch.
"""

import numpy as np
from numba import prange

from ._jit import helper, kernel, precise, sized
from ._math import fast_exp, vector_max

_BLOCK = 2048          # elements per online block (8 KiB of float32: stays in L1)
_CHUNK_ELEMENTS = 16384  # elements per parallel task
_SUM_BLOCK = 1024      # terms summed in float32 before joining the float64 sum
_SHORT = 32            # rows shorter than this take the flat-chunk path
_SHORT_ROWS = 512      # rows per task on that path


@helper
def block_max(xs):
    # xs (n,) contiguous -> max(xs): vectorised over whole 64-byte vectors, then the tail
    m = vector_max(xs)
    vl = 64 // xs.itemsize
    for c in range(xs.shape[0] // vl * vl, xs.shape[0]):
        m = max(m, xs[c])
    return m


@helper
def sum_exp_shifted(xs, m):
    # sum(exp(xs - m)) in float64; xs (n,), m <= max(xs) so every exp argument is <= 0.
    # Sums of _SUM_BLOCK terms run in the input dtype (a float64 accumulator would halve
    # the vector width of the loop: ymm instead of zmm), each added into the float64 total.
    s = 0.0
    n = xs.shape[0]
    for b0 in range(0, n, _SUM_BLOCK):
        block = xs[b0 : min(b0 + _SUM_BLOCK, n)]
        partial = xs.dtype.type(0)
        for c in range(block.shape[0]):
            partial += fast_exp(block[c] - m)
        s += partial
    return s


@helper
def row_stats(row):
    # row (C,) -> (m, log_s): m = max(row), log_s = log(sum(exp(row - m))) in float64.
    # Online over blocks (Milakov & Gimelshein 2018): one pass over the row.
    n = row.shape[0]
    m = -np.inf
    s = 0.0
    for b0 in range(0, n, _BLOCK):
        block = row[b0 : min(b0 + _BLOCK, n)]
        block_m = block_max(block)
        if block_m != block_m:
            return row.dtype.type(np.nan), np.nan  # a NaN logit makes the row NaN
        if block_m > m:
            if s > 0:
                s *= np.exp(np.float64(m) - np.float64(block_m))
            m = block_m
        if m == -np.inf:
            continue  # only -inf so far: nothing to add (and -inf - -inf would be NaN)
        s += sum_exp_shifted(block, row.dtype.type(m))
    return row.dtype.type(m), np.log(s)


@precise
def log_softmax_row(row, m, log_s, out_row):
    # out_row = (row - m) - log_s in this order (no reassoc: m + log_s would round)
    for j in range(row.shape[0]):
        out_row[j] = (row[j] - m) - log_s


@helper
def _rows(n, c):
    # rows per parallel task
    return max(1, _CHUNK_ELEMENTS // c)


@helper
def short_rows_stats(x, r0, r1, d, e, m, sums, log_s, preds=None):
    # Rows r0:r1 of x (N, C) with C short (< _SHORT): a row is shorter than one vector,
    # so per-row loops would run scalar.  Instead the exps run as one flat vectorised
    # loop over the chunk: d = x - m (per row), e = exp(d) (flat), s = row sums of e,
    # log_s = log(s).  d, e (>= (r1-r0)*C,) and m, sums, log_s (>= r1-r0,) are outputs;
    # so is preds[r0:r1] when given (int64: each row's argmax, a NaN winning as in
    # np.argmax; the fused training step's predictions), found in the max's loop, where
    # its chain overlaps the max's (a pass of its own cost 0.05-0.1 us more at 32 x 10).
    # Omitted, its branches are pruned when Numba compiles the caller.
    c = x.shape[1]
    rows = r1 - r0
    for r in range(rows):
        row = x[r0 + r]
        mr = row[0]
        if preds is not None:
            best_value = row[0]
            best = 0
        for j in range(1, c):
            v = row[j]
            mr = max(mr, v)
            if preds is not None:
                if v > best_value or (v != v and best_value == best_value):  # first NaN wins
                    best_value = v
                    best = j
        m[r] = mr
        if preds is not None:
            preds[r0 + r] = best
        dr = d[r * c : (r + 1) * c]
        for j in range(c):
            dr[j] = row[j] - mr
    flat_d = d[: rows * c]
    flat_e = e[: rows * c]
    for k in range(rows * c):
        flat_e[k] = fast_exp(flat_d[k])
    for r in range(rows):
        er = e[r * c : (r + 1) * c]
        s = 0.0
        for j in range(c):
            s += er[j]
        sums[r] = s
        log_s[r] = np.log(s)


@kernel
def _log_softmax_forward(x, out):
    # x (N, C) -> out (N, C).  Short rows (C < _SHORT): chunks of _SHORT_ROWS rows with
    # flat vectorised exps (short_rows_stats); long rows: one row at a time, online stats.
    n, c = x.shape
    if c < _SHORT:
        for task in prange((n + _SHORT_ROWS - 1) // _SHORT_ROWS):
            r0 = task * _SHORT_ROWS
            r1 = min(r0 + _SHORT_ROWS, n)
            d = np.empty(_SHORT_ROWS * c, dtype=x.dtype)
            e = np.empty(_SHORT_ROWS * c, dtype=x.dtype)
            m = np.empty(_SHORT_ROWS, dtype=x.dtype)
            sums = np.empty(_SHORT_ROWS, dtype=np.float64)
            log_s = np.empty(_SHORT_ROWS, dtype=np.float64)
            short_rows_stats(x, r0, r1, d, e, m, sums, log_s)
            for r in range(r1 - r0):
                # (x - m) - log_s: d holds x - m, so no reassociation merges m and log_s
                dr = d[r * c : (r + 1) * c]
                out_row = out[r0 + r]
                ls = x.dtype.type(log_s[r])
                for j in range(c):
                    out_row[j] = dr[j] - ls
    else:
        rows = _rows(n, c)
        for task in prange((n + rows - 1) // rows):
            for i in range(task * rows, min((task + 1) * rows, n)):
                row = x[i]
                m, log_s = row_stats(row)
                log_softmax_row(row, m, row.dtype.type(log_s), out[i])


@kernel
def _softmax_forward(x, out):
    # x (N, C) -> out (N, C): exp(x - m) stored while summing, then scaled by 1 / s
    n, c = x.shape
    rows = _rows(n, c)
    for task in prange((n + rows - 1) // rows):
        for i in range(task * rows, min((task + 1) * rows, n)):
            row = x[i]
            out_row = out[i]
            m = block_max(row)
            s = 0.0
            for j in range(c):
                e = fast_exp(row[j] - m)
                out_row[j] = e
                s += e
            inv = row.dtype.type(1.0 / s)
            for j in range(c):
                out_row[j] *= inv


@kernel
def _log_softmax_backward(y, dy, out):
    # y, dy (N, C) -> out (N, C): dx = dy - exp(y) * sum(dy)
    n, c = y.shape
    rows = _rows(n, c)
    for task in prange((n + rows - 1) // rows):
        for i in range(task * rows, min((task + 1) * rows, n)):
            y_row = y[i]
            dy_row = dy[i]
            total = 0.0
            for j in range(c):
                total += dy_row[j]
            t = y.dtype.type(total)
            out_row = out[i]
            for j in range(c):
                out_row[j] = dy_row[j] - fast_exp(y_row[j]) * t


def log_softmax_forward(x):
    out = np.empty(x.shape, dtype=x.dtype)
    sized(_log_softmax_forward, x.size)(np.ascontiguousarray(x), out)
    return out


def softmax_forward(x):
    out = np.empty(x.shape, dtype=x.dtype)
    sized(_softmax_forward, x.size)(np.ascontiguousarray(x), out)
    return out


def log_softmax_backward(y, dy):
    out = np.empty(y.shape, dtype=y.dtype)
    sized(_log_softmax_backward, y.size)(np.ascontiguousarray(y), np.ascontiguousarray(dy), out)
    return out
