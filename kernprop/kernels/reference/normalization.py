"""Reference layer normalization over the last axis, as ``torch.nn.functional.layer_norm``."""

import numpy as np


def layer_norm_forward(x, weight, bias, eps):
    # x (N, C), weight (C,), bias (C,) or None -> y (N, C), mean (N,), rstd (N,)
    # y = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps), var biased
    mean = x.mean(axis=1)
    centered = x - mean[:, None]
    var = (centered * centered).mean(axis=1)
    rstd = (1 / np.sqrt(var + x.dtype.type(eps))).astype(x.dtype)
    y = centered * rstd[:, None] * weight
    if bias is not None:
        y = y + bias
    return y, mean, rstd


def layer_norm_backward(x, weight, mean, rstd, dy, has_bias):
    # xhat = (x - mean) * rstd; with g = dy * weight,
    # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), dweight = sum_rows(dy * xhat)
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dy * weight
    dx = rstd[:, None] * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    dweight = (dy * xhat).sum(axis=0)
    dbias = dy.sum(axis=0) if has_bias else None
    return dx, dweight, dbias
