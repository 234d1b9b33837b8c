"""Reference log-softmax and softmax over the last axis."""

import numpy as np


def log_softmax_forward(x):
    # x (N, C) -> x - max - log(sum(exp(x - max))): exp only ever sees arguments <= 0.
    # A row of all -inf has max -inf, x - max = nan, and gives nan, as PyTorch does.
    with np.errstate(invalid="ignore"):
        shifted = x - x.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def log_softmax_backward(y, dy):
    # y = log_softmax(x): dx = dy - softmax(x) * sum(dy)
    return dy - np.exp(y) * dy.sum(axis=1, keepdims=True)


def softmax_forward(x):
    with np.errstate(invalid="ignore"):
        shifted = np.exp(x - x.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
