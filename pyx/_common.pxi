# Shared by every Cython kernel module (``include "_common.pxi"``): the thread count
# and the scalar math the kernels inline.  Everything here is C: no Python objects,
# callable without the GIL.

from cython cimport floating
from libc.math cimport exp, expf, log, tanh, tanhf

# _OPENMP is defined exactly when the C compiler builds with -fopenmp (see parallel.pyx);
# without it every prange runs on the calling thread and the count is 1.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int kp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int kp_max_threads(void) { return 1; }
    #endif
    """
    int kp_max_threads() noexcept nogil

# Below this many elements an OpenMP region costs more than it saves (a fork/join is
# a few microseconds; 32k elements of elementwise work take about that long).
cdef enum:
    PARALLEL_MIN_WORK = 32768

# Activation codes shared with kernprop/kernels/cython/matmul.py.
cdef enum:
    ACT_NONE = 0
    ACT_RELU = 1
    ACT_SIGMOID = 2
    ACT_TANH = 3


cdef inline floating _exp(floating x) noexcept nogil:
    # float32 uses expf: half the latency of exp and within 1 ulp, as NumPy's float32 exp.
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _relu(floating x) noexcept nogil:
    # NaN passes through (NaN < 0 is false), as np.maximum(x, 0) does.
    return 0 if x < 0 else x


cdef inline floating _sigmoid(floating x) noexcept nogil:
    # exp only ever sees an argument <= 0, so it cannot overflow for large |x|.
    cdef floating e
    if x >= 0:
        return 1 / (1 + _exp(-x))
    e = _exp(x)
    return e / (1 + e)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
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
