"""Cython softmax and log-softmax: loaders over ``kernprop._cy.softmax`` (pyx/softmax.pyx).

The row kernels need contiguous rows; a strided input is copied once with
``np.ascontiguousarray`` (never written to).
"""

import numpy as np

from kernprop._cy import softmax as _cy


def log_softmax_forward(x):
    # x (N, C) -> (N, C)
    out = np.empty(x.shape, dtype=x.dtype)
    _cy.log_softmax_forward(np.ascontiguousarray(x), out)
    return out


def log_softmax_backward(y, dy):
    # y = log_softmax(x), dy (N, C) -> dx (N, C) = dy - softmax(x) * sum(dy)
    out = np.empty(dy.shape, dtype=dy.dtype)
    _cy.log_softmax_backward(np.ascontiguousarray(y), np.ascontiguousarray(dy), out)
    return out


def softmax_forward(x):
    # x (N, C) -> (N, C)
    out = np.empty(x.shape, dtype=x.dtype)
    _cy.softmax_forward(np.ascontiguousarray(x), out)
    return out
