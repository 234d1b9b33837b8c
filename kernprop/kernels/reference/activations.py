"""Reference activations; each derivative sits next to its formula."""

import math

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


# GELU, as torch.nn.functional.gelu: x * Phi(x), Phi the standard normal CDF, either
# exactly ("none": erf) or through GPT-2's tanh approximation ("tanh").
SQRT_HALF = 0.7071067811865476  # 1 / sqrt(2)
SQRT_2_OVER_PI = 0.7978845608028654  # sqrt(2 / pi)
INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi): the normal density at 0
GELU_TANH_CUBIC = 0.044715

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_forward(x, approximate):
    with np.errstate(invalid="ignore", over="ignore"):  # -inf * 0 at x = -inf: NaN, as PyTorch
        return _gelu_forward(x, approximate)


def _gelu_forward(x, approximate):
    if approximate == "tanh":
        t = np.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_CUBIC * x * x * x))
        return (0.5 * x * (1 + t)).astype(x.dtype, copy=False)
    cdf = 0.5 * (1 + _erf(x.astype(np.float64) * SQRT_HALF))
    return (x * cdf.astype(x.dtype)).astype(x.dtype, copy=False)


def gelu_backward(x, dy, approximate):
    with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 at x = +-inf: NaN, as PyTorch
        return _gelu_backward(x, dy, approximate)


def _gelu_backward(x, dy, approximate):
    if approximate == "tanh":
        # d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) u'(x), u = sqrt(2/pi)(x + c x^3)
        inner = SQRT_2_OVER_PI * (x + GELU_TANH_CUBIC * x * x * x)
        t = np.tanh(inner)
        du = SQRT_2_OVER_PI * (1 + 3 * GELU_TANH_CUBIC * x * x)
        return (dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)).astype(dy.dtype, copy=False)
    # d/dx x Phi(x) = Phi(x) + x phi(x)
    x64 = x.astype(np.float64)
    cdf = 0.5 * (1 + _erf(x64 * SQRT_HALF))
    pdf_term = x64 * INV_SQRT_2PI * np.exp(-0.5 * x64 * x64)
    return (dy * (cdf + pdf_term).astype(dy.dtype)).astype(dy.dtype, copy=False)
