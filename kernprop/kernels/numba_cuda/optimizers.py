"""CUDA optimizer steps, torch.optim semantics, in place: elementwise grid-stride kernels.

Kernels:
    sgd_step_kernel    weight decay, momentum (dampening 0), Nesterov, one pass.
    adam_step_kernel   Adam / AdamW (decoupled weight decay), bias corrections folded
                       into two host scalars, one pass over the four arrays.

Scalars are cast to the parameters' dtype in the kernel, so float32 parameters are
updated with float32 arithmetic, as the reference does.  NumPy arguments are copied to
the device and the results copied back into them (the caller's arrays are updated);
device arguments are updated where they are.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import cuda

from ._common import dummy, elementwise_grid, numba_type, to_device, to_device_flat


@lru_cache(maxsize=None)
def _kernels(dtype):
    T = numba_type(dtype)

    @cuda.jit
    def sgd_step_kernel(param, grad, velocity, lr, momentum, nesterov, weight_decay):
        # param, grad, velocity (n,) -> param, velocity updated in place
        for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
            g = grad[i]
            if weight_decay != 0:
                g += T(weight_decay) * param[i]
            if momentum != 0:
                v = velocity[i] * T(momentum) + g
                velocity[i] = v
                g = g + T(momentum) * v if nesterov else v
            param[i] -= T(lr) * g

    @cuda.jit
    def adam_step_kernel(param, grad, exp_avg, exp_avg_sq, step_size, sqrt_bias_correction2,
                         beta1, beta2, eps, weight_decay, decoupled, decay_factor):
        # param, grad, exp_avg, exp_avg_sq (n,) -> param, exp_avg, exp_avg_sq in place
        for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
            p = param[i]
            g = grad[i]
            if weight_decay != 0:
                if decoupled:  # AdamW: decay the weights, not the gradient
                    p *= T(decay_factor)
                else:
                    g += T(weight_decay) * p
            m = exp_avg[i] * T(beta1) + (T(1) - T(beta1)) * g
            v = exp_avg_sq[i] * T(beta2) + (T(1) - T(beta2)) * g * g
            exp_avg[i] = m
            exp_avg_sq[i] = v
            denom = math.sqrt(v) / T(sqrt_bias_correction2) + T(eps)
            param[i] = p - T(step_size) * m / denom

    return sgd_step_kernel, adam_step_kernel


def _state(*arrays, read_only=1):
    """Flat device views of ``arrays`` (the last ``read_only`` of them only read), and a
    function that writes the updated ones back into the caller's NumPy arrays (device
    arrays are updated where they are)."""
    for a in arrays:
        if a is not None and not isinstance(a, np.ndarray) and not to_device(a).is_c_contiguous():
            # a strided device array would be updated through a copy, silently lost
            raise ValueError("optimizer state on the device must be C-contiguous (updated in place)")
    flat = [None if a is None else to_device_flat(a) for a in arrays]
    updated = len(arrays) - read_only

    def write_back():
        for host, device in zip(arrays[:updated], flat[:updated]):
            if isinstance(host, np.ndarray):
                device.copy_to_host(host.reshape(-1))  # a view: C-contiguous, checked by ops

    return flat, write_back


def sgd_step(param, grad, velocity, lr, momentum, nesterov, weight_decay):
    (d_param, d_velocity, d_grad), write_back = _state(param, velocity, grad)
    dtype = np.dtype(d_param.dtype)
    if d_velocity is None:  # momentum 0: never read
        d_velocity = dummy(dtype)
    blocks, threads = elementwise_grid(d_param.shape[0])
    _kernels(dtype)[0][blocks, threads](
        d_param, d_grad, d_velocity, float(lr), float(momentum), bool(nesterov), float(weight_decay)
    )
    write_back()


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    (d_param, d_avg, d_avg_sq, d_grad), write_back = _state(param, exp_avg, exp_avg_sq, grad)
    dtype = np.dtype(d_param.dtype)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    blocks, threads = elementwise_grid(d_param.shape[0])
    _kernels(dtype)[1][blocks, threads](
        d_param, d_grad, d_avg, d_avg_sq, float(lr / bias_correction1),
        float(math.sqrt(bias_correction2)), float(beta1), float(beta2), float(eps),
        float(weight_decay), bool(decoupled), float(1 - lr * weight_decay),
    )
    write_back()
