"""Cython activations: loaders over ``kernprop._cy.activations`` (pyx/activations.pyx).

The kernels see flat C-contiguous arrays: any shape is made contiguous (a copy only when
it is not already), viewed flat with ``reshape(-1)``, and the result given its shape back.
"""

import numpy as np

from kernprop._cy import activations as _cy


def _flat(x):
    return np.ascontiguousarray(x).reshape(-1)


def _unary(kernel, x):
    out = np.empty(x.shape, dtype=x.dtype)
    kernel(_flat(x), out.reshape(-1))
    return out


def _binary(kernel, saved, dy):
    out = np.empty(dy.shape, dtype=dy.dtype)
    kernel(_flat(saved), _flat(dy), out.reshape(-1))
    return out


def relu_forward(x):
    return _unary(_cy.relu_forward, x)


def relu_backward(x, dy):
    # gradient dy where x > 0, else 0 (0 at x == 0, as PyTorch)
    return _binary(_cy.relu_backward, x, dy)


def sigmoid_forward(x):
    return _unary(_cy.sigmoid_forward, x)


def sigmoid_backward(y, dy):
    # y is the forward output: dy * y * (1 - y)
    return _binary(_cy.sigmoid_backward, y, dy)


def tanh_forward(x):
    return _unary(_cy.tanh_forward, x)


def tanh_backward(y, dy):
    # y is the forward output: dy * (1 - y^2)
    return _binary(_cy.tanh_backward, y, dy)


def gelu_forward(x, approximate):
    # x Phi(x); approximate "tanh": GPT-2's 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    out = np.empty(x.shape, dtype=x.dtype)
    _cy.gelu_forward(_flat(x), out.reshape(-1), approximate == "tanh")
    return out


def gelu_backward(x, dy, approximate):
    # x is the forward input: dy * d gelu / dx
    out = np.empty(dy.shape, dtype=dy.dtype)
    _cy.gelu_backward(_flat(x), _flat(dy), out.reshape(-1), approximate == "tanh")
    return out
