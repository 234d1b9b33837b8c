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
# (1 + erf(x / sqrt 2)) / 2, which cancels for x << 0.  The tanh form is written
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
    /* exact: x Phi(x); d/dx = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) */
    static inline float kp_gelu_f(float x) {
        return x * (0.5f * erfcf(-x * (float)KP_SQRT_HALF));
    }
    static inline float kp_gelu_grad_f(float x) {
        return 0.5f * erfcf(-x * (float)KP_SQRT_HALF)
               + x * ((float)KP_INV_SQRT_2PI * kp_expf(-0.5f * x * x));
    }
    static inline double kp_gelu_d(double x) {
        return x * (0.5 * erfc(-x * KP_SQRT_HALF));
    }
    static inline double kp_gelu_grad_d(double x) {
        return 0.5 * erfc(-x * KP_SQRT_HALF) + x * (KP_INV_SQRT_2PI * exp(-0.5 * x * x));
    }

    /* float32 tanh-GELU over a block, compiled per CPU level: kp_expf vectorises */
    KP_CLONES static void kp_gelu_tanh_block_f(const float *x, float *out, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) out[j] = kp_gelu_tanh_f(x[j]);
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
    if floating is float and tanh_form:
        for b in prange(nblocks, nogil=True, schedule="static",
                        use_threads_if=n > PARALLEL_MIN_WORK):
            kp_gelu_tanh_block_f(&x[b * BLOCK], &out[b * BLOCK], min(<Py_ssize_t>BLOCK, n - b * BLOCK))
    else:
        # erfc is a libm call per element: threads from a quarter of the usual size
        for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK // 4):
            out[i] = _gelu(x[i], tanh_form)


def gelu_backward(const floating[::1] x, const floating[::1] dy, floating[::1] out,
                  bint tanh_form):
    # x (n,), dy (n,) -> out (n,) = dy * d gelu / dx, from the forward input x
    # IN x: the forward input; dy: upstream gradient; tanh_form; OUT out
    cdef Py_ssize_t i, b, n = x.shape[0]
    cdef Py_ssize_t nblocks = (n + BLOCK - 1) // BLOCK
    if floating is float and tanh_form:
        for b in prange(nblocks, nogil=True, schedule="static",
                        use_threads_if=n > PARALLEL_MIN_WORK):
            kp_gelu_tanh_backward_block_f(&x[b * BLOCK], &dy[b * BLOCK], &out[b * BLOCK],
                                          min(<Py_ssize_t>BLOCK, n - b * BLOCK))
    else:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK // 4):
            out[i] = dy[i] * _gelu_grad(x[i], tanh_form)
