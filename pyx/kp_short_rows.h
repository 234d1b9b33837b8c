/* Row-blocked float32 kernels for short rows (C < KP_SHORT_ROW = 128 classes), declared
   for Cython in _short_rows.pxi, which softmax.pyx and losses.pyx include after
   _common.pxi.  The bound is measured (AMD EPYC Zen 4, 2 threads, 655360 elements): this
   path is ahead of the per-row one up to 100 classes (log-softmax 319 against 411 us at
   64, 323 against 379 at 100), behind at 200.  A row of 10 classes is shorter than
   one AVX-512 vector, so the per-row loops of the long-row path run mostly in their
   scalar remainders (65536x10 log-softmax: 1.4x NumPy against Numba's 9x).  Here a block
   of rows goes through each stage as one flat loop over the block, as the Numba
   backend's short_rows_stats does: the per-row max and shift (short, scalar, but
   independent rows overlap in the out-of-order core), one flat vectorised exp over the
   whole block, per-row sums in double, then flat outputs.  Each row's arithmetic is the
   same whatever block or thread it lands in, so results do not depend on the thread
   count.  The block's buffers live on the stack (about 40 KiB). */
#ifndef KP_SHORT_ROWS_H
#define KP_SHORT_ROWS_H

#include "kp_common.h"

#define KP_SHORT_ROW 128     /* rows shorter than this take the row-blocked path */
#define KP_SHORT_ELEMS 2048   /* elements per block: d and e stay in L1 */
#define KP_SHORT_ROWS 512     /* rows per block at most (the m and s buffers) */

/* rows per block for rows of c: at least 1, so the callers' block count (computed
   for every length, long rows included) never divides by zero */
static inline Py_ssize_t kp_short_block_rows(Py_ssize_t c) {
    Py_ssize_t r = KP_SHORT_ELEMS / (c > 0 ? c : 1);
    return r < 1 ? 1 : r < KP_SHORT_ROWS ? r : KP_SHORT_ROWS;
}

/* x (rows, c) contiguous -> m (rows,) row maxima, d (rows c,) = x - m,
   e (rows c,) = exp(d), s (rows,) = row sums of e in double, in column order.
   Every exp argument is <= 0; a NaN is never the max but makes its row's s NaN;
   a row of all -inf has d = NaN, so it comes out NaN (as the reference). */
KP_CLONES static void kp_short_stats_f(const float *x, Py_ssize_t rows, Py_ssize_t c,
                                       float *m, float *d, float *e, double *s) {
    Py_ssize_t r, j, k;
    /* From 16 classes the sum runs over 8 double lanes (as kp_sum_f): a scalar
       chain of addsd per row was 40% of the time at 64 classes (1 thread: 630 ->
       392 us).  Below 16 the lanes' set-up costs more than the short chains, which
       the out-of-order core overlaps across rows.  The max stays a scalar chain: the
       16-lane kp_max16_f measured slower at every length here (its merge). */
    for (r = 0; r < rows; r++) {
        const float *xr = x + r * c;
        float mr = xr[0];
        for (j = 1; j < c; j++) mr = xr[j] > mr ? xr[j] : mr;
        m[r] = mr;
        for (j = 0; j < c; j++) d[r * c + j] = xr[j] - mr;
    }
    for (k = 0; k < rows * c; k++) e[k] = kp_expf(d[k]);
    for (r = 0; r < rows; r++) {
        const float *er = e + r * c;
        if (c >= 16) {
            double acc[KP_LANES] = {0};
            Py_ssize_t l;
            for (j = 0; j + KP_LANES <= c; j += KP_LANES)
                for (l = 0; l < KP_LANES; l++) acc[l] += (double)er[j + l];
            for (; j < c; j++) acc[0] += (double)er[j];
            s[r] = kp_sum_lanes(acc);
        } else {
            double acc = 0;
            for (j = 0; j < c; j++) acc += (double)er[j];
            s[r] = acc;
        }
    }
}

/* x (rows, c) -> out (rows, c) = (x - m) - log(s): shifted first, so a large max
   loses nothing to rounding.  out may not alias x. */
KP_CLONES static void kp_short_log_softmax_f(const float *x, float *out, Py_ssize_t rows,
                                             Py_ssize_t c) {
    float m[KP_SHORT_ROWS], d[KP_SHORT_ELEMS], e[KP_SHORT_ELEMS], lse[KP_SHORT_ROWS];
    double s[KP_SHORT_ROWS];
    Py_ssize_t r, j;
    kp_short_stats_f(x, rows, c, m, d, e, s);
    for (r = 0; r < rows; r++) lse[r] = kp_logf((float)s[r]);
    for (r = 0; r < rows; r++)
        for (j = 0; j < c; j++) out[r * c + j] = d[r * c + j] - lse[r];
}

