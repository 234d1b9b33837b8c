"""Reference GEMM and linear layer."""

import numpy as np

from .activations import ACTIVATIONS


def matmul(a, b):
    # a (M, K), b (K, N) -> (M, N)
    return a @ b


def linear_forward(x, w, b, activation):
    # x (N, IN), w (IN, OUT), b (OUT,) or None -> y (N, OUT)
    y = x @ w
    if b is not None:
        y = y + b
    if activation is not None:
        y = ACTIVATIONS[activation](y)
    return y


def linear_backward(x, w, dy, has_bias, need_dx=True):
    # y = x @ w + b: dx = dy @ w.T, dw = x.T @ dy, db = sum of dy over rows
    dx = dy @ w.T if need_dx else None
    dw = x.T @ dy
    db = dy.sum(axis=0) if has_bias else None
    return dx, dw, db
