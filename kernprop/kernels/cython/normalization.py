"""Cython layer normalization: loaders over ``kernprop._cy.normalization``
(pyx/normalization.pyx).

The row kernels need contiguous rows; a strided input is copied once with
``np.ascontiguousarray`` (never written to).
"""

import numpy as np

from kernprop._cy import normalization as _cy


def layer_norm_forward(x, weight, bias, eps):
    # x (N, C), weight (C,), bias (C,) or None -> y (N, C), mean (N,), rstd (N,)
    n, c = x.shape
    y = np.empty((n, c), dtype=x.dtype)
    mean = np.empty(n, dtype=x.dtype)
    rstd = np.empty(n, dtype=x.dtype)
    weight = np.ascontiguousarray(weight)
    # without a bias the kernel is given weight in its place and told not to read it
    bias_in = weight if bias is None else np.ascontiguousarray(bias)
    _cy.layer_norm_forward(np.ascontiguousarray(x), weight, bias_in, bias is not None, float(eps),
                           y, mean, rstd)
    return y, mean, rstd


def layer_norm_backward(x, weight, mean, rstd, dy, has_bias):
    # -> dx (N, C), dweight (C,), dbias (C,) or None
    n, c = x.shape
    dx = np.empty((n, c), dtype=x.dtype)
    dweight = np.empty(c, dtype=x.dtype)
    dbias = np.empty(c, dtype=x.dtype) if has_bias else None
    _cy.layer_norm_backward(np.ascontiguousarray(x), np.ascontiguousarray(weight), np.ascontiguousarray(mean),
                            np.ascontiguousarray(rstd), np.ascontiguousarray(dy), dx, dweight,
                            dweight if dbias is None else dbias, bool(has_bias))
    return dx, dweight, dbias