/* x (rows, c) -> out (rows, c) = exp(x - m) / s */
KP_CLONES static void kp_short_softmax_f(const float *x, float *out, Py_ssize_t rows,
                                         Py_ssize_t c) {
    float m[KP_SHORT_ROWS], d[KP_SHORT_ELEMS], e[KP_SHORT_ELEMS], inv[KP_SHORT_ROWS];
    double s[KP_SHORT_ROWS];
    Py_ssize_t r, j;
    kp_short_stats_f(x, rows, c, m, d, e, s);
    for (r = 0; r < rows; r++) inv[r] = (float)(1.0 / s[r]);
    for (r = 0; r < rows; r++)
        for (j = 0; j < c; j++) out[r * c + j] = e[r * c + j] * inv[r];
}

/* y (rows, c) log-probabilities, dy (rows, c) -> out (rows, c) = dy - exp(y) sum(dy) */
KP_CLONES static void kp_short_log_softmax_backward_f(const float *y, const float *dy,
                                                      float *out, Py_ssize_t rows,
                                                      Py_ssize_t c) {
    float e[KP_SHORT_ELEMS], t[KP_SHORT_ROWS];
    Py_ssize_t r, j, k;
    for (r = 0; r < rows; r++) {
        double acc = 0;
        for (j = 0; j < c; j++) acc += (double)dy[r * c + j];
        t[r] = (float)acc;
    }
    for (k = 0; k < rows * c; k++) e[k] = kp_expf(y[k]);
    for (r = 0; r < rows; r++)
        for (j = 0; j < c; j++) out[r * c + j] = dy[r * c + j] - e[r * c + j] * t[r];
}

/* Cross-entropy of a block of short rows (the formulas of losses.pyx's docstring):
   x (rows, c) logits, labels (rows,) -> loss (rows,) in double; when g != NULL,
   g (rows, c) = the gradient * inv_denom.  g may be x itself: the block is read
   whole into d and e before any of g is written.  w: class weights (ones when
   unweighted), wsum their sum; eps: label smoothing; ignored rows get 0. */
KP_CLONES static void kp_short_ce_f(const float *x, const int64_t *labels, Py_ssize_t rows,
                                    Py_ssize_t c, int64_t ignore_index, const float *w,
                                    double wsum, double eps, double inv_denom,
                                    double *loss, float *g) {
    float m[KP_SHORT_ROWS], d[KP_SHORT_ELEMS], e[KP_SHORT_ELEMS];
    double s[KP_SHORT_ROWS];
    int smoothing = eps > 0;
    float fs = (float)(eps / c * inv_denom), fw = (float)wsum;
    Py_ssize_t r, j;
    float lse[KP_SHORT_ROWS];
    kp_short_stats_f(x, rows, c, m, d, e, s);
    for (r = 0; r < rows; r++) lse[r] = kp_logf((float)s[r]);
    for (r = 0; r < rows; r++) {
        int64_t y = labels[r];
        const float *dr = d + r * c;
        float *er = e + r * c;
        double log_s, wy, sw, l;
        float ft, inv_s, py;
        if (y == ignore_index) {
            loss[r] = 0.0;
            if (g != NULL)
                for (j = 0; j < c; j++) g[r * c + j] = 0.0f;
            continue;
        }
        log_s = lse[r];
        wy = w[y];
        l = (1 - eps) * wy * (log_s - dr[y]);
        /* skipped at eps == 0, where 0 * inf would turn a -inf logit's term NaN */
        if (smoothing) {
            sw = 0;
            for (j = 0; j < c; j++) sw += (double)w[j] * (double)dr[j];
            l += (eps / c) * (wsum * log_s - sw);
        }
        loss[r] = l;
        if (g == NULL) continue;
        /* term by term as the formula, so a one-class row gets an exact zero */
        ft = (float)((1 - eps) * wy * inv_denom);
        inv_s = (float)(1.0 / s[r]);
        py = er[y] * inv_s;
        if (smoothing) {
            for (j = 0; j < c; j++) {
                float p = er[j] * inv_s;
                g[r * c + j] = ft * p + fs * (fw * p - w[j]);
            }
            g[r * c + y] = ft * (py - 1.0f) + fs * (fw * py - w[y]);
        } else {
            for (j = 0; j < c; j++) g[r * c + j] = ft * (er[j] * inv_s);
            g[r * c + y] = ft * (py - 1.0f);
        }
    }
}

#endif /* KP_SHORT_ROWS_H */
