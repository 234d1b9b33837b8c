/* Shared by every Cython kernel module (declared for Cython in _common.pxi, which each
   pyx/<family>.pyx includes; parallel.pyx declares the OpenMP part): the thread
   count, the scalar math the kernels inline, and the float32 row loops compiled per CPU
   (target_clones).  Plain C: no Python objects, callable without the GIL. */
#ifndef KP_COMMON_H
#define KP_COMMON_H

#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* _OPENMP is defined exactly when the C compiler builds with -fopenmp (see parallel.pyx);
   without it every prange runs on the calling thread and the count is 1. */
#ifdef _OPENMP
#include <omp.h>
static inline int kp_openmp_enabled(void) { return 1; }
static inline int kp_max_threads(void) { return omp_get_max_threads(); }
static inline void kp_set_num_threads(int n) { omp_set_num_threads(n); }
#else
static inline int kp_openmp_enabled(void) { return 0; }
static inline int kp_max_threads(void) { return 1; }
static inline void kp_set_num_threads(int n) { (void)n; }
#endif

/* c ? a : b as bit masks: GCC compiles a float ternary to a branch, which mispredicts
   half the time on random signs (measured: sigmoid 2.4x slower than with the masks). */
static inline float kp_select_f(int c, float a, float b) {
    uint32_t ua, ub, m = -(uint32_t)(c != 0), r;
    float out;
    memcpy(&ua, &a, 4); memcpy(&ub, &b, 4);
    r = (ua & m) | (ub & ~m);
    memcpy(&out, &r, 4);
    return out;
}
static inline double kp_select_d(int c, double a, double b) {
    uint64_t ua, ub, m = -(uint64_t)(c != 0), r;
    double out;
    memcpy(&ua, &a, 8); memcpy(&ub, &b, 8);
    r = (ua & m) | (ub & ~m);
    memcpy(&out, &r, 8);
    return out;
}

/* float32 exp that GCC vectorises.  glibc's expf is a call no loop can vectorise, so a
   row of exps ran one at a time; this is plain arithmetic, bit operations and
   branch-free selects (a ternary on floats is not if-converted under the default
   -ftrapping-math, which blocks vectorisation).  exp(x) = 2^k exp(r), k = round(x log2 e)
   by the 1.5 * 2^23 rounding trick, r = x - k ln 2 in two parts (Cody-Waite), exp(r) by
   the degree-6 polynomial of Cephes' expf (S. L. Moshier).  Measured: under 1 ulp from
   exp in double over [-86.6, 88.7]; exact 0 for x < -86.64 (glibc gives subnormals down
   to -103.9, differences below 1e-37); inf above 88.72; NaN stays NaN. */
static inline float kp_expf(float x) {
    const float hi = 88.72283935546875f, lo = -86.64f;
    int over = isgreater(x, hi), under = isless(x, lo);
    float xc = kp_select_f(over, hi, kp_select_f(under, lo, x));
    float t = xc * 1.44269504088896341f + 12582912.0f;
    float kf = t - 12582912.0f;
    float r = xc - kf * 0.693359375f;
    float p = 1.9875691500E-4f;
    uint32_t bits;
    float scale, y;
    r = r - kf * -2.12194440e-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * (r * r) + r + 1.0f;
    /* t's low mantissa bits hold k: 2^(k - 1) as bits (exponent k + 126 stays in
       [1, 254] for x in [lo, hi]), times 2 */
    memcpy(&bits, &t, 4);
    bits = (bits + 126u) << 23;
    memcpy(&scale, &bits, 4);
    y = (p * scale) * 2.0f;
    return kp_select_f(over, INFINITY, kp_select_f(under, 0.0f, y));
}

/* float32 log of a softmax row sum, vectorisable (glibc's log is a call per row:
   at 10 classes a third of the time).  A sum of exps whose max term is exp(0) = 1
   is in [1, C], finite and normal, or NaN (a NaN or all -inf row), which passes
   through; nothing else may be given.  x = 2^e m, m in [sqrt(1/2), sqrt(2)), log m by Cephes' logf polynomial
   (S. L. Moshier), e ln 2 in two parts: within 2 ulp of log in double. */
