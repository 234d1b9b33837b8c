"""Cython optimizer steps: loaders over ``kernprop._cy.optimizers`` (pyx/optimizers.pyx).

``kernprop.ops`` guarantees C-contiguous, writable state arrays, so ``reshape(-1)`` is a
view and the kernels update the caller's arrays in place.  Only ``grad`` is read, and it
is made contiguous like any input.
"""

import numpy as np

from kernprop._cy import optimizers as _cy


def _grad(grad):
    return np.ascontiguousarray(grad).reshape(-1)


def sgd_step(param, grad, velocity, lr, momentum, nesterov, weight_decay):
    # torch.optim.SGD (dampening 0); velocity is None when momentum is 0
    if momentum:
        _cy.sgd_momentum(
            param.reshape(-1), _grad(grad), velocity.reshape(-1),
            lr, momentum, nesterov, weight_decay,
        )
    else:
        _cy.sgd(param.reshape(-1), _grad(grad), lr, weight_decay)


def adam_step(
    param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled
):
    # torch.optim.Adam, or torch.optim.AdamW when decoupled; step is 1-based
    _cy.adam(
        param.reshape(-1), _grad(grad), exp_avg.reshape(-1), exp_avg_sq.reshape(-1),
        step, lr, beta1, beta2, eps, weight_decay, decoupled,
    )
