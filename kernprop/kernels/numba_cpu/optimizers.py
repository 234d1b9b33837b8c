"""Numba CPU optimizer updates: one pass over each parameter array, in place.

Each step reads and writes every element once, blocks of _BLOCK elements split over
threads.  The loops run zero-based over slices with every scalar in the parameters'
dtype, so they vectorise: ``inspect_asm`` of the float32 kernels shows ``vfmadd...ps``
on zmm registers and no float64 (``...pd``) arithmetic.
"""

import numpy as np
from numba import prange

from ._jit import helper, kernel, sized

_BLOCK = 16384


@helper
def sgd_update(p, g_in, vel, lr, momentum, nesterov, weight_decay):
    # p, g_in, vel (n,) slices, p and vel updated in place (vel unused when momentum == 0);
    # scalars in the parameters' dtype.  The kernel below runs it per block; the fused
    # training step (mlp_step) over its whole flat parameter buffer.
    if momentum != 0:
        for i in range(p.shape[0]):
            g = g_in[i] + weight_decay * p[i]
            v = momentum * vel[i] + g
            vel[i] = v
            p[i] -= lr * (g + momentum * v if nesterov else v)
    else:
        for i in range(p.shape[0]):
            p[i] -= lr * (g_in[i] + weight_decay * p[i])


@helper
def adam_update(ps, gs, ms, vs, step_size, beta1, beta2, eps, weight_decay, decoupled,
                bias_correction2_sqrt, one_minus_beta1, one_minus_beta2, decay):
    # ps, gs, ms, vs (n,) slices (param, grad, exp_avg, exp_avg_sq), updated in place;
    # step_size = lr / (1 - beta1**step); scalars in the parameters' dtype.  Used as
    # sgd_update is.
    for i in range(ps.shape[0]):
        p = ps[i]
        g = gs[i]
        if decoupled:
            p = p * decay
        else:
            g = g + weight_decay * p
        m = beta1 * ms[i] + one_minus_beta1 * g
        v = beta2 * vs[i] + one_minus_beta2 * g * g
        ms[i] = m
        vs[i] = v
        ps[i] = p - step_size * m / (np.sqrt(v) / bias_correction2_sqrt + eps)


@kernel
def _sgd(param, grad, velocity, lr, momentum, nesterov, weight_decay):
    # param, grad, velocity (n,) flat views; velocity unused when momentum == 0
    # Zero-based loops over slices: LLVM drops the negative-index wrap-around and
    # vectorises them (``inspect_asm``: vfmadd...ps/pd on zmm); range(lo, hi) did not.
    n = param.shape[0]
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        hi = min(lo + _BLOCK, n)
        sgd_update(param[lo:hi], grad[lo:hi], velocity[lo:hi], lr, momentum, nesterov, weight_decay)


@kernel
def _adam(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
          decoupled, bias_correction1, bias_correction2_sqrt, one_minus_beta1, one_minus_beta2,
          decay):
    # param, grad, exp_avg, exp_avg_sq (n,) flat views
    n = param.shape[0]
    step_size = lr / bias_correction1
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        hi = min(lo + _BLOCK, n)
        adam_update(param[lo:hi], grad[lo:hi], exp_avg[lo:hi], exp_avg_sq[lo:hi], step_size, beta1, beta2,
                    eps, weight_decay, decoupled, bias_correction2_sqrt, one_minus_beta1, one_minus_beta2,
                    decay)


def _flat(x):
    return x.reshape(-1)


def sgd_step(param, grad, velocity, lr, momentum, nesterov, weight_decay):
    # scalars in the parameters' dtype: float32 math, as NumPy's and PyTorch's updates,
    # and a loop LLVM vectorises 16 lanes wide (float64 scalars would promote it)
    t = param.dtype.type
    flat_param = _flat(param)
    flat_velocity = flat_param if velocity is None else _flat(velocity)
    sized(_sgd, param.size)(flat_param, _flat(np.ascontiguousarray(grad)), flat_velocity, t(lr),
                            t(momentum), nesterov, t(weight_decay))


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    t = param.dtype.type  # float32 math for float32 parameters (see sgd_step)
    sized(_adam, param.size)(
        _flat(param), _flat(np.ascontiguousarray(grad)), _flat(exp_avg), _flat(exp_avg_sq),
        t(lr), t(beta1), t(beta2), t(eps), t(weight_decay), decoupled,
        t(1 - beta1**step), t(np.sqrt(1 - beta2**step)), t(1 - beta1), t(1 - beta2),
        t(1 - lr * weight_decay),
    )
