# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Elementwise activations for the ``cython`` backend, forward and backward.

Every kernel takes flat C-contiguous arrays (the loader flattens any shape with
``reshape(-1)``); a ``prange`` over elements splits them into contiguous static chunks,
each element written by one thread.  float32 sigmoid, tanh and GELU go by blocks of BLOCK
elements to the CPU-specific loops of _common.pxi and of this file (AVX-512/AVX2 where
the CPU has them).  Small arrays run on the calling thread.
"""

include "_common.pxi"

from cython.parallel cimport prange


def relu_forward(const floating[::1] x, floating[::1] out):
    # x (n,) -> out (n,) = max(x, 0)
    # IN x; OUT out
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
        out[i] = _relu(x[i])


def relu_backward(const floating[::1] x, const floating[::1] dy, floating[::1] out):
    # x (n,), dy (n,) -> out (n,) = dy where x > 0 else 0 (0 at x == 0, as PyTorch)
    # IN x: the forward input; dy: upstream gradient; OUT out
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating g
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
        # dy loaded unconditionally: a load under the condition keeps the C compiler from
        # turning the branch into a vector select (random signs, 256x512 float32: 205 -> 12 us)
        g = dy[i]
        out[i] = g if x[i] > 0 else 0


cdef enum:
    # Elements per task of the float32 block loops (CPU-specific, in _common.pxi).
    BLOCK = 4096


def sigmoid_forward(const floating[::1] x, floating[::1] out):
    # x (n,) -> out (n,) = 1 / (1 + exp(-x)), branch-stable (see _sigmoid)
    # IN x; OUT out
    cdef Py_ssize_t i, b, n = x.shape[0]
    cdef Py_ssize_t nblocks = (n + BLOCK - 1) // BLOCK
    if floating is float:
        for b in prange(nblocks, nogil=True, schedule="static",
                        use_threads_if=n > PARALLEL_MIN_WORK):
            kp_sigmoid_block_f(&x[b * BLOCK], &out[b * BLOCK], min(<Py_ssize_t>BLOCK, n - b * BLOCK))
    else:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
            out[i] = _sigmoid(x[i])


def sigmoid_backward(const floating[::1] y, const floating[::1] dy, floating[::1] out):
    # y (n,), dy (n,) -> out (n,) = dy * y * (1 - y): d sigmoid / dx from the output
    # IN y: the forward output; dy: upstream gradient; OUT out
    cdef Py_ssize_t i, n = y.shape[0]
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
        out[i] = dy[i] * y[i] * (1 - y[i])


def tanh_forward(const floating[::1] x, floating[::1] out):
    # x (n,) -> out (n,) = tanh(x)
    # IN x; OUT out
    cdef Py_ssize_t i, b, n = x.shape[0]
    cdef Py_ssize_t nblocks = (n + BLOCK - 1) // BLOCK
    if floating is float:
        for b in prange(nblocks, nogil=True, schedule="static",
                        use_threads_if=n > PARALLEL_MIN_WORK):
            kp_tanh_block_f(&x[b * BLOCK], &out[b * BLOCK], min(<Py_ssize_t>BLOCK, n - b * BLOCK))
    else:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
            out[i] = _tanh(x[i])


def tanh_backward(const floating[::1] y, const floating[::1] dy, floating[::1] out):
    # y (n,), dy (n,) -> out (n,) = dy * (1 - y^2): d tanh / dx from the output
    # IN y: the forward output; dy: upstream gradient; OUT out
    cdef Py_ssize_t i, n = y.shape[0]
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
        out[i] = dy[i] * (1 - y[i] * y[i])


# GELU, as torch.nn.functional.gelu: x Phi(x), Phi the standard normal CDF, exactly
# ("none", through erfc) or by GPT-2's tanh approximation ("tanh"); each derivative sits
# next to its formula.  The exact form uses Phi(x) = erfc(-x / sqrt 2) / 2, not
# (1 + erf(x / sqrt 2)) / 2, which cancels for x << 0 (float64: libm's erfc; float32: a
# vectorisable erfc, below).  The tanh form is written
# 0.5 x (1 + tanh(u)) = x s with s = sigmoid(2u) = 1 / (1 + exp(-2u)): one exp, no
# cancellation in 1 + tanh(u) for x << 0, and exp(-2u) = inf gives s = 0 (not NaN).
# At x = -inf both give -inf * 0 = NaN, as PyTorch and the reference.
cdef extern from *:
    """
    #define KP_SQRT_HALF 0.7071067811865476      /* 1 / sqrt(2) */
    #define KP_INV_SQRT_2PI 0.3989422804014327   /* 1 / sqrt(2 pi) */
    #define KP_SQRT_2_OVER_PI 0.7978845608028654 /* sqrt(2 / pi) */
    #define KP_GELU_CUBIC 0.044715

    static inline float kp_gelu_tanh_f(float x) {
        /* x s, s = sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) */
        float u2 = (float)(2 * KP_SQRT_2_OVER_PI) * (x + (float)KP_GELU_CUBIC * x * x * x);
        return x * (1.0f / (1.0f + kp_expf(-u2)));
    }
    static inline float kp_gelu_tanh_grad_f(float x) {
        /* d/dx x s = s + x s (1 - s) 2u',  2u' = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2) */
        float u2 = (float)(2 * KP_SQRT_2_OVER_PI) * (x + (float)KP_GELU_CUBIC * x * x * x);
        float du2 = (float)(2 * KP_SQRT_2_OVER_PI) * (1.0f + (float)(3 * KP_GELU_CUBIC) * x * x);
        float s = 1.0f / (1.0f + kp_expf(-u2));
        return s + x * s * (1.0f - s) * du2;
    }
    static inline double kp_gelu_tanh_d(double x) {
        double u2 = 2 * KP_SQRT_2_OVER_PI * (x + KP_GELU_CUBIC * x * x * x);
        return x * (1.0 / (1.0 + exp(-u2)));
    }
    static inline double kp_gelu_tanh_grad_d(double x) {
        double u2 = 2 * KP_SQRT_2_OVER_PI * (x + KP_GELU_CUBIC * x * x * x);
        double du2 = 2 * KP_SQRT_2_OVER_PI * (1.0 + 3 * KP_GELU_CUBIC * x * x);
        double s = 1.0 / (1.0 + exp(-u2));
        return s + x * s * (1.0 - s) * du2;
    }
    /* exact: x Phi(x); d/dx = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
       float32, vectorisable (glibc's erfcf is a call per element, 5x slower than
       PyTorch's): with t = |x| / sqrt 2, erfc(t) = exp(-t^2) g(t), g(t) = erfc(t) exp(t^2)
       smooth and bounded, a degree-10 polynomial in u = 1 / (1 + 0.3275911 t) (the
       variable of Abramowitz and Stegun 7.1.26) fitted to g for relative error (scipy's
       erfcx, t in [0, 10]: 1.4e-9 in double, 5e-7 evaluated in float32).
       exp(-t^2) = exp(-x^2 / 2) from x split in a 12-bit head and its tail (the head's
       square is exact, the tail's term small: a cubic for its exp), so the tail of Phi
       keeps its relative accuracy where x^2 rounded would not.  |x| is clamped at 20
       (Phi(-20) = 0 and Phi(20) = 1 in float32), so +-inf give +-inf * {0, 1}: NaN at
       -inf, as the reference.  Phi(x) within 1e-6 relative of erfc in double. */
    static inline float kp_gelu_erfcx_f(float t) {
        /* g(t) = erfc(t) exp(t^2), t >= 0 */
        float u = 1.0f / (1.0f + 0.3275911f * t);
        float g = 6.459831446e-02f;
        g = g * u - 3.638637066e-01f;
        g = g * u + 7.485808730e-01f;
        g = g * u - 7.418922782e-01f;
        g = g * u + 6.758302450e-01f;
        g = g * u - 1.621164680e-01f;
        g = g * u + 2.542841733e-01f;
        g = g * u + 1.517037302e-01f;
        g = g * u + 1.883542687e-01f;
        g = g * u + 1.845083684e-01f;
        g = g * u + 1.250783316e-05f;
        return g;
    }
    /* exp(-x^2 / 2) for |x| <= 20: x = head + tail, head with 12 significant bits */
    static inline float kp_gelu_exp_half_sq_f(float x) {
        uint32_t bits;
        float head, tail, h, l;
        memcpy(&bits, &x, 4);
        bits &= 0xFFFFF000u;
        memcpy(&head, &bits, 4);
        tail = x - head;
        h = 0.5f * (head * head);            /* exact */
        l = (head + 0.5f * tail) * tail;     /* x^2 / 2 - h, |l| < x^2 / 2048 */
        return kp_expf(-h) * (1.0f - l * (1.0f - l * (0.5f - l * (1.0f / 6.0f))));
    }
    /* Phi(x) -> returned, and *e = exp(-x^2 / 2) (of x clamped to +-20) */
    static inline float kp_gelu_cdf_f(float x, float *e) {
        float ax = fabsf(x);
        float axc = kp_select_f(isless(ax, 20.0f), ax, 20.0f);  /* NaN -> 20 too */
        float ex = kp_gelu_exp_half_sq_f(axc);
        float tail = 0.5f * ex * kp_gelu_erfcx_f(axc * (float)KP_SQRT_HALF);  /* Phi(-|x|) */
        *e = ex;
        return kp_select_f(x > 0.0f, 1.0f - tail, tail);
    }
    static inline float kp_gelu_f(float x) {
        float e;
        return x * kp_gelu_cdf_f(x, &e);
    }
    static inline float kp_gelu_grad_f(float x) {
        float e, cdf = kp_gelu_cdf_f(x, &e);
        return cdf + x * ((float)KP_INV_SQRT_2PI * e);
    }
    static inline double kp_gelu_d(double x) {
        return x * (0.5 * erfc(-x * KP_SQRT_HALF));
    }
    static inline double kp_gelu_grad_d(double x) {
        return 0.5 * erfc(-x * KP_SQRT_HALF) + x * (KP_INV_SQRT_2PI * exp(-0.5 * x * x));
    }

    /* float32 GELU over a block, compiled per CPU level: every step vectorises */
    KP_CLONES static void kp_gelu_tanh_block_f(const float *x, float *out, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) out[j] = kp_gelu_tanh_f(x[j]);
    }
    KP_CLONES static void kp_gelu_block_f(const float *x, float *out, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) out[j] = kp_gelu_f(x[j]);
    }
    KP_CLONES static void kp_gelu_backward_block_f(const float *x, const float *dy, float *out,
                                                   Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) out[j] = dy[j] * kp_gelu_grad_f(x[j]);
    }
    KP_CLONES static void kp_gelu_tanh_backward_block_f(const float *x, const float *dy,
                                                        float *out, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) out[j] = dy[j] * kp_gelu_tanh_grad_f(x[j]);
    }
    """
    float kp_gelu_tanh_f(float x) noexcept nogil
    float kp_gelu_tanh_grad_f(float x) noexcept nogil
    double kp_gelu_tanh_d(double x) noexcept nogil
    double kp_gelu_tanh_grad_d(double x) noexcept nogil
    float kp_gelu_f(float x) noexcept nogil
    float kp_gelu_grad_f(float x) noexcept nogil
    double kp_gelu_d(double x) noexcept nogil
    double kp_gelu_grad_d(double x) noexcept nogil
    void kp_gelu_tanh_block_f(const float* x, float* out, Py_ssize_t n) noexcept nogil
    void kp_gelu_block_f(const float* x, float* out, Py_ssize_t n) noexcept nogil
    void kp_gelu_backward_block_f(const float* x, const float* dy, float* out,
                                  Py_ssize_t n) noexcept nogil
    void kp_gelu_tanh_backward_block_f(const float* x, const float* dy, float* out,
                                       Py_ssize_t n) noexcept nogil


cdef inline floating _gelu(floating x, bint tanh_form) noexcept nogil:
    if floating is float:
        return kp_gelu_tanh_f(x) if tanh_form else kp_gelu_f(x)
    else:
        return kp_gelu_tanh_d(x) if tanh_form else kp_gelu_d(x)


cdef inline floating _gelu_grad(floating x, bint tanh_form) noexcept nogil:
    if floating is float:
        return kp_gelu_tanh_grad_f(x) if tanh_form else kp_gelu_grad_f(x)
    else:
        return kp_gelu_tanh_grad_d(x) if tanh_form else kp_gelu_grad_d(x)


def gelu_forward(const floating[::1] x, floating[::1] out, bint tanh_form):
    # x (n,) -> out (n,) = x Phi(x) (tanh_form: GPT-2's approximation)
    # IN x; tanh_form: approximate == "tanh"; OUT out
    cdef Py_ssize_t i, b, n = x.shape[0]
    cdef Py_ssize_t nblocks = (n + BLOCK - 1) // BLOCK
    if floating is float:
        for b in prange(nblocks, nogil=True, schedule="static",
                        use_threads_if=n > PARALLEL_MIN_WORK):
            if tanh_form:
                kp_gelu_tanh_block_f(&x[b * BLOCK], &out[b * BLOCK], min(<Py_ssize_t>BLOCK, n - b * BLOCK))
            else:
                kp_gelu_block_f(&x[b * BLOCK], &out[b * BLOCK], min(<Py_ssize_t>BLOCK, n - b * BLOCK))
    else:
        # float64: erfc is a libm call per element: threads from a quarter of the usual size
        for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK // 4):
            out[i] = _gelu(x[i], tanh_form)


def gelu_backward(const floating[::1] x, const floating[::1] dy, floating[::1] out,
                  bint tanh_form):
    # x (n,), dy (n,) -> out (n,) = dy * d gelu / dx, from the forward input x
    # IN x: the forward input; dy: upstream gradient; tanh_form; OUT out
    cdef Py_ssize_t i, b, n = x.shape[0]
    cdef Py_ssize_t nblocks = (n + BLOCK - 1) // BLOCK
    if floating is float:
        for b in prange(nblocks, nogil=True, schedule="static",
                        use_threads_if=n > PARALLEL_MIN_WORK):
            if tanh_form:
                kp_gelu_tanh_backward_block_f(&x[b * BLOCK], &dy[b * BLOCK], &out[b * BLOCK],
                                              min(<Py_ssize_t>BLOCK, n - b * BLOCK))
            else:
                kp_gelu_backward_block_f(&x[b * BLOCK], &dy[b * BLOCK], &out[b * BLOCK],
                                         min(<Py_ssize_t>BLOCK, n - b * BLOCK))
    else:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK // 4):
            out[i] = dy[i] * _gelu_grad(x[i], tanh_form)
