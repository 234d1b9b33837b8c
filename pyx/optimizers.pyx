# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Optimizer steps for the ``cython`` backend, with torch.optim semantics, in place.

Every array is flat and C-contiguous (the loader passes ``reshape(-1)`` views, so the
updates land in the caller's arrays); a ``prange`` over elements gives each element to
one thread.  The arithmetic follows the reference (kernprop/kernels/reference/
optimizers.py) operation by operation and in the same precision, hyper-parameters
rounded to the array's dtype where NumPy rounds them, so float32 results agree with it
to the last bit or so rather than merely to a tolerance; Adam's denominator, float64 in
the reference, is in the array's dtype here as in the Numba kernel.
"""

include "_common.pxi"

from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf


# float32 Adam over a block, compiled per CPU level (pyx/kp_common.h)
cdef extern from "kp_common.h":
    void kp_adam_block_f(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                         Py_ssize_t n, float step_size, float beta1, float beta2, float one_b1,
                         float one_b2, float sqrt_bc2, float eps, float decay, float wd,
                         int decay_weights, int decay_grad) noexcept nogil


cdef enum:
    ADAM_BLOCK = 4096  # elements per task of the float32 block loop


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


def sgd(floating[::1] param, const floating[::1] grad, double lr, double weight_decay):
    # param (n,), grad (n,) -> param (n,) updated: param -= lr * (grad + wd * param)
    # IN grad; IN/OUT param
    cdef Py_ssize_t i, n = param.shape[0]
    cdef floating flr = <floating>lr, fwd = <floating>weight_decay
    cdef bint decay = weight_decay != 0
    cdef floating g
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
        g = grad[i]
        if decay:  # skipped at 0, as the reference: 0 * inf would be NaN
            g = g + fwd * param[i]
        param[i] = param[i] - flr * g


def sgd_momentum(floating[::1] param, const floating[::1] grad, floating[::1] velocity,
                 double lr, double momentum, bint nesterov, double weight_decay):
    # param, grad, velocity (n,) -> param, velocity (n,) updated
    # velocity = momentum * velocity + g with g = grad + wd * param (dampening 0); the
    # step is velocity, or g + momentum * velocity with nesterov
    # IN grad; IN/OUT param, velocity
    cdef Py_ssize_t i, n = param.shape[0]
    cdef floating flr = <floating>lr, fwd = <floating>weight_decay
    cdef floating fmom = <floating>momentum
    cdef bint decay = weight_decay != 0
    cdef floating g, v
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
        g = grad[i]
        if decay:
            g = g + fwd * param[i]
        v = velocity[i] * fmom + g
        velocity[i] = v
        if nesterov:
            g = g + fmom * v
        else:
            g = v
        param[i] = param[i] - flr * g


def adam(floating[::1] param, const floating[::1] grad, floating[::1] exp_avg,
         floating[::1] exp_avg_sq, long step, double lr, double beta1, double beta2,
         double eps, double weight_decay, bint decoupled):
    # param, grad, exp_avg, exp_avg_sq (n,) -> param, exp_avg, exp_avg_sq updated
    # IN grad; step: 1-based count of this update; decoupled: AdamW's weight decay
    # IN/OUT param, exp_avg (first moment), exp_avg_sq (second moment)
    cdef Py_ssize_t i, n = param.shape[0]
    cdef double bias_correction1 = 1 - beta1 ** step
    cdef double sqrt_bc2 = sqrt(1 - beta2 ** step)
    cdef floating decay = <floating>(1 - lr * weight_decay)
    cdef floating fwd = <floating>weight_decay
    cdef floating fb1 = <floating>beta1, fb2 = <floating>beta2
    cdef floating one_b1 = <floating>(1 - beta1), one_b2 = <floating>(1 - beta2)
    cdef floating step_size = <floating>(lr / bias_correction1)
    cdef bint decay_weights = decoupled and weight_decay != 0
    cdef bint decay_grad = not decoupled and weight_decay != 0
    cdef floating f_sqrt_bc2 = <floating>sqrt_bc2, f_eps = <floating>eps
    cdef floating p, g, m, v
    cdef Py_ssize_t b, lo, nblocks = (n + ADAM_BLOCK - 1) // ADAM_BLOCK
    if floating is float:
        for b in prange(nblocks, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
            lo = b * ADAM_BLOCK
            kp_adam_block_f(&param[lo], &grad[lo], &exp_avg[lo], &exp_avg_sq[lo],
                            min(<Py_ssize_t>ADAM_BLOCK, n - lo), step_size, fb1, fb2, one_b1, one_b2,
                            f_sqrt_bc2, f_eps, decay, fwd, decay_weights, decay_grad)
        return
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n > PARALLEL_MIN_WORK):
        p = param[i]
        if decay_weights:  # AdamW: decay the weights, not the gradient
            p = p * decay
        g = grad[i]
        if decay_grad:  # Adam: L2 penalty added to the gradient
            g = g + fwd * p
        m = exp_avg[i] * fb1 + one_b1 * g
        v = exp_avg_sq[i] * fb2 + one_b2 * g * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        # All in the parameters' dtype, as the numba kernel: a float64 denominator
        # (the reference's is) halves the vector width and doubles the cost of the
        # division, for a difference far inside float32 rounding of the update.
        param[i] = p - step_size * m / (_sqrt(v) / f_sqrt_bc2 + f_eps)
