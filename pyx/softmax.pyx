# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Softmax and log-softmax over the last axis for the ``cython`` backend.

One C helper per row (``_row_*``) and a ``prange`` over rows: each row is read and
written by one thread.  Stability: the row max is subtracted before ``exp``, so every
``exp`` argument is <= 0 and cannot overflow (logits of +-1e4 stay finite); the sum of
exponentials is kept in double.  ``-inf`` logits give ``exp(-inf) = 0``; a row of all
``-inf`` has max ``-inf``, ``-inf - -inf`` is NaN, and the row comes out NaN, as the
reference and PyTorch.

float32 rows shorter than ``SHORT_ROW`` go in blocks of rows through the row-blocked
kernels of _short_rows.pxi (vectorised across the rows of a block), a ``prange`` over
the blocks.
"""

include "_common.pxi"
include "_short_rows.pxi"

from cython.parallel cimport prange


cdef void _row_log_softmax(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    # x (n,) -> out (n,) = (x - max) - log(sum(exp(x - max)))
    cdef floating m, lse
    cdef Py_ssize_t j
    # Two passes before the output (max, then the exps), not one online pass: with the
    # row in L1/L2 the online form's rescaling measured 10% slower.
    m = _row_max(x, n)
    if floating is float:  # the sum is >= 1 (its max term is exp(0)) or NaN
        lse = kp_logf(<float>_sum_exp(x, m, n, <floating*>NULL))
    else:
        lse = log(_sum_exp(x, m, n, <floating*>NULL))
    if floating is float:
        kp_shift2_f(x, m, lse, out, n)
    else:
        for j in range(n):
            out[j] = (x[j] - m) - lse


cdef void _row_softmax(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    # x (n,) -> out (n,) = exp(x - max) / sum(exp(x - max)); out holds the exps between
    # the two passes so each exp is computed once (so the max comes first, not online).
    cdef floating m = _row_max(x, n)
    cdef floating inv = <floating>(1.0 / _sum_exp(x, m, n, out))
    cdef Py_ssize_t j
    if floating is float:
        kp_scale_f(out, inv, n)
    else:
        for j in range(n):
            out[j] = out[j] * inv


cdef void _row_log_softmax_backward(const floating* y, const floating* dy, floating* out,
                                    Py_ssize_t n) noexcept nogil:
    # y (n,) log-softmax output, dy (n,) -> out (n,) = dy - exp(y) * sum(dy)
    cdef floating total = <floating>_sum4(dy, n)
    cdef Py_ssize_t j
    if floating is float:
        kp_exp_axpy_f(y, dy, total, out, n)
    else:
        for j in range(n):
            out[j] = dy[j] - _exp(y[j]) * total


ctypedef void (*short_rows_kernel)(const float*, float*, Py_ssize_t, Py_ssize_t) noexcept nogil


cdef void _short_rows_f(short_rows_kernel kernel, const float[:, ::1] x, float[:, ::1] out) noexcept:
    # x (N, C) -> out (N, C), C < SHORT_ROW: ``kernel`` on blocks of rows
    cdef Py_ssize_t i, n = x.shape[0], c = x.shape[1]
    cdef Py_ssize_t rows = kp_short_block_rows(c), nblocks = (n + rows - 1) // rows
    if n * c <= PARALLEL_MIN_WORK:  # no OpenMP region: even if(0) costs 0.6 us
        with nogil:
            for i in range(nblocks):
                kernel(&x[i * rows, 0], &out[i * rows, 0], min(rows, n - i * rows), c)
        return
    for i in prange(nblocks, nogil=True, schedule="static"):
        kernel(&x[i * rows, 0], &out[i * rows, 0], min(rows, n - i * rows), c)


def log_softmax_forward(const floating[:, ::1] x, floating[:, ::1] out):
    # x (N, C) -> out (N, C)
    # IN x: logits, rows contiguous; OUT out: log-probabilities
    cdef Py_ssize_t i, n = x.shape[0], c = x.shape[1]
    if floating is float:
        if c < SHORT_ROW:
            _short_rows_f(kp_short_log_softmax_f, x, out)
            return
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n * c > PARALLEL_MIN_WORK):
        _row_log_softmax(&x[i, 0], &out[i, 0], c)


def softmax_forward(const floating[:, ::1] x, floating[:, ::1] out):
    # x (N, C) -> out (N, C)
    # IN x: logits, rows contiguous; OUT out: probabilities, rows summing to 1
    cdef Py_ssize_t i, n = x.shape[0], c = x.shape[1]
    if floating is float:
        if c < SHORT_ROW:
            _short_rows_f(kp_short_softmax_f, x, out)
            return
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n * c > PARALLEL_MIN_WORK):
        _row_softmax(&x[i, 0], &out[i, 0], c)


def log_softmax_backward(const floating[:, ::1] y, const floating[:, ::1] dy,
                         floating[:, ::1] out):
    # y (N, C), dy (N, C) -> out (N, C)
    # IN y: the log-softmax output; dy: upstream gradient; OUT out: gradient of the input
    cdef Py_ssize_t i, n = y.shape[0], c = y.shape[1]
    cdef Py_ssize_t rows = kp_short_block_rows(c), nblocks = (n + rows - 1) // rows
    if floating is float:
        if c < SHORT_ROW:
            if n * c <= PARALLEL_MIN_WORK:  # no OpenMP region: even if(0) costs 0.6 us
                with nogil:
                    for i in range(nblocks):
                        kp_short_log_softmax_backward_f(&y[i * rows, 0], &dy[i * rows, 0],
                                                        &out[i * rows, 0],
                                                        min(rows, n - i * rows), c)
                return
            for i in prange(nblocks, nogil=True, schedule="static"):
                kp_short_log_softmax_backward_f(&y[i * rows, 0], &dy[i * rows, 0],
                                                &out[i * rows, 0], min(rows, n - i * rows), c)
            return
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n * c > PARALLEL_MIN_WORK):
        _row_log_softmax_backward(&y[i, 0], &dy[i, 0], &out[i, 0], c)
