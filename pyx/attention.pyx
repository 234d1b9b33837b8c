# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused scaled dot-product attention for the ``cython`` backend, forward and backward.

FlashAttention-2 (Dao, "FlashAttention-2: Faster Attention with Better Parallelism and
Work Partitioning", 2023) on CPU threads: no (Lq, Lk) score matrix is ever held, only a
tile per thread.  Shapes per head: q (Lq, D), k (Lk, D), v (Lk, Dv), C-contiguous.

Forward: a ``prange`` over (head, block of BQ queries), each task owning its rows of
``out`` and ``lse``.  For each block of BK keys: S = Q_blk K_blk^T, scaled (the keys are
transposed by blocks once, before the tasks, so the product's inner loop runs along
contiguous keys: a copy as big as k, never a score matrix); then the online softmax per
row (running max m and sum l: the accumulator is rescaled by exp(m_old - m_new)
whenever the max grows, so no exp argument is ever > 0 and scores of +-1e4 stay finite;
the exps on 8-float vectors); then O += P V_blk.  With ``causal`` (key j > query i
masked, top-left aligned) key blocks entirely above the diagonal are skipped and the
diagonal block's masked entries get p = 0.  At the end out = O / l and lse = m + log(l).
Tasks of causal heads differ in size: they are handed out dynamically, the longest
first.

Backward (with delta_i = sum_d dout[i, d] out[i, d], and k and v transposed by blocks,
first): for each key block, owned by one thread so dk and dv are written without races,
loop over the query blocks: recompute P = exp(S scale - lse), dV += P^T dO,
dP = dO V_blk^T, dS = P (dP - delta) scale, dK += dS^T Q.  dQ (+= dS K_blk) is shared across key blocks.  Two schedules give the
same bits:
  * one task per head (when there are enough heads to keep the threads busy): the
    head's key blocks run in order on one thread, which also adds dS K_blk into dQ;
  * otherwise tasks per (head, key block) for dK and dV, then a second pass of tasks
    per (head, query block) that recomputes S, P, dP and dS and adds dS K_blk over the
    key blocks in the same order (40% more arithmetic, but every thread has work).
Every product runs through one GEMM routine whose per-element sums do not depend on the
tile's position or the thread, so the results do not depend on the thread count.

Products: float32 through register-blocked tiles of 6 rows x 16 columns (twelve 8-float
vector accumulators, a rank-1 update per step with the contiguous axis innermost) in C
compiled per CPU level (``KP_CLONES``, _common.pxi); float64 through plain loops.
``precision``: every precision computes in float32 here ("bf16" and "bf16x3" run the
float32 products, at least as accurate as asked, as the contract allows).
"""

include "_common.pxi"

from cython.parallel cimport parallel, prange, threadid
from libc.math cimport INFINITY, log
from libc.string cimport memset

import numpy as np


cdef enum:
    # Queries and keys per block: a block's tiles (K_blk^T, S, dP: 16 KiB each at
    # D = 64 in float32) stay in L1/L2 while the products run.  Both schedules of the
    # backward and the forward share them (the same tiles give the same sums).
    BQ = 64
    BK = 64
    # Below this many multiply-adds a call runs on the calling thread
    ATT_PARALLEL_MIN_WORK = 1 << 18


cdef extern from *:
    """
    typedef float kp_att_v8f __attribute__((vector_size(32)));

    /* c (MR, 8 NV) (+)= a (MR, k) b (k, 8 NV): a[r, p] at a[r * a_rs + p * a_cs] (either
       layout: Q rows, or P^T read from P), b's rows ldb apart, contiguous.  A rank-1
       update per p: MR broadcasts times NV vector loads into MR x NV accumulators
       (6 x 2 = 12 of AVX2's 16 ymm registers).  Each element sums its products in p
       order, then adds c's old value: the same sums wherever the tile lies. */
    static inline __attribute__((always_inline)) void kp_att_tile_f(
            const int MR, const int NV, Py_ssize_t k, const float *a, Py_ssize_t a_rs,
            Py_ssize_t a_cs, const float *b, Py_ssize_t ldb, float *c, Py_ssize_t ldc,
            int accumulate) {
        kp_att_v8f acc[6][2], bv[2], old;
        Py_ssize_t p;
        int r, v;
        for (r = 0; r < MR; r++)
            for (v = 0; v < NV; v++) acc[r][v] = (kp_att_v8f){0};
        for (p = 0; p < k; p++) {
            for (v = 0; v < NV; v++) memcpy(&bv[v], b + p * ldb + 8 * v, 32);
            for (r = 0; r < MR; r++) {
                float av = a[r * a_rs + p * a_cs];
                for (v = 0; v < NV; v++) acc[r][v] += av * bv[v];
            }
        }
        if (accumulate)
            for (r = 0; r < MR; r++)
                for (v = 0; v < NV; v++) {
                    memcpy(&old, c + r * ldc + 8 * v, 32);
                    acc[r][v] += old;
                }
        for (r = 0; r < MR; r++)
            for (v = 0; v < NV; v++) memcpy(c + r * ldc + 8 * v, &acc[r][v], 32);
    }

    #define KP_ATT_TILE_ROWS(NV)                                                      \\
        switch (m - i < 6 ? m - i : 6) {                                              \\
        case 6: kp_att_tile_f(6, NV, k, ai, a_rs, a_cs, bj, ldb, cij, ldc, accumulate); break; \\
        case 5: kp_att_tile_f(5, NV, k, ai, a_rs, a_cs, bj, ldb, cij, ldc, accumulate); break; \\
        case 4: kp_att_tile_f(4, NV, k, ai, a_rs, a_cs, bj, ldb, cij, ldc, accumulate); break; \\
        case 3: kp_att_tile_f(3, NV, k, ai, a_rs, a_cs, bj, ldb, cij, ldc, accumulate); break; \\
        case 2: kp_att_tile_f(2, NV, k, ai, a_rs, a_cs, bj, ldb, cij, ldc, accumulate); break; \\
        default: kp_att_tile_f(1, NV, k, ai, a_rs, a_cs, bj, ldb, cij, ldc, accumulate); break; \\
        }

    /* c (m, n) (+)= a (m, k) b (k, n), float32: panels of 16 columns, then one of 8,
       then single columns; 6-row tiles down each panel (the panel of b stays in L1).
       The single columns sum in p order too, so every element has the same sums. */
    KP_CLONES static void kp_att_gemm_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                        const float *a, Py_ssize_t a_rs, Py_ssize_t a_cs,
                                        const float *b, Py_ssize_t ldb, float *c,
                                        Py_ssize_t ldc, int accumulate) {
        Py_ssize_t i, j = 0, p;
        for (; j + 16 <= n; j += 16)
            for (i = 0; i < m; i += 6) {
                const float *ai = a + i * a_rs, *bj = b + j;
                float *cij = c + i * ldc + j;
                KP_ATT_TILE_ROWS(2)
            }
        for (; j + 8 <= n; j += 8)
            for (i = 0; i < m; i += 6) {
                const float *ai = a + i * a_rs, *bj = b + j;
                float *cij = c + i * ldc + j;
                KP_ATT_TILE_ROWS(1)
            }
        for (; j < n; j++)
            for (i = 0; i < m; i++) {
                float s = 0.0f;
                for (p = 0; p < k; p++) s += a[i * a_rs + p * a_cs] * b[p * ldb + j];
                c[i * ldc + j] = accumulate ? s + c[i * ldc + j] : s;
            }
    }

    /* src (rows, cols), rows lds apart -> dst (cols, rows), rows ldd apart */
    KP_CLONES static void kp_att_transpose_f(const float *src, Py_ssize_t rows,
                                             Py_ssize_t cols, Py_ssize_t lds, float *dst,
                                             Py_ssize_t ldd) {
        Py_ssize_t r, c, r0, c0;
        /* 8 x 8 blocks: each source line is read once for eight destination lines */
        for (r0 = 0; r0 < rows; r0 += 8)
            for (c0 = 0; c0 < cols; c0 += 8)
                for (c = c0; c < c0 + 8 && c < cols; c++)
                    for (r = r0; r < r0 + 8 && r < rows; r++)
                        dst[c * ldd + r] = src[r * lds + c];
    }

    typedef int kp_att_v8i __attribute__((vector_size(32)));

    /* the larger of a and b per lane (b where a is NaN) */
    static inline kp_att_v8f kp_att_vmax(kp_att_v8f a, kp_att_v8f b) {
        kp_att_v8i gt = a > b;
        return (kp_att_v8f)(((kp_att_v8i)a & gt) | ((kp_att_v8i)b & ~gt));
    }

    /* keys k0 .. k0 + nk - 1 that query i = k0 + diag + r sees: all, or (causal) j <= i */
    static inline Py_ssize_t kp_att_unmasked(Py_ssize_t diag, Py_ssize_t r, Py_ssize_t nk,
                                             int causal) {
        Py_ssize_t cnt = diag + r + 1;
        if (!causal) return nk;
        return cnt < 0 ? 0 : cnt > nk ? nk : cnt;
    }

    /* exp of 8 floats that are <= 0 or -inf (scores less their row's max): kp_expf's
       steps (_common.pxi: Cody-Waite reduction, Cephes' polynomial, same bits) on a
       vector, without its overflow branch; 0 below -86.64, NaN stays NaN.  Written on
       vectors so that the exps, their sum and the stores run in one loop. */
    static inline kp_att_v8f kp_att_exp_nonpos(kp_att_v8f x) {
        const kp_att_v8f zero = {0};
        kp_att_v8i under = x < (zero - 86.64f);
        kp_att_v8f xc = (kp_att_v8f)(((kp_att_v8i)(zero - 86.64f) & under) | ((kp_att_v8i)x & ~under));
        kp_att_v8f t = xc * 1.44269504088896341f + 12582912.0f;
        kp_att_v8f kf = t - 12582912.0f;
        kp_att_v8f r = xc - kf * 0.693359375f;
        kp_att_v8f p = zero + 1.9875691500E-4f, y;
        kp_att_v8i bits;
        r = r - kf * -2.12194440e-4f;
        p = p * r + 1.3981999507E-3f;
        p = p * r + 8.3334519073E-3f;
        p = p * r + 4.1665795894E-2f;
        p = p * r + 1.6666665459E-1f;
        p = p * r + 5.0000001201E-1f;
        p = p * (r * r) + r + 1.0f;
        bits = ((kp_att_v8i)t + 126) << 23;
        y = (p * (kp_att_v8f)bits) * 2.0f;
        return (kp_att_v8f)((kp_att_v8i)y & ~under);
    }

    /* The online softmax over one block of keys, for a block of queries.  s (mq, nk),
       rows ld apart: raw scores -> p = exp(s scale - m_new), 0 where masked (the first
       kp_att_unmasked of row r are not); per row r: m[r] (running max of the scaled
       scores, -inf at first) and l[r] (running sum of exps) updated, and o's row r
       (dv, rows ldo apart), its accumulator, rescaled by exp(m_old - m_new) (0 at the
       first block, where o is 0).  Two passes over a row: scale and max, then exp, sum
       and store. */
    KP_CLONES static void kp_att_online_f(float *s, Py_ssize_t mq, Py_ssize_t nk, Py_ssize_t ld,
                                          Py_ssize_t diag, int causal, float scale, float *m,
                                          double *l, float *o, Py_ssize_t ldo, Py_ssize_t dv) {
        Py_ssize_t r, j, cnt, jv;
        for (r = 0; r < mq; r++) {
            float *sr = s + r * ld, *orow = o + r * ldo, mx = -INFINITY, mn, alpha, sum;
            kp_att_v8f vm = (kp_att_v8f){0} - INFINITY, acc = {0}, v, mnv;
            cnt = kp_att_unmasked(diag, r, nk, causal);
            jv = cnt / 8 * 8;
            if (cnt == 0) {  /* masked throughout: p = 0, m and l unchanged */
                for (j = 0; j < nk; j++) sr[j] = 0.0f;
                continue;
            }
            for (j = 0; j < jv; j += 8) {
                memcpy(&v, sr + j, 32);
                v *= scale;
                memcpy(sr + j, &v, 32);
                vm = kp_att_vmax(v, vm);
            }
            for (; j < cnt; j++) {
                sr[j] *= scale;
                mx = kp_select_f(sr[j] > mx, sr[j], mx);
            }
            for (j = 0; j < 8; j++) mx = kp_select_f(vm[j] > mx, vm[j], mx);
            mn = kp_select_f(m[r] > mx, m[r], mx);
            mnv = (kp_att_v8f){0} + mn;
            for (j = 0; j < jv; j += 8) {
                memcpy(&v, sr + j, 32);
                v = kp_att_exp_nonpos(v - mnv);
                acc += v;
                memcpy(sr + j, &v, 32);
            }
            sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
            for (; j < cnt; j++) {
                sr[j] = kp_expf(sr[j] - mn);
                sum += sr[j];
            }
            for (; j < nk; j++) sr[j] = 0.0f;
            if (mn != m[r]) {
                alpha = kp_expf(m[r] - mn);
                for (j = 0; j < dv; j++) orow[j] *= alpha;
                l[r] *= (double)alpha;
                m[r] = mn;
            }
            l[r] += (double)sum;
        }
    }

    /* s (mq, nk) raw scores, rows ld apart -> p = exp(s scale - lse[r]), 0 where masked:
       the probabilities again, from the forward's log-sum-exp */
    KP_CLONES static void kp_att_probs_f(float *s, Py_ssize_t mq, Py_ssize_t nk, Py_ssize_t ld,
                                         Py_ssize_t diag, int causal, float scale,
                                         const float *lse) {
        Py_ssize_t r, j, cnt;
        for (r = 0; r < mq; r++) {
            float *sr = s + r * ld, shift = lse[r];
            cnt = kp_att_unmasked(diag, r, nk, causal);
            for (j = 0; j < cnt; j++) sr[j] = kp_expf(sr[j] * scale - shift);
            for (j = cnt; j < nk; j++) sr[j] = 0.0f;
        }
    }

    /* p, dp (m, n), rows ld apart; delta (m,) -> dp = dS = p (dp - delta) scale */
    KP_CLONES static void kp_att_dscores_f(const float *p, float *dp, Py_ssize_t m,
                                           Py_ssize_t n, Py_ssize_t ld, const float *delta,
                                           float scale) {
        Py_ssize_t i, j;
        for (i = 0; i < m; i++)
            for (j = 0; j < n; j++)
                dp[i * ld + j] = p[i * ld + j] * (dp[i * ld + j] - delta[i]) * scale;
    }
    """
    void kp_att_gemm_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a, Py_ssize_t a_rs,
                       Py_ssize_t a_cs, const float* b, Py_ssize_t ldb, float* c, Py_ssize_t ldc,
                       int accumulate) noexcept nogil
    void kp_att_transpose_f(const float* src, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t lds,
                            float* dst, Py_ssize_t ldd) noexcept nogil
    Py_ssize_t kp_att_unmasked(Py_ssize_t diag, Py_ssize_t r, Py_ssize_t nk,
                               int causal) noexcept nogil
    void kp_att_online_f(float* s, Py_ssize_t mq, Py_ssize_t nk, Py_ssize_t ld, Py_ssize_t diag,
                         int causal, float scale, float* m, double* l, float* o, Py_ssize_t ldo,
                         Py_ssize_t dv) noexcept nogil
    void kp_att_probs_f(float* s, Py_ssize_t mq, Py_ssize_t nk, Py_ssize_t ld, Py_ssize_t diag,
                        int causal, float scale, const float* lse) noexcept nogil
    void kp_att_dscores_f(const float* p, float* dp, Py_ssize_t m, Py_ssize_t n, Py_ssize_t ld,
                          const float* delta, float scale) noexcept nogil


# --- the tile routines, float32 in C above, float64 here --------------------------------

cdef void _gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a, Py_ssize_t a_rs,
                Py_ssize_t a_cs, const floating* b, Py_ssize_t ldb, floating* c, Py_ssize_t ldc,
                bint accumulate) noexcept nogil:
    # c (m, n) (+)= a (m, k) b (k, n); a[r, p] at a[r * a_rs + p * a_cs]; b, c row-major
    # (ldb, ldc).  Each element's sum has one order wherever the tile lies: float32 adds
    # its products in p order, then c's old value; float64 starts from c's old value.
    cdef Py_ssize_t i, j, p
    cdef floating av
    cdef floating* ci
    if floating is float:
        kp_att_gemm_f(m, n, k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate)
    else:
        for i in range(m):
            ci = c + i * ldc
            if not accumulate:
                for j in range(n):
                    ci[j] = 0
            for p in range(k):
                av = a[i * a_rs + p * a_cs]
                for j in range(n):
                    ci[j] += av * b[p * ldb + j]


cdef void _transpose(const floating* src, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t lds,
                     floating* dst, Py_ssize_t ldd) noexcept nogil:
    # src (rows, cols) -> dst (cols, rows)
    cdef Py_ssize_t r, c
    if floating is float:
        kp_att_transpose_f(src, rows, cols, lds, dst, ldd)
    else:
        for r in range(rows):
            for c in range(cols):
                dst[c * ldd + r] = src[r * lds + c]


cdef void _online(floating* s, Py_ssize_t mq, Py_ssize_t nk, Py_ssize_t ld, Py_ssize_t diag,
                  bint causal, floating scale, floating* m, double* l, floating* o,
                  Py_ssize_t ldo, Py_ssize_t dv) noexcept nogil:
    # see kp_att_online_f
    cdef Py_ssize_t r, j, cnt
    cdef floating mx, mn, alpha
    cdef floating* sr
    cdef double total
    if floating is float:
        kp_att_online_f(s, mq, nk, ld, diag, causal, scale, m, l, o, ldo, dv)
    else:
        for r in range(mq):
            sr = s + r * ld
            cnt = kp_att_unmasked(diag, r, nk, causal)
            if cnt == 0:  # masked throughout: p = 0, m and l unchanged
                for j in range(nk):
                    sr[j] = 0
                continue
            for j in range(cnt):
                sr[j] = sr[j] * scale
            mx = sr[0]
            for j in range(1, cnt):
                if sr[j] > mx:
                    mx = sr[j]
            mn = m[r] if m[r] > mx else mx
            total = 0
            for j in range(cnt):
                sr[j] = exp(sr[j] - mn)
                total += sr[j]
            for j in range(cnt, nk):
                sr[j] = 0
            if mn != m[r]:
                alpha = exp(m[r] - mn)
                for j in range(dv):
                    o[r * ldo + j] = o[r * ldo + j] * alpha
                l[r] = l[r] * alpha
                m[r] = mn
            l[r] = l[r] + total


cdef void _probs(floating* s, Py_ssize_t mq, Py_ssize_t nk, Py_ssize_t ld, Py_ssize_t diag,
                 bint causal, floating scale, const floating* lse) noexcept nogil:
    # see kp_att_probs_f
    cdef Py_ssize_t r, j, cnt
    if floating is float:
        kp_att_probs_f(s, mq, nk, ld, diag, causal, scale, lse)
    else:
        for r in range(mq):
            cnt = kp_att_unmasked(diag, r, nk, causal)
            for j in range(cnt):
                s[r * ld + j] = exp(s[r * ld + j] * scale - lse[r])
            for j in range(cnt, nk):
                s[r * ld + j] = 0


cdef void _dscores(const floating* p, floating* dp, Py_ssize_t m, Py_ssize_t n, Py_ssize_t ld,
                   const floating* delta, floating scale) noexcept nogil:
    # see kp_att_dscores_f
    cdef Py_ssize_t i, j
    if floating is float:
        kp_att_dscores_f(p, dp, m, n, ld, delta, scale)
    else:
        for i in range(m):
            for j in range(n):
                dp[i * ld + j] = p[i * ld + j] * (dp[i * ld + j] - delta[i]) * scale


cdef void _transpose_blocks(const floating* x, Py_ssize_t length, Py_ssize_t width,
                           Py_ssize_t blk, floating* xt) noexcept nogil:
    # one head's x (length, width), rows blk * BK .. + BK -> xt (width, BK): the block
    # transposed, so a product with it runs along contiguous keys (columns past the
    # last key of a short block are left unset: no product reads them)
    _transpose(x + blk * BK * width, min(<Py_ssize_t>BK, length - blk * BK), width, width,
               xt, BK)


# --- forward ------------------------------------------------------------------------------

cdef void _forward_block(const floating* q, const floating* kt, const floating* v,
                         floating* out, floating* lse, Py_ssize_t lq, Py_ssize_t lk,
                         Py_ssize_t d, Py_ssize_t dv, Py_ssize_t q0, bint causal,
                         floating scale, floating* s) noexcept nogil:
    # one head: q (lq, d), kt (key blocks, d, BK) its keys transposed by blocks, v (lk, dv)
    # -> out (lq, dv), lse (lq,), rows q0 .. q0 + BQ of them (this task's)
    # s (BQ, BK): the thread's tile of scores
    cdef Py_ssize_t mq = min(<Py_ssize_t>BQ, lq - q0)
    cdef Py_ssize_t kend = min(lk, q0 + mq) if causal else lk
    cdef Py_ssize_t k0, nk, r, j
    cdef floating* o = out + q0 * dv
    cdef floating m[BQ]
    cdef double l[BQ]
    cdef floating inv
    memset(o, 0, mq * dv * sizeof(floating))
    for r in range(mq):
        m[r] = -INFINITY
        l[r] = 0
    k0 = 0
    while k0 < kend:  # causal: key blocks above the diagonal are never visited
        nk = min(<Py_ssize_t>BK, lk - k0)
        _gemm(mq, nk, d, q + q0 * d, d, 1, kt + (k0 // BK) * d * BK, BK, s, BK, False)
        _online(s, mq, nk, BK, q0 - k0, causal, scale, m, l, o, dv, dv)
        _gemm(mq, dv, nk, s, BK, 1, v + k0 * dv, dv, o, dv, True)
        k0 = k0 + BK
    for r in range(mq):
        inv = <floating>(1.0 / l[r])
        for j in range(dv):
            o[r * dv + j] = o[r * dv + j] * inv
        lse[q0 + r] = <floating>(m[r] + log(l[r]))


def attention_forward(const floating[:, :, ::1] q, const floating[:, :, ::1] k,
                      const floating[:, :, ::1] v, bint causal, double scale,
                      floating[:, :, ::1] out, floating[:, ::1] lse):
    # q (BH, Lq, D), k (BH, Lk, D), v (BH, Lk, Dv) -> out (BH, Lq, Dv), lse (BH, Lq)
    # IN q, k, v (heads flattened), causal, scale; OUT out, lse
    cdef Py_ssize_t bh = q.shape[0], lq = q.shape[1], d = q.shape[2]
    cdef Py_ssize_t lk = k.shape[1], dv = v.shape[2]
    cdef Py_ssize_t nqb = (lq + BQ - 1) // BQ, nkb = (lk + BK - 1) // BK
    cdef Py_ssize_t task, h, blk
    cdef int nthreads = kp_max_threads()
    dtype = np.float32 if floating is float else np.float64
    # the keys transposed by blocks, once (a copy of k, not per query block)
    cdef floating[:, :, :, ::1] kt = np.empty((bh, nkb, d, BK), dtype=dtype)
    cdef floating[:, ::1] tiles = np.empty((nthreads, BQ * BK), dtype=dtype)
    cdef floating* s = NULL
    cdef bint threads = nthreads > 1 and bh * lq * lk * (d + dv) > ATT_PARALLEL_MIN_WORK
    with nogil, parallel(num_threads=nthreads, use_threads_if=threads):
        s = &tiles[threadid(), 0]
        for task in prange(bh * nkb, schedule="static"):
            _transpose_blocks(&k[task // nkb, 0, 0], lk, d, task % nkb, &kt[task // nkb, task % nkb, 0, 0])
        for task in prange(bh * nqb, schedule="dynamic", chunksize=1):
            h = task // nqb
            blk = nqb - 1 - task % nqb  # causal: the longest blocks (most keys) first
            _forward_block(&q[h, 0, 0], &kt[h, 0, 0, 0], &v[h, 0, 0], &out[h, 0, 0], &lse[h, 0],
                           lq, lk, d, dv, blk * BQ, causal, <floating>scale, s)


# --- backward -----------------------------------------------------------------------------

cdef void _backward_key_block(const floating* q, const floating* k, const floating* kt,
                              const floating* vt, const floating* dout, const floating* lse,
                              const floating* delta, floating* dq, floating* dk,
                              floating* dvo, Py_ssize_t lq, Py_ssize_t lk, Py_ssize_t d,
                              Py_ssize_t dv, Py_ssize_t k0, bint causal, floating scale,
                              floating* work) noexcept nogil:
    # one head, keys k0 .. k0 + BK -> their rows of dk (lk, d) and dv (lk, dv); kt (d, BK)
    # and vt (dv, BK): this key block of k and v transposed; when dq != NULL also
    # dq (lq, d) += dS K_blk for every query block (the caller runs the head's key
    # blocks in order on one thread)
    # work (the thread's): s (BQ, BK) | dp (BQ, BK)
    cdef Py_ssize_t nk = min(<Py_ssize_t>BK, lk - k0)
    cdef Py_ssize_t q0, mq
    cdef floating* s = work
    cdef floating* dp = work + BQ * BK
    memset(dk + k0 * d, 0, nk * d * sizeof(floating))
    memset(dvo + k0 * dv, 0, nk * dv * sizeof(floating))
    # causal: queries before k0 see none of these keys; the first block reaching them
    q0 = (k0 // BQ) * BQ if causal else 0
    while q0 < lq:
        mq = min(<Py_ssize_t>BQ, lq - q0)
        _gemm(mq, nk, d, q + q0 * d, d, 1, kt, BK, s, BK, False)
        _probs(s, mq, nk, BK, q0 - k0, causal, scale, lse + q0)
        # dV += P^T dO: P read transposed in place
        _gemm(nk, dv, mq, s, 1, BK, dout + q0 * dv, dv, dvo + k0 * dv, dv, True)
        _gemm(mq, nk, dv, dout + q0 * dv, dv, 1, vt, BK, dp, BK, False)
        _dscores(s, dp, mq, nk, BK, delta + q0, scale)
        # dK += dS^T Q
        _gemm(nk, d, mq, dp, 1, BK, q + q0 * d, d, dk + k0 * d, d, True)
        if dq != NULL:
            _gemm(mq, d, nk, dp, BK, 1, k + k0 * d, d, dq + q0 * d, d, True)
        q0 = q0 + BQ


cdef void _backward_query_block(const floating* q, const floating* k, const floating* kt,
                                const floating* vt, const floating* dout, const floating* lse,
                                const floating* delta, floating* dq, Py_ssize_t lq,
                                Py_ssize_t lk, Py_ssize_t d, Py_ssize_t dv, Py_ssize_t q0,
                                bint causal, floating scale, floating* work) noexcept nogil:
    # one head, queries q0 .. q0 + BQ -> their rows of dq = sum over key blocks, in
    # order, of dS K_blk, dS recomputed as _backward_key_block computes it; kt (key
    # blocks, d, BK), vt (key blocks, dv, BK): k and v transposed by blocks
    cdef Py_ssize_t mq = min(<Py_ssize_t>BQ, lq - q0)
    cdef Py_ssize_t kend = min(lk, q0 + mq) if causal else lk
    cdef Py_ssize_t k0, nk
    cdef floating* s = work
    cdef floating* dp = work + BQ * BK
    memset(dq + q0 * d, 0, mq * d * sizeof(floating))
    k0 = 0
    while k0 < kend:
        nk = min(<Py_ssize_t>BK, lk - k0)
        _gemm(mq, nk, d, q + q0 * d, d, 1, kt + (k0 // BK) * d * BK, BK, s, BK, False)
        _probs(s, mq, nk, BK, q0 - k0, causal, scale, lse + q0)
        _gemm(mq, nk, dv, dout + q0 * dv, dv, 1, vt + (k0 // BK) * dv * BK, BK, dp, BK, False)
        _dscores(s, dp, mq, nk, BK, delta + q0, scale)
        _gemm(mq, d, nk, dp, BK, 1, k + k0 * d, d, dq + q0 * d, d, True)
        k0 = k0 + BK


def attention_backward(const floating[:, :, ::1] q, const floating[:, :, ::1] k,
                       const floating[:, :, ::1] v, const floating[:, :, ::1] out,
                       const floating[:, ::1] lse, const floating[:, :, ::1] dout,
                       bint causal, double scale, floating[:, :, ::1] dq,
                       floating[:, :, ::1] dk, floating[:, :, ::1] dv):
    # q, dq (BH, Lq, D), k, dk (BH, Lk, D), v, dv (BH, Lk, Dv), out, dout (BH, Lq, Dv),
    # lse (BH, Lq)
    # IN q, k, v, out, lse (the forward's), dout, causal, scale; OUT dq, dk, dv
    cdef Py_ssize_t bh = q.shape[0], lq = q.shape[1], d = q.shape[2]
    cdef Py_ssize_t lk = k.shape[1], dvd = v.shape[2]
    cdef Py_ssize_t nqb = (lq + BQ - 1) // BQ, nkb = (lk + BK - 1) // BK
    cdef Py_ssize_t task, h, i, j, blk
    cdef int nthreads = kp_max_threads()
    dtype = np.float32 if floating is float else np.float64
    # k and v transposed by key blocks, once; delta; the threads' tiles
    cdef floating[:, :, :, ::1] kt = np.empty((bh, nkb, d, BK), dtype=dtype)
    cdef floating[:, :, :, ::1] vt = np.empty((bh, nkb, dvd, BK), dtype=dtype)
    cdef floating[:, ::1] delta = np.empty((bh, lq), dtype=dtype)
    cdef floating[:, ::1] tiles = np.empty((nthreads, 2 * BQ * BK), dtype=dtype)
    cdef floating* work = NULL
    cdef double acc
    cdef bint threads = nthreads > 1 and bh * lq * lk * (d + dvd) > ATT_PARALLEL_MIN_WORK
    # one task per head when the heads alone keep the threads busy (at most a quarter of
    # a thread's share idle at the end); else key blocks, then query blocks for dq
    cdef bint per_head = not threads or bh >= 4 * nthreads
    with nogil, parallel(num_threads=nthreads, use_threads_if=threads):
        work = &tiles[threadid(), 0]
        for task in prange(bh * nkb, schedule="static"):
            h = task // nkb
            blk = task % nkb
            _transpose_blocks(&k[h, 0, 0], lk, d, blk, &kt[h, blk, 0, 0])
            _transpose_blocks(&v[h, 0, 0], lk, dvd, blk, &vt[h, blk, 0, 0])
        # delta_i = sum_d dout[i, d] out[i, d], in double
        for task in prange(bh * lq, schedule="static"):
            h = task // lq
            i = task % lq
            acc = 0
            for j in range(dvd):
                acc = acc + dout[h, i, j] * out[h, i, j]
            delta[h, i] = <floating>acc
        if per_head:
            for h in prange(bh, schedule="dynamic", chunksize=1):
                memset(&dq[h, 0, 0], 0, lq * d * sizeof(floating))
                for blk in range(nkb):
                    _backward_key_block(&q[h, 0, 0], &k[h, 0, 0], &kt[h, blk, 0, 0],
                                        &vt[h, blk, 0, 0], &dout[h, 0, 0], &lse[h, 0],
                                        &delta[h, 0], &dq[h, 0, 0], &dk[h, 0, 0], &dv[h, 0, 0],
                                        lq, lk, d, dvd, blk * BK, causal, <floating>scale, work)
        else:
            # causal: key blocks in order of their start hold the most query blocks first
            for task in prange(bh * nkb, schedule="dynamic", chunksize=1):
                h = task // nkb
                blk = task % nkb
                _backward_key_block(&q[h, 0, 0], &k[h, 0, 0], &kt[h, blk, 0, 0], &vt[h, blk, 0, 0],
                                    &dout[h, 0, 0], &lse[h, 0], &delta[h, 0], NULL, &dk[h, 0, 0],
                                    &dv[h, 0, 0], lq, lk, d, dvd, blk * BK, causal,
                                    <floating>scale, work)
            for task in prange(bh * nqb, schedule="dynamic", chunksize=1):
                h = task // nqb
                blk = nqb - 1 - task % nqb
                _backward_query_block(&q[h, 0, 0], &k[h, 0, 0], &kt[h, 0, 0, 0], &vt[h, 0, 0, 0],
                                      &dout[h, 0, 0], &lse[h, 0], &delta[h, 0], &dq[h, 0, 0],
                                      lq, lk, d, dvd, blk * BQ, causal, <floating>scale, work)
