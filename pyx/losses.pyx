# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cross-entropy and MSE for the ``cython`` backend.

Cross-entropy, with PyTorch's semantics (kernprop/kernels/reference/losses.py has the
formulas): for a row with label y, label smoothing eps over C classes, class weights w
and W = sum_c w[c],

    loss_row = (1 - eps) w[y] (-logp[y]) + (eps / C) sum_c w[c] (-logp[c])
             = (1 - eps) w[y] (L - (x[y] - m)) + (eps / C) (W L - sum_c w[c] (x[c] - m))
    dloss_row / dx[c] = (1 - eps) w[y] (p[c] - [c == y]) + (eps / C) (W p[c] - w[c])

with m the row max, L = log(sum_c exp(x[c] - m)) and p[c] = exp(x[c] - m) / exp(L).
Loss and gradient come from one fused pass per row, in the manner of Liger-Kernel's
cross-entropy (Hsu et al., "Liger Kernel", 2024): pass 1 finds the max, pass 2 sums the
exps (in double) and the weighted shifted logits while parking exp(x - m) in the
gradient row, pass 3 turns it into the gradient.  float32 exps are vectorised
(``kp_expf`` in _common.pxi).  The gradient row may be the logits
row itself (the fused linear cross-entropy works in place): every logit is read before
its slot is overwritten.  Rows whose label is ``ignore_index`` have loss 0 and gradient
0, even when every row is ignored and "mean" divides by 0 (PyTorch's nll_loss backward
never touches them); they skip the softmax altogether.  Per-row losses go to a float64 array that
the loader sums, so the result does not depend on the thread count.  float32 rows
shorter than ``SHORT_ROW`` go in blocks of rows through ``kp_short_ce_f``
(_short_rows.pxi), vectorised across the rows of a block.
"""

include "_common.pxi"
include "_short_rows.pxi"

from cython.parallel cimport prange

import numpy as np


cdef double _ce_row(const floating* x, floating* g, Py_ssize_t c, int64_t y, bint valid,
                    const floating* w, double wsum, double eps,
                    double inv_denom) noexcept nogil:
    # x (c,) logits of one row, label y (valid: not ignored) -> its loss; when g != NULL,
    # g (c,) = its gradient * inv_denom (g may be x: x[j] is read before g[j] is written)
    cdef floating m
    cdef floating xy, p, py, ft, fs, fw, inv_s, one
    cdef double s = 0, sw = 0, log_s, wy, loss
    cdef bint smoothing = eps > 0
    cdef Py_ssize_t j
    if not valid:
        if g != NULL:
            for j in range(c):
                g[j] = 0
        return 0.0
    xy = x[y]
    wy = w[y]
    # pass 1: the row max, so every exp below has an argument <= 0
    m = _row_max(x, c)
    # pass 2: sum_j w[j] (x[j] - m) for the smoothing term (first: g may be x), then the
    # sum of the exps, in double, parking the exps in g
    if smoothing:
        sw = _dot_shift(w, x, m, c)
    s = _sum_exp(x, m, c, g)
    if floating is float:  # s >= 1 (its max term is exp(0)) or NaN
        log_s = kp_logf(<float>s)
    else:
        log_s = log(s)
    loss = (1 - eps) * wy * (log_s - (xy - m))
    # Skipped at eps == 0, where 0 * inf would turn a -inf logit's term into NaN.
    if smoothing:
        loss += (eps / c) * (wsum * log_s - sw)
    if g == NULL:
        return loss
    # pass 3, term by term as the formula (not folded into one a p - b w), so that a
    # row whose p[y] is exactly 1 (one class) gets an exactly zero gradient:
    # g = (1 - eps) w[y] (p - onehot(y)) + (eps / C) (W p - w), all / denominator
    ft = <floating>((1 - eps) * wy * inv_denom)
    fs = <floating>(eps / c * inv_denom)
    fw = <floating>wsum
    inv_s = <floating>(1.0 / s)
    py = _exp(xy - m) * inv_s
    one = 1
    if floating is float:
        kp_ce_grad_f(g, inv_s, ft, fs, fw, w if smoothing else <const float*>NULL, c)
    elif smoothing:
        for j in range(c):
            p = g[j] * inv_s
            g[j] = ft * p + fs * (fw * p - w[j])
    else:
        for j in range(c):
            g[j] = ft * (g[j] * inv_s)
    if smoothing:
        g[y] = ft * (py - one) + fs * (fw * py - w[y])
    else:
        g[y] = ft * (py - one)
    return loss


def ce_denominator(const int64_t[::1] labels, const floating[::1] weight,
                   int64_t ignore_index):
    """Sum of ``weight[label]`` over the rows not ignored (their count without weights):
    what the "mean" reduction divides by.  Serial: it is O(N)."""
    cdef double total = 0
    cdef Py_ssize_t i
    with nogil:
        for i in range(labels.shape[0]):
            if labels[i] != ignore_index:
                total += weight[labels[i]]
    return total


def ce_forward_rows(const floating[:, ::1] logits, const int64_t[::1] labels,
                    const floating[::1] weight, int64_t ignore_index, double eps,
                    double[::1] row_losses):
    # logits (N, C), labels (N,), weight (C,) -> row_losses (N,)
    # IN  logits: rows contiguous; labels in [0, C) or ignore_index; weight: class
    #     weights (ones when unweighted); eps: label smoothing
    # OUT row_losses: loss of each row in float64, 0 for ignored rows
    cdef Py_ssize_t i, n = logits.shape[0], c = logits.shape[1]
    cdef double wsum = _sum(&weight[0], c)
    cdef Py_ssize_t rows = kp_short_block_rows(c), nblocks = (n + rows - 1) // rows
    if floating is float:
        if c < SHORT_ROW:
            if n * c <= PARALLEL_MIN_WORK:  # no OpenMP region: even if(0) costs 0.6 us
                with nogil:
                    for i in range(nblocks):
                        kp_short_ce_f(&logits[i * rows, 0], &labels[i * rows],
                                      min(rows, n - i * rows), c, ignore_index, &weight[0],
                                      wsum, eps, 0.0, &row_losses[i * rows], <float*>NULL)
                return
            for i in prange(nblocks, nogil=True, schedule="static"):
                kp_short_ce_f(&logits[i * rows, 0], &labels[i * rows], min(rows, n - i * rows),
                              c, ignore_index, &weight[0], wsum, eps, 0.0,
                              &row_losses[i * rows], <float*>NULL)
            return
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n * c > PARALLEL_MIN_WORK):
        row_losses[i] = _ce_row(&logits[i, 0], <floating*>NULL, c, labels[i],
                                labels[i] != ignore_index, &weight[0], wsum, eps, 0.0)


def ce_grad_rows(const floating[:, ::1] logits, const int64_t[::1] labels,
                 const floating[::1] weight, int64_t ignore_index, double eps,
                 double inv_denom, double[::1] row_losses, floating[:, ::1] grad):
    # logits (N, C), labels (N,), weight (C,) -> row_losses (N,), grad (N, C)
    # IN  logits, labels, weight, eps: as ce_forward_rows; inv_denom: 1 / the "mean"
    #     denominator (1 for "sum" and "none"; inf when it is 0, which only happens when
    #     every row is ignored, and ignored rows get 0 whatever it is)
    # OUT row_losses: per-row losses in float64; grad: d loss / d logits, reduced as the
    #     loss is; may be the logits array itself (then it is overwritten in place)
    cdef Py_ssize_t i, n = logits.shape[0], c = logits.shape[1]
    cdef double wsum = _sum(&weight[0], c)
    cdef Py_ssize_t rows = kp_short_block_rows(c), nblocks = (n + rows - 1) // rows
    if floating is float:
        if c < SHORT_ROW:
            if n * c <= PARALLEL_MIN_WORK:  # no OpenMP region: even if(0) costs 0.6 us
                with nogil:
                    for i in range(nblocks):
                        kp_short_ce_f(&logits[i * rows, 0], &labels[i * rows],
                                      min(rows, n - i * rows), c, ignore_index, &weight[0],
                                      wsum, eps, inv_denom, &row_losses[i * rows],
                                      &grad[i * rows, 0])
                return
            for i in prange(nblocks, nogil=True, schedule="static"):
                kp_short_ce_f(&logits[i * rows, 0], &labels[i * rows], min(rows, n - i * rows),
                              c, ignore_index, &weight[0], wsum, eps, inv_denom,
                              &row_losses[i * rows], &grad[i * rows, 0])
            return
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n * c > PARALLEL_MIN_WORK):
        row_losses[i] = _ce_row(&logits[i, 0], &grad[i, 0], c, labels[i],
                                labels[i] != ignore_index, &weight[0], wsum, eps, inv_denom)


cdef double _sum(const floating* x, Py_ssize_t n) noexcept nogil:
    # x (n,) -> sum in double
    cdef double s = 0
    cdef Py_ssize_t j
    for j in range(n):
        s += x[j]
    return s


cdef enum:
    # Elements per partial sum of the MSE: fixed, so the sum's order (and its rounding)
    # is the same for every thread count.
    MSE_CHUNK = 8192


def mse_elementwise(const floating[::1] pred, const floating[::1] target,
                    floating[::1] out):
    # pred (n,), target (n,) -> out (n,) = (pred - target)^2
    # IN pred, target: flat; OUT out
    cdef Py_ssize_t i, n = pred.shape[0]
    cdef floating d
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
        d = pred[i] - target[i]
        out[i] = d * d


def mse_sum(const floating[::1] pred, const floating[::1] target):
    """Sum of ``(pred - target)^2`` in float64: squares in the input dtype (as the
    reference), partial sums per fixed chunk in parallel, then the chunks in order."""
    # pred (n,), target (n,) -> float
    cdef Py_ssize_t n = pred.shape[0]
    cdef Py_ssize_t nchunks = (n + MSE_CHUNK - 1) // MSE_CHUNK
    cdef Py_ssize_t ic, i, i0, i1
    cdef floating d
    cdef double s, total = 0
    cdef double[::1] partial = np.zeros(nchunks, dtype=np.float64)
    for ic in prange(nchunks, nogil=True, schedule="static", use_threads_if=nchunks > 4):
        i0 = ic * MSE_CHUNK
        i1 = min(n, i0 + MSE_CHUNK)
        if floating is float:  # 8 double lanes on the CPU's widest vectors (_common.pxi)
            s = kp_sq_diff_sum_f(&pred[i0], &target[i0], i1 - i0)
        else:
            s = 0
            for i in range(i0, i1):
                d = pred[i] - target[i]
                s = s + d * d
        partial[ic] = s
    for ic in range(nchunks):
        total += partial[ic]
    return total


def mse_grad(const floating[::1] pred, const floating[::1] target, double divisor,
             floating[::1] out):
    # pred (n,), target (n,) -> out (n,) = 2 (pred - target) / divisor
    # IN divisor: pred.size for "mean", else 1 (divided in the input dtype, as the
    #    reference does); OUT out
    cdef Py_ssize_t i, n = pred.shape[0]
    cdef floating div = <floating>divisor
    cdef Py_ssize_t c, i0, nchunks = (n + MSE_CHUNK - 1) // MSE_CHUNK
    if floating is float:  # on the CPU's widest vectors (_common.pxi)
        for c in prange(nchunks, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
            i0 = c * MSE_CHUNK
            kp_mse_grad_f(&pred[i0], &target[i0], div, &out[i0], min(<Py_ssize_t>MSE_CHUNK, n - i0))
        return
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
        out[i] = (2 * (pred[i] - target[i])) / div