static inline float kp_logf(float x) {
    uint32_t u;
    float m, f, z, y, fe;
    int e, big;
    memcpy(&u, &x, 4);
    e = (int)((u >> 23) & 0xFFu) - 127;
    u = (u & 0x007FFFFFu) | 0x3F800000u;
    memcpy(&m, &u, 4);
    big = m > 1.41421356f;
    m = kp_select_f(big, m * 0.5f, m);
    fe = (float)(e + big);
    f = m - 1.0f;
    z = f * f;
    y = 7.0376836292E-2f;
    y = y * f - 1.1514610310E-1f;
    y = y * f + 1.1676998740E-1f;
    y = y * f - 1.2420140846E-1f;
    y = y * f + 1.4249322787E-1f;
    y = y * f - 1.6668057665E-1f;
    y = y * f + 2.0000714765E-1f;
    y = y * f - 2.4999993993E-1f;
    y = y * f + 3.3333331174E-1f;
    y = y * f * z;
    y += -2.12194440e-4f * fe;
    y += -0.5f * z;
    y = f + y;
    y += 0.693359375f * fe;
    return kp_select_f(isnan(x), x, y);
}

/* float32 tanh that GCC vectorises, from kp_expf: Cephes' tanhf polynomial below
   |x| = 0.625, else (1 - e) / (1 + e) with e = exp(-2|x|) <= 0.29 (no cancellation, no
   overflow), signed like x; both computed, one selected.  Measured: within 1.5 ulp of
   tanh in double; +-inf give +-1, NaN stays NaN.  5x faster than glibc's tanhf. */
static inline float kp_tanhf(float x) {
    float ax = fabsf(x), z = x * x;
    float p = ((((-5.70498872745E-3f * z + 2.06390887954E-2f) * z - 5.37397155531E-2f) * z
               + 1.33314422036E-1f) * z - 3.33332819422E-1f) * z * x + x;
    float e = kp_expf(-2.0f * ax);
    float t = copysignf((1.0f - e) / (1.0f + e), x);
    return kp_select_f(isless(ax, 0.625f), p, t);
}

/* float32 row and array loops, compiled three times by GCC's target_clones (x86-64-v4:
   AVX-512, v3: AVX2+FMA, and the baseline) with the best picked by the loader for the
   CPU at hand.  setup.py builds for the baseline, whose 4-lane SSE vectors left softmax
   3x slower than Numba's native AVX-512 code; these give 16 lanes where the CPU has
   them.  Sums run in double over 8 fixed lanes: their order depends on n alone, never
   on threads.  Other compilers and platforms get the baseline version only. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__linux__)
#define KP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), unused))
#else
#define KP_CLONES __attribute__((unused))
#endif
#define KP_BLOCK 256
#define KP_LANES 8

static inline double kp_sum_lanes(const double *acc) {
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* x (n,) -> max: 16 lanes of running maxima kept as one GCC vector (one zmm, two
   ymm or four xmm by clone), merged by bit-mask select; the same loop over a float
   m[16] array is not vectorised by GCC 12.  A NaN is never selected, but its exp
   makes the row NaN downstream anyway.  Inlined where used. */
typedef float kp_vmax_f __attribute__((vector_size(64)));
typedef int kp_vmask __attribute__((vector_size(64)));
#define KP_VMAX(m, v) ((kp_vmax_f)(((kp_vmask)(v) & ((v) > (m))) | ((kp_vmask)(m) & ~((v) > (m)))))
static inline __attribute__((always_inline)) float kp_max16_f(const float *x, Py_ssize_t n,
                                                             float start) {
    /* four running maxima over 64 elements a step: one chain of compare and blend
       per 16 elements was latency-bound (a third of a 1000-class log-softmax) */
    kp_vmax_f v0, v1, v2, v3, m = (kp_vmax_f){0} + start, m1 = m, m2 = m, m3 = m;
    float lanes[16], out = start;
    Py_ssize_t j, l;
    for (j = 0; j + 64 <= n; j += 64) {
        memcpy(&v0, x + j, sizeof(v0));
        memcpy(&v1, x + j + 16, sizeof(v1));
        memcpy(&v2, x + j + 32, sizeof(v2));
        memcpy(&v3, x + j + 48, sizeof(v3));
        m = KP_VMAX(m, v0);
        m1 = KP_VMAX(m1, v1);
        m2 = KP_VMAX(m2, v2);
        m3 = KP_VMAX(m3, v3);
    }
    m = KP_VMAX(m, m1);
    m2 = KP_VMAX(m2, m3);
    m = KP_VMAX(m, m2);
    for (; j + 16 <= n; j += 16) {
        memcpy(&v0, x + j, sizeof(v0));
        m = KP_VMAX(m, v0);
    }
    /* the 16 lanes merged in halves (16 -> 8 -> 4 -> 2), not one by one: a chain
       of 16 selects cost more than the whole row at 128 classes */
    {
        typedef float v8f __attribute__((vector_size(32)));
        typedef int v8i __attribute__((vector_size(32)));
        typedef float v4f __attribute__((vector_size(16)));
        typedef int v4i __attribute__((vector_size(16)));
        v8f a8, b8;
        v4f a4, b4;
        memcpy(&a8, &m, 32);
        memcpy(&b8, (const char *)&m + 32, 32);
        a8 = (v8f)(((v8i)b8 & (b8 > a8)) | ((v8i)a8 & ~(b8 > a8)));
        memcpy(&a4, &a8, 16);
        memcpy(&b4, (const char *)&a8 + 16, 16);
        a4 = (v4f)(((v4i)b4 & (b4 > a4)) | ((v4i)a4 & ~(b4 > a4)));
        memcpy(lanes, &a4, 16);
    }
    for (l = 0; l < 4; l++) out = kp_select_f(isgreater(lanes[l], out), lanes[l], out);
    for (; j < n; j++) out = kp_select_f(isgreater(x[j], out), x[j], out);
    return out;
}

