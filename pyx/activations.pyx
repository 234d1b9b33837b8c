# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Elementwise activations for the ``cython`` backend, forward and backward.

Every kernel takes flat C-contiguous arrays (the loader flattens any shape with
``reshape(-1)``); a ``prange`` over elements splits them into contiguous static chunks,
each element written by one thread.  float32 sigmoid and tanh go by blocks of BLOCK
elements to the CPU-specific loops of _common.pxi (AVX-512/AVX2 where the CPU has
them).  Small arrays run on the calling thread.
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
