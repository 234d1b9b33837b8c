# Row-blocked float32 kernels for short rows (C < SHORT_ROW = 128 classes), included by
# softmax.pyx and losses.pyx after _common.pxi: the C is pyx/kp_short_rows.h, with the
# measurements behind the bound and the block sizes.

from libc.stdint cimport int64_t

cdef extern from "kp_short_rows.h":
    Py_ssize_t SHORT_ROW "KP_SHORT_ROW"
    Py_ssize_t kp_short_block_rows(Py_ssize_t c) noexcept nogil
    void kp_short_log_softmax_f(const float* x, float* out, Py_ssize_t rows,
                                Py_ssize_t c) noexcept nogil
    void kp_short_softmax_f(const float* x, float* out, Py_ssize_t rows,
                            Py_ssize_t c) noexcept nogil
    void kp_short_log_softmax_backward_f(const float* y, const float* dy, float* out,
                                         Py_ssize_t rows, Py_ssize_t c) noexcept nogil
    void kp_short_ce_f(const float* x, const int64_t* labels, Py_ssize_t rows, Py_ssize_t c,
                       int64_t ignore_index, const float* w, double wsum, double eps,
                       double inv_denom, double* loss, float* g) noexcept nogil