KP_CLONES static float kp_row_max_f(const float *x, Py_ssize_t n) {
    return kp_max16_f(x, n, x[0]);
}

/* x (n,) -> sum in double */
KP_CLONES static double kp_sum_f(const float *x, Py_ssize_t n) {
    double acc[KP_LANES] = {0};
    Py_ssize_t j, l;
    for (j = 0; j + KP_LANES <= n; j += KP_LANES)
        for (l = 0; l < KP_LANES; l++) acc[l] += (double)x[j + l];
    for (; j < n; j++) acc[0] += x[j];
    return kp_sum_lanes(acc);
}

/* a, b (n,) -> sum of (a - b)^2, each square in float (as the reference), summed
   in double */
KP_CLONES static double kp_sq_diff_sum_f(const float *a, const float *b, Py_ssize_t n) {
    double acc[KP_LANES] = {0};
    Py_ssize_t j, l;
    for (j = 0; j + KP_LANES <= n; j += KP_LANES)
        for (l = 0; l < KP_LANES; l++) {
            float d = a[j + l] - b[j + l];
            acc[l] += (double)(d * d);
        }
    for (; j < n; j++) {
        float d = a[j] - b[j];
        acc[0] += (double)(d * d);
    }
    return kp_sum_lanes(acc);
}

/* a, b (n,) -> out (n,) = 2 (a - b) / div, divided as the reference divides */
KP_CLONES static void kp_mse_grad_f(const float *a, const float *b, float div, float *out,
                                    Py_ssize_t n) {
    Py_ssize_t j;
    for (j = 0; j < n; j++) out[j] = (2.0f * (a[j] - b[j])) / div;
}

/* x (n,) -> sum_j exp(x[j] - m) in double; out (n,) = the exps when out != NULL.
   The exps go through a stack block, so out may be x itself. */
KP_CLONES static double kp_sum_exp_f(const float *x, float m, float *out, Py_ssize_t n) {
    float buf[KP_BLOCK];
    double acc[KP_LANES] = {0};
    Py_ssize_t j0, j, l, size;
    if (out != NULL && out != x) {
        /* a separate output: the exps go straight there, no copy through buf */
        for (j0 = 0; j0 < n; j0 += KP_BLOCK) {
            float *o = out + j0;
            size = n - j0 < KP_BLOCK ? n - j0 : KP_BLOCK;
            for (j = 0; j < size; j++) o[j] = kp_expf(x[j0 + j] - m);
            for (j = 0; j + KP_LANES <= size; j += KP_LANES)
                for (l = 0; l < KP_LANES; l++) acc[l] += (double)o[j + l];
            for (; j < size; j++) acc[0] += o[j];
        }
        return kp_sum_lanes(acc);
    }
    for (j0 = 0; j0 < n; j0 += KP_BLOCK) {
        size = n - j0 < KP_BLOCK ? n - j0 : KP_BLOCK;
        for (j = 0; j < size; j++) buf[j] = kp_expf(x[j0 + j] - m);
        for (j = 0; j + KP_LANES <= size; j += KP_LANES)
            for (l = 0; l < KP_LANES; l++) acc[l] += (double)buf[j + l];
        for (; j < size; j++) acc[0] += buf[j];
        if (out != NULL)
            for (j = 0; j < size; j++) out[j0 + j] = buf[j];
    }
    return kp_sum_lanes(acc);
}

/* w, x (n,) -> sum_j w[j] (x[j] - m) in double (the label-smoothing term) */
KP_CLONES static double kp_dot_shift_f(const float *w, const float *x, float m, Py_ssize_t n) {
    double acc[KP_LANES] = {0};
    Py_ssize_t j, l;
    for (j = 0; j + KP_LANES <= n; j += KP_LANES)
        for (l = 0; l < KP_LANES; l++) acc[l] += (double)w[j + l] * (double)(x[j + l] - m);
    for (; j < n; j++) acc[0] += (double)w[j] * (double)(x[j] - m);
    return kp_sum_lanes(acc);
}

