# Shared by every Cython kernel module (``include "_common.pxi"``): the C helpers of
# pyx/kp_common.h declared for Cython, and their fused-type wrappers below.  Everything
# here is C: no Python objects, callable without the GIL.

from cython cimport floating
from libc.math cimport exp, fabs, fabsf, log, tanh

# The C is pyx/kp_common.h: the thread count (OpenMP's, 1 without it), branch-free
# selects, float32 exp, log and tanh that GCC vectorises, and the float32 row loops
# compiled per CPU (target_clones), each with the measurements behind it.
cdef extern from "kp_common.h":
    int kp_max_threads() noexcept nogil
    float kp_select_f(int c, float a, float b) noexcept nogil
    double kp_select_d(int c, double a, double b) noexcept nogil
    float kp_expf(float x) noexcept nogil
    float kp_logf(float x) noexcept nogil
    float kp_tanhf(float x) noexcept nogil
    float kp_row_max_f(const float* x, Py_ssize_t n) noexcept nogil
    double kp_sum_f(const float* x, Py_ssize_t n) noexcept nogil
    double kp_sq_diff_sum_f(const float* a, const float* b, Py_ssize_t n) noexcept nogil
    void kp_mse_grad_f(const float* a, const float* b, float div, float* out,
                       Py_ssize_t n) noexcept nogil
    double kp_sum_exp_f(const float* x, float m, float* out, Py_ssize_t n) noexcept nogil
    double kp_dot_shift_f(const float* w, const float* x, float m, Py_ssize_t n) noexcept nogil
    void kp_exp_axpy_f(const float* y, const float* dy, float t, float* out,
                       Py_ssize_t n) noexcept nogil
    void kp_shift2_f(const float* x, float m, float lse, float* out, Py_ssize_t n) noexcept nogil
    void kp_scale_f(float* x, float a, Py_ssize_t n) noexcept nogil
    void kp_ce_grad_f(float* g, float inv_s, float ft, float fs, float fw, const float* w,
                      Py_ssize_t n) noexcept nogil
    void kp_sigmoid_block_f(const float* x, float* out, Py_ssize_t n) noexcept nogil
    void kp_tanh_block_f(const float* x, float* out, Py_ssize_t n) noexcept nogil

include "_grain.pxi"

# Activation codes shared with kernprop/kernels/cython/matmul.py.
cdef enum:
    ACT_NONE = 0
    ACT_RELU = 1
    ACT_SIGMOID = 2
    ACT_TANH = 3


cdef inline floating _exp(floating x) noexcept nogil:
    # float32: the vectorisable kp_expf (within 1 ulp, as NumPy's float32 exp); float64:
    # libm's exp, correctly rounded in practice, as the float64 reference expects.
    if floating is float:
        return kp_expf(x)
    else:
        return exp(x)


cdef inline floating _select(bint c, floating a, floating b) noexcept nogil:
    # c ? a : b without a branch
    if floating is float:
        return kp_select_f(c, a, b)
    else:
        return kp_select_d(c, a, b)


cdef inline floating _abs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating _relu(floating x) noexcept nogil:
    # NaN passes through (NaN < 0 is false), as np.maximum(x, 0) does.
    return 0 if x < 0 else x


cdef inline floating _sigmoid(floating x) noexcept nogil:
    # exp only ever sees -|x| <= 0, so it cannot overflow for large |x|; the sign picks
    # 1 / (1 + e) or e / (1 + e) by a select, not a branch (random signs mispredict).
    # (one is typed: a literal 1 here would make Cython compute the float32 case in double)
    cdef floating one = 1
    cdef floating e = _exp(-_abs(x))
    cdef floating r = one / (one + e)
    return _select(x >= 0, r, e * r)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return kp_tanhf(x)
    else:
        return tanh(x)


cdef inline floating _activate(floating x, int activation) noexcept nogil:
    if activation == ACT_RELU:
        return _relu(x)
    if activation == ACT_SIGMOID:
        return _sigmoid(x)
    if activation == ACT_TANH:
        return _tanh(x)
    return x


cdef inline floating _row_max(const floating* x, Py_ssize_t n) noexcept nogil:
    # x (n,) -> max.  Four independent running maxima break the loop-carried dependency
    # (max is exact, so the split cannot change the result).  A NaN entry is skipped
    # here but still makes its exp, the row sum, and so every output NaN, as np.max.
    cdef floating m0 = x[0], m1 = x[0], m2 = x[0], m3 = x[0]
    cdef Py_ssize_t j = 0
    if floating is float:
        m0 = kp_row_max_f(x, n)
    else:
        while j + 4 <= n:
            m0 = x[j] if x[j] > m0 else m0
            m1 = x[j + 1] if x[j + 1] > m1 else m1
            m2 = x[j + 2] if x[j + 2] > m2 else m2
            m3 = x[j + 3] if x[j + 3] > m3 else m3
            j = j + 4
        while j < n:
            m0 = x[j] if x[j] > m0 else m0
            j = j + 1
        m0 = m1 if m1 > m0 else m0
        m2 = m3 if m3 > m2 else m2
        m0 = m2 if m2 > m0 else m0
    return m0


cdef enum:
    # Elements per block of exps: the block sits in L1 between the exp loop (which
    # vectorises) and the summing loop (which, in double and in order, does not).
    EXP_BLOCK = 256


cdef inline double _sum4(const floating* x, Py_ssize_t n) noexcept nogil:
    # x (n,) -> sum in double, four running sums to break the add latency chain (the
    # order is fixed by n alone, so the result never depends on threads)
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t j = 0
    if floating is float:
        s0 = kp_sum_f(x, n)
    else:
        while j + 4 <= n:
            s0 += x[j]
            s1 += x[j + 1]
            s2 += x[j + 2]
            s3 += x[j + 3]
            j = j + 4
        while j < n:
            s0 += x[j]
            j = j + 1
    return (s0 + s1) + (s2 + s3)


cdef inline double _sum_exp(const floating* x, floating m, Py_ssize_t n,
                            floating* out) noexcept nogil:
    # x (n,) -> sum_j exp(x[j] - m) in double; when out != NULL, out (n,) = the exps.
    # The exps go to a stack block first, so out may be x itself (computed in place).
    cdef floating buf[EXP_BLOCK]
    cdef double s = 0
    cdef Py_ssize_t j0 = 0, j, size
    if floating is float:
        s = kp_sum_exp_f(x, m, out, n)
        j0 = n
    while j0 < n:
        size = min(<Py_ssize_t>EXP_BLOCK, n - j0)
        for j in range(size):
            buf[j] = _exp(x[j0 + j] - m)
        s += _sum4(buf, size)
        if out != NULL:
            for j in range(size):
                out[j0 + j] = buf[j]
        j0 = j0 + EXP_BLOCK
    return s


cdef inline double _dot_shift(const floating* w, const floating* x, floating m,
                              Py_ssize_t n) noexcept nogil:
    # w, x (n,) -> sum_j w[j] (x[j] - m) in double: the label-smoothing term
    cdef double s = 0
    cdef Py_ssize_t j
    if floating is float:
        s = kp_dot_shift_f(w, x, m, n)
    else:
        for j in range(n):
            s += w[j] * (x[j] - m)
    return s
