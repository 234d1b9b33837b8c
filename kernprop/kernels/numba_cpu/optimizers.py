"""Numba CPU optimizer updates: one pass over each parameter array, in place."""

import numpy as np
from numba import prange

from ._jit import kernel

_BLOCK = 16384


@kernel
def _sgd(param, grad, velocity, lr, momentum, nesterov, weight_decay):
    # param, grad, velocity (n,) flat views; velocity unused when momentum == 0
    n = param.shape[0]
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(block * _BLOCK, min((block + 1) * _BLOCK, n)):
            g = grad[i] + weight_decay * param[i]
            if momentum != 0:
                v = momentum * velocity[i] + g
                velocity[i] = v
                g = g + momentum * v if nesterov else v
            param[i] -= lr * g


@kernel
def _adam(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
          decoupled, bias_correction1, bias_correction2_sqrt):
    # param, grad, exp_avg, exp_avg_sq (n,) flat views
    n = param.shape[0]
    step_size = lr / bias_correction1
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(block * _BLOCK, min((block + 1) * _BLOCK, n)):
            p = param[i]
            g = grad[i]
            if decoupled:
                p = p * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p
            m = beta1 * exp_avg[i] + (1 - beta1) * g
            v = beta2 * exp_avg_sq[i] + (1 - beta2) * g * g
            exp_avg[i] = m
            exp_avg_sq[i] = v
            param[i] = p - step_size * m / (np.sqrt(v) / bias_correction2_sqrt + eps)


def _flat(x):
    return x.reshape(-1)


def sgd_step(param, grad, velocity, lr, momentum, nesterov, weight_decay):
    flat_param = _flat(param)
    flat_velocity = flat_param if velocity is None else _flat(velocity)
    _sgd(flat_param, _flat(np.ascontiguousarray(grad)), flat_velocity, lr, momentum, nesterov, weight_decay)


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    _adam(
        _flat(param), _flat(np.ascontiguousarray(grad)), _flat(exp_avg), _flat(exp_avg_sq),
        lr, beta1, beta2, eps, weight_decay, decoupled,
        1 - beta1**step, np.sqrt(1 - beta2**step),
    )