/* x (n,) -> out (n,) = (x - m) - lse: log-softmax, shifted before the log-sum-exp
   is taken off so a large max loses nothing to rounding */
KP_CLONES static void kp_shift2_f(const float *x, float m, float lse, float *out, Py_ssize_t n) {
    Py_ssize_t j;
    for (j = 0; j < n; j++) out[j] = (x[j] - m) - lse;
}

/* x (n,) -> x (n,) * a, in place */
KP_CLONES static void kp_scale_f(float *x, float a, Py_ssize_t n) {
    Py_ssize_t j;
    for (j = 0; j < n; j++) x[j] = x[j] * a;
}

/* g (n,) holding exp(x - m) -> g = ft p + fs (fw p - w) with p = g inv_s: the
   cross-entropy gradient but for the label's -ft (w NULL: no smoothing, fs unused) */
KP_CLONES static void kp_ce_grad_f(float *g, float inv_s, float ft, float fs, float fw,
                                   const float *w, Py_ssize_t n) {
    Py_ssize_t j;
    float p;
    if (w == NULL) {
        for (j = 0; j < n; j++) g[j] = ft * (g[j] * inv_s);
    } else {
        for (j = 0; j < n; j++) {
            p = g[j] * inv_s;
            g[j] = ft * p + fs * (fw * p - w[j]);
        }
    }
}

/* y (n,) log-probabilities, dy (n,), t = sum(dy) -> out (n,) = dy - exp(y) t */
KP_CLONES static void kp_exp_axpy_f(const float *y, const float *dy, float t, float *out,
                                    Py_ssize_t n) {
    Py_ssize_t j;
    for (j = 0; j < n; j++) out[j] = dy[j] - kp_expf(y[j]) * t;
}

KP_CLONES static void kp_sigmoid_block_f(const float *x, float *out, Py_ssize_t n) {
    Py_ssize_t j;
    for (j = 0; j < n; j++) {
        float e = kp_expf(-fabsf(x[j]));
        float r = 1.0f / (1.0f + e);
        out[j] = kp_select_f(x[j] >= 0, r, e * r);
    }
}

KP_CLONES static void kp_tanh_block_f(const float *x, float *out, Py_ssize_t n) {
    Py_ssize_t j;
    for (j = 0; j < n; j++) out[j] = kp_tanhf(x[j]);
}

/* float32 bias + activation over one row of C (matmul.pyx's epilogue), on the CPU's
   widest vectors: relu as a bit-mask select (a float ternary compiles to a branch,
   which mispredicts on random signs: linear 256x784x512 with relu took 1.5x the time
   without it), sigmoid and tanh by the vectorised block kernels.  In place. */
KP_CLONES static void kp_bias_act_f(float *row, const float *bias, Py_ssize_t n, int act) {
    Py_ssize_t j;
    if (bias != NULL)
        for (j = 0; j < n; j++) row[j] += bias[j];
    if (act == 1) {
        /* NaN stays NaN (NaN < 0 is false), as np.maximum(x, 0) */
        for (j = 0; j < n; j++) row[j] = kp_select_f(row[j] < 0, 0.0f, row[j]);
    } else if (act == 2) {
        kp_sigmoid_block_f(row, row, n);
    } else if (act == 3) {
        kp_tanh_block_f(row, row, n);
    }
}

/* float32 Adam over a block (optimizers.pyx), compiled per CPU level: the baseline
   build's 4-lane SSE loop ran at 0.4-0.6x the Numba kernel; these match it. */
KP_CLONES static void kp_adam_block_f(float *param, const float *grad, float *exp_avg,
                                      float *exp_avg_sq, Py_ssize_t n, float step_size,
                                      float beta1, float beta2, float one_b1, float one_b2,
                                      float sqrt_bc2, float eps, float decay, float wd,
                                      int decay_weights, int decay_grad) {
    Py_ssize_t j;
    for (j = 0; j < n; j++) {
        float p = param[j], g = grad[j];
        if (decay_weights) p = p * decay;
        if (decay_grad) g = g + wd * p;
        float m = exp_avg[j] * beta1 + one_b1 * g;
        float v = exp_avg_sq[j] * beta2 + one_b2 * g * g;
        exp_avg[j] = m;
        exp_avg_sq[j] = v;
        param[j] = p - step_size * m / (sqrtf(v) / sqrt_bc2 + eps);
    }
}

#endif /* KP_COMMON_H */
