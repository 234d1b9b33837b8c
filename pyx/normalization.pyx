# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Layer normalization over the last axis for the ``cython`` backend, forward and backward.

Forward: one C helper per row and a ``prange`` over rows, each row read and written by
one thread.  The row's mean and its biased variance are summed in double (the variance
from the centred values, a second pass over the row while it sits in L1: no
``E[x^2] - E[x]^2`` cancellation for rows far from 0), then
``y = (x - mean) * rstd * weight + bias`` with ``rstd = 1 / sqrt(var + eps)``.

Backward, with ``xhat = (x - mean) * rstd`` and ``g = dy * weight``:

    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    dweight = sum over rows of dy * xhat,  dbias = sum over rows of dy

``dx`` is per row.  ``dweight`` and ``dbias`` are column sums over all rows: the rows go
in fixed blocks of ``LN_ROWS`` (a ``prange`` over the blocks), each block summing its
rows in order into a partial row of its own (no two threads write one), then a second
``prange`` over columns adds the partials of the blocks in block order, in double.  The
blocks do not depend on the thread count, so neither do the bits of the result.
float32 rows run through C loops compiled per CPU level (``KP_CLONES``, _common.pxi) on
GCC vectors, their row sums in double lanes (their order depends on C alone); while a
row's later passes run from L1 the next row is fetched, so memory does not idle.
"""

include "_common.pxi"

from cython.parallel cimport prange
from libc.math cimport sqrt

import numpy as np


cdef enum:
    # Rows per block of the backward's column sums: a block's partial sums stay in the
    # dtype (float32 over 64 rows), the blocks' partials are added in double.
    LN_ROWS = 64
    # Columns per task of the final sum of the blocks' partials
    COL_CHUNK = 256


cdef extern from *:
    """
    /* Row sums in double over 8 lanes, written with GCC vectors: the auto-vectoriser
       left the fused backward loop (two double sums and two column updates) scalar. */
    typedef float kp_ln_v8f __attribute__((vector_size(32)));
    typedef float kp_ln_v4f __attribute__((vector_size(16)));
    typedef double kp_ln_v4d __attribute__((vector_size(32)));

    /* lo, hi (4 doubles each) += the 8 floats of v, widened */
    static inline __attribute__((always_inline)) void kp_ln_acc(kp_ln_v4d *lo, kp_ln_v4d *hi,
                                                                kp_ln_v8f v) {
        kp_ln_v4f a, b;
        memcpy(&a, &v, 16);
        memcpy(&b, (const char *)&v + 16, 16);
        *lo += __builtin_convertvector(a, kp_ln_v4d);
        *hi += __builtin_convertvector(b, kp_ln_v4d);
    }

    static inline double kp_ln_hsum(kp_ln_v4d lo, kp_ln_v4d hi) {
        kp_ln_v4d s = lo + hi;
        return (s[0] + s[1]) + (s[2] + s[3]);
    }

    /* x (c,) -> y (c,) = (x - mean) * rstd * w (+ b when b != NULL); mean, rstd out */
    KP_CLONES static void kp_ln_forward_row_f(const float *x, const float *w, const float *b,
                                              float *y, Py_ssize_t c, double eps,
                                              float *mean_out, float *rstd_out) {
        kp_ln_v4d s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        kp_ln_v8f v0, v1, mv;
        double tail = 0;
        Py_ssize_t j, jv = c / 16 * 16;
        float m, r;
        /* two vectors a step: four chains of double adds */
        for (j = 0; j < jv; j += 16) {
            memcpy(&v0, x + j, 32);
            memcpy(&v1, x + j + 8, 32);
            kp_ln_acc(&s0, &s1, v0);
            kp_ln_acc(&s2, &s3, v1);
        }
        for (j = jv; j < c; j++) tail += (double)x[j];
        m = (float)((kp_ln_hsum(s0, s1) + kp_ln_hsum(s2, s3) + tail) / (double)c);
        /* the variance of the centred row (no E[x^2] - E[x]^2 cancellation) */
        s0 = s1 = s2 = s3 = (kp_ln_v4d){0};
        tail = 0;
        mv = (kp_ln_v8f){0} + m;
        for (j = 0; j < jv; j += 16) {
            /* the next row's line at this offset (and the output's), fetched now: the
               second and third passes run from L1, and memory would idle meanwhile */
            __builtin_prefetch(x + c + j, 0, 3);
            __builtin_prefetch(y + c + j, 1, 3);
            memcpy(&v0, x + j, 32);
            memcpy(&v1, x + j + 8, 32);
            v0 -= mv;
            v1 -= mv;
            kp_ln_acc(&s0, &s1, v0 * v0);
            kp_ln_acc(&s2, &s3, v1 * v1);
        }
        for (j = jv; j < c; j++) {
            float d = x[j] - m;
            tail += (double)(d * d);
        }
        r = (float)(1.0 / sqrt((kp_ln_hsum(s0, s1) + kp_ln_hsum(s2, s3) + tail) / (double)c + eps));
        *mean_out = m;
        *rstd_out = r;
        if (b != NULL)
            for (j = 0; j < c; j++) y[j] = (x[j] - m) * r * w[j] + b[j];
        else
            for (j = 0; j < c; j++) y[j] = (x[j] - m) * r * w[j];
    }

    /* A block of rows: x, dy, dx (rows, c); mean, rstd (rows,) ->
       dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w, xhat = (x - mean) rstd;
       dw (c,) = sum over the block's rows of dy xhat, db (c,) = of dy (db NULL: none),
       in row order. */
    KP_CLONES static void kp_ln_backward_rows_f(const float *x, const float *w,
                                                const float *mean, const float *rstd,
                                                const float *dy, float *dx, Py_ssize_t rows,
                                                Py_ssize_t c, float *dw, float *db) {
        Py_ssize_t r, j, jv = c / 8 * 8;
        for (j = 0; j < c; j++) dw[j] = 0.0f;
        if (db != NULL)
            for (j = 0; j < c; j++) db[j] = 0.0f;
        for (r = 0; r < rows; r++) {
            const float *xr = x + r * c, *dyr = dy + r * c;
            float *dxr = dx + r * c;
            float m = mean[r], rs = rstd[r], mg, mgx;
            kp_ln_v4d g0 = {0}, g1 = {0}, gx0 = {0}, gx1 = {0};
            kp_ln_v8f mv = (kp_ln_v8f){0} + m, rv = (kp_ln_v8f){0} + rs;
            double tg = 0, tgx = 0;
            /* pass 1: the row's two sums and its share of the column sums */
            for (j = 0; j < jv; j += 8) {
                kp_ln_v8f xv, dyv, wv, xh, g, acc;
                memcpy(&xv, xr + j, 32);
                memcpy(&dyv, dyr + j, 32);
                memcpy(&wv, w + j, 32);
                xh = (xv - mv) * rv;
                g = dyv * wv;
                kp_ln_acc(&g0, &g1, g);
                kp_ln_acc(&gx0, &gx1, g * xh);
                memcpy(&acc, dw + j, 32);
                acc += dyv * xh;
                memcpy(dw + j, &acc, 32);
                if (db != NULL) {
                    memcpy(&acc, db + j, 32);
                    acc += dyv;
                    memcpy(db + j, &acc, 32);
                }
            }
            for (j = jv; j < c; j++) {
                float xh = (xr[j] - m) * rs, g = dyr[j] * w[j];
                tg += (double)g;
                tgx += (double)(g * xh);
                dw[j] += dyr[j] * xh;
                if (db != NULL) db[j] += dyr[j];
            }
            mg = (float)((kp_ln_hsum(g0, g1) + tg) / (double)c);
            mgx = (float)((kp_ln_hsum(gx0, gx1) + tgx) / (double)c);
            /* pass 2: dx, the row still in L1; the next row's lines fetched meanwhile
               (memory would idle during this pass) */
            {
                kp_ln_v8f mgv = (kp_ln_v8f){0} + mg, mgxv = (kp_ln_v8f){0} + mgx;
                for (j = 0; j < jv; j += 8) {
                    kp_ln_v8f xv, dyv, wv, out;
                    if ((j & 15) == 0) {
                        __builtin_prefetch(xr + c + j, 0, 3);
                        __builtin_prefetch(dyr + c + j, 0, 3);
                        __builtin_prefetch(dxr + c + j, 1, 3);
                    }
                    memcpy(&xv, xr + j, 32);
                    memcpy(&dyv, dyr + j, 32);
                    memcpy(&wv, w + j, 32);
                    out = rv * ((dyv * wv - mgv) - (xv - mv) * rv * mgxv);
                    memcpy(dxr + j, &out, 32);
                }
            }
            for (j = jv; j < c; j++) {
                float xh = (xr[j] - m) * rs;
                dxr[j] = rs * ((dyr[j] * w[j] - mg) - xh * mgx);
            }
        }
    }
    """
    void kp_ln_forward_row_f(const float* x, const float* w, const float* b, float* y,
                             Py_ssize_t c, double eps, float* mean_out,
                             float* rstd_out) noexcept nogil
    void kp_ln_backward_rows_f(const float* x, const float* w, const float* mean,
                               const float* rstd, const float* dy, float* dx, Py_ssize_t rows,
                               Py_ssize_t c, float* dw, float* db) noexcept nogil


cdef void _ln_forward_row(const floating* x, const floating* w, const floating* b,
                          floating* y, Py_ssize_t c, double eps, floating* mean,
                          floating* rstd) noexcept nogil:
    # x (c,) -> y (c,), mean, rstd; b NULL: no bias
    cdef double s = 0, v = 0, d
    cdef floating m, r
    cdef Py_ssize_t j
    if floating is float:
        kp_ln_forward_row_f(x, w, b, y, c, eps, mean, rstd)
    else:
        for j in range(c):
            s += x[j]
        m = s / c
        for j in range(c):
            d = x[j] - m
            v += d * d
        r = 1.0 / sqrt(v / c + eps)
        mean[0] = m
        rstd[0] = r
        for j in range(c):
            y[j] = (x[j] - m) * r * w[j] + (b[j] if b != NULL else 0)


cdef void _ln_backward_rows(const floating* x, const floating* w, const floating* mean,
                            const floating* rstd, const floating* dy, floating* dx,
                            Py_ssize_t rows, Py_ssize_t c, floating* dw,
                            floating* db) noexcept nogil:
    # a block of rows (rows, c) -> dx (rows, c); dw, db (c,) = the block's column sums
    # of dy * xhat and dy, in row order (db NULL: none)
    cdef Py_ssize_t r, j
    cdef floating m, rs, xh, g, mg, mgx
    cdef double sg, sgx
    if floating is float:
        kp_ln_backward_rows_f(x, w, mean, rstd, dy, dx, rows, c, dw, db)
    else:
        for j in range(c):
            dw[j] = 0
            if db != NULL:
                db[j] = 0
        for r in range(rows):
            m = mean[r]
            rs = rstd[r]
            sg = 0
            sgx = 0
            for j in range(c):
                xh = (x[r * c + j] - m) * rs
                g = dy[r * c + j] * w[j]
                sg += g
                sgx += g * xh
                dw[j] += dy[r * c + j] * xh
                if db != NULL:
                    db[j] += dy[r * c + j]
            mg = sg / c
            mgx = sgx / c
            for j in range(c):
                xh = (x[r * c + j] - m) * rs
                dx[r * c + j] = rs * ((dy[r * c + j] * w[j] - mg) - xh * mgx)


cdef void _sum_blocks(const floating* part, Py_ssize_t nblocks, Py_ssize_t ld,
                      Py_ssize_t width, floating* out) noexcept nogil:
    # part (nblocks, ld): out (width,) = sum over the blocks of part[:, :width], added in
    # block order in double
    cdef double acc[COL_CHUNK]
    cdef Py_ssize_t blk, j
    for j in range(width):
        acc[j] = 0
    for blk in range(nblocks):
        for j in range(width):
            acc[j] += part[blk * ld + j]
    for j in range(width):
        out[j] = <floating>acc[j]


def layer_norm_forward(const floating[:, ::1] x, const floating[::1] weight,
                       const floating[::1] bias, bint has_bias, double eps,
                       floating[:, ::1] y, floating[::1] mean, floating[::1] rstd):
    # x (N, C), weight (C,), bias (C,) -> y (N, C), mean (N,), rstd (N,)
    # IN x, weight, bias (read only when has_bias), eps; OUT y, mean, rstd
    cdef Py_ssize_t i, n = x.shape[0], c = x.shape[1]
    cdef const floating* b = &bias[0] if has_bias else NULL
    # handed out in chunks of about PARALLEL_MIN_WORK elements as threads come free, not
    # split in halves up front: on a shared machine a thread off its core for a time
    # slice no longer holds up the other (the bits do not depend on the schedule)
    cdef Py_ssize_t chunk = max(1, PARALLEL_MIN_WORK // c)
    for i in prange(n, nogil=True, schedule="dynamic", chunksize=chunk,
                    use_threads_if=n * c > PARALLEL_MIN_WORK):
        _ln_forward_row(&x[i, 0], &weight[0], b, &y[i, 0], c, eps, &mean[i], &rstd[i])


def layer_norm_backward(const floating[:, ::1] x, const floating[::1] weight,
                        const floating[::1] mean, const floating[::1] rstd,
                        const floating[:, ::1] dy, floating[:, ::1] dx,
                        floating[::1] dweight, floating[::1] dbias, bint has_bias):
    # x, dy (N, C), weight (C,), mean, rstd (N,) -> dx (N, C), dweight (C,), dbias (C,)
    # IN x, weight, mean, rstd (the forward's), dy; has_bias; OUT dx, dweight, dbias
    # (dbias written only when has_bias)
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1]
    cdef Py_ssize_t nblocks = (n + LN_ROWS - 1) // LN_ROWS
    cdef Py_ssize_t blk, r0, j0, width
    dtype = np.float32 if floating is float else np.float64
    # the blocks' partial column sums: (nblocks, C) each
    cdef floating[:, ::1] dw_part = np.empty((nblocks, c), dtype=dtype)
    cdef floating[:, ::1] db_part = np.empty((nblocks if has_bias else 1, c), dtype=dtype)
    cdef Py_ssize_t nchunks = (c + COL_CHUNK - 1) // COL_CHUNK
    cdef Py_ssize_t chunk = max(1, PARALLEL_MIN_WORK // (LN_ROWS * c))
    # blocks handed out as threads come free (see layer_norm_forward)
    for blk in prange(nblocks, nogil=True, schedule="dynamic", chunksize=chunk,
                      use_threads_if=n * c > PARALLEL_MIN_WORK):
        r0 = blk * LN_ROWS
        _ln_backward_rows(&x[r0, 0], &weight[0], &mean[r0], &rstd[r0], &dy[r0, 0], &dx[r0, 0],
                          min(<Py_ssize_t>LN_ROWS, n - r0), c, &dw_part[blk, 0],
                          &db_part[blk, 0] if has_bias else NULL)
    # columns in chunks, each owned by one task
    for j0 in prange(nchunks, nogil=True, schedule="static",
                     use_threads_if=nblocks * c > PARALLEL_MIN_WORK):
        width = min(<Py_ssize_t>COL_CHUNK, c - j0 * COL_CHUNK)
        _sum_blocks(&dw_part[0, j0 * COL_CHUNK], nblocks, c, width, &dweight[j0 * COL_CHUNK])
        if has_bias:
            _sum_blocks(&db_part[0, j0 * COL_CHUNK], nblocks, c, width, &dbias[j0 * COL_CHUNK])
