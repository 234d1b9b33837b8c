"""Cython GEMM and linear layer: loaders over ``kernprop._cy.matmul`` (pyx/matmul.pyx).

The kernel packs its operands from any strides, so transposed views are passed as they
are (``dy @ w.T`` and ``x.T @ dy`` copy nothing before the packing).
"""

import numpy as np

from kernprop._cy import matmul as _cy

# Activation codes of pyx/_common.pxi.
_ACTIVATION_CODES = {None: 0, "relu": 1, "sigmoid": 2, "tanh": 3}


def matmul(a, b, precision="fp32"):
    # a (M, K), b (K, N) -> (M, N)
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    _cy.gemm(a, b, out)
    return out


def contiguous_bias(b):
    """The bias as the kernel reads it: None, or a contiguous (OUT,) array."""
    return None if b is None else np.ascontiguousarray(b)


def linear_forward(x, w, b, activation, precision="fp32"):
    # x (N, IN), w (IN, OUT), b (OUT,) or None -> y (N, OUT); bias and activation are
    # applied by the thread that owns each block of rows, right after its product.
    y = np.empty((x.shape[0], w.shape[1]), dtype=x.dtype)
    _cy.gemm(x, w, y, False, contiguous_bias(b), _ACTIVATION_CODES[activation])
    return y


def linear_backward(x, w, dy, has_bias, need_dx=True, precision="fp32"):
    # y = x @ w + b: dx (N, IN) = dy @ w.T, dw (IN, OUT) = x.T @ dy, db (OUT,) = dy summed
    # over rows (in float64, then cast)
    dx = None
    if need_dx:
        dx = np.empty(x.shape, dtype=x.dtype)
        _cy.gemm(dy, w.T, dx)
    dw = np.empty(w.shape, dtype=x.dtype)
    _cy.gemm(x.T, dy, dw)
    db = None
    if has_bias:
        sums = np.zeros(dy.shape[1], dtype=np.float64)
        _cy.column_sums(dy, sums)
        db = sums.astype(x.dtype)
    return dx, dw, db
