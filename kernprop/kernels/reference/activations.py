"""Reference activations; each derivative sits next to its formula."""

import numpy as np


def relu_forward(x):
    return np.maximum(x, 0).astype(x.dtype, copy=False)


def relu_backward(x, dy):
    # d relu / dx = 1 where x > 0, else 0 (0 at x == 0, as PyTorch)
    return np.where(x > 0, dy, 0).astype(dy.dtype, copy=False)


def sigmoid_forward(x):
    # 1 / (1 + exp(-x)) overflows exp for x << 0; the branch keeps exp's argument <= 0.
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1 / (1 + np.exp(-x[positive]))
    ex = np.exp(x[~positive])
    out[~positive] = ex / (1 + ex)
    return out


def sigmoid_backward(y, dy):
    # d sigmoid / dx = y (1 - y)
    return dy * y * (1 - y)


def tanh_forward(x):
    return np.tanh(x)


def tanh_backward(y, dy):
    # d tanh / dx = 1 - y^2
    return dy * (1 - y * y)


ACTIVATIONS = {"relu": relu_forward, "sigmoid": sigmoid_forward, "tanh": tanh_forward}
