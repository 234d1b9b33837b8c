"""CUDA activations: elementwise kernels over the flattened array, grid-stride loops.

One kernel per op and dtype (built by ``_kernels``): constants are cast to the array's
dtype so float32 stays float32 (a bare ``1.0`` is a double and would drag the whole
expression to float64 on the device).  The scalar functions are shared with the fused
epilogue of ``matmul.linear_forward``.  Each derivative sits next to its formula.

GELU (``approximate`` "none" or "tanh", as ``torch.nn.functional.gelu``) is one kernel
per approximation, chosen by the launcher, so the branch is not in the loop.  The exact
form computes Phi(x) = erfc(-x / sqrt 2) / 2 rather than (1 + erf(x / sqrt 2)) / 2: the
same value, without the cancellation of 1 + erf near -1 that loses float32's digits of
gelu(x) for x < -3 (libdevice's erfcf is accurate to a few ulp of its small result).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import cuda

from ._common import any_device, elementwise_grid, finish, numba_type, to_device_flat

# GELU constants (the reference's, kernels/reference/activations.py)
SQRT_HALF = 0.7071067811865476  # 1 / sqrt(2)
SQRT_2_OVER_PI = 0.7978845608028654  # sqrt(2 / pi)
INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi): the normal density at 0
GELU_TANH_CUBIC = 0.044715
# its derivative's coefficient, folded here: 3 * GELU_TANH_CUBIC inside a kernel is a
# float64 multiply in a float32 kernel
GELU_TANH_CUBIC_3 = 3 * GELU_TANH_CUBIC

# activation codes of the fused epilogue in matmul.linear_forward
NONE, RELU, SIGMOID, TANH = 0, 1, 2, 3
CODES = {None: NONE, "relu": RELU, "sigmoid": SIGMOID, "tanh": TANH}


@lru_cache(maxsize=None)
def scalar_functions(dtype):
    """(relu, sigmoid, tanh, apply(code, v)) as device functions on scalars of ``dtype``."""
    T = numba_type(dtype)

    @cuda.jit(device=True, inline=True)
    def relu(v):
        return max(v, T(0))

    @cuda.jit(device=True, inline=True)
    def sigmoid(v):
        # 1 / (1 + exp(-v)) overflows exp for v << 0; the branch keeps exp's argument <= 0
        if v >= 0:
            return T(1) / (T(1) + math.exp(-v))
        e = math.exp(v)
        return e / (T(1) + e)

    @cuda.jit(device=True, inline=True)
    def tanh(v):
        return math.tanh(v)

    @cuda.jit(device=True, inline=True)
    def apply(code, v):
        # code is uniform over the launch, so the branch never diverges
        if code == RELU:
            return relu(v)
        if code == SIGMOID:
            return sigmoid(v)
        if code == TANH:
            return tanh(v)
        return v

    return relu, sigmoid, tanh, apply


@lru_cache(maxsize=None)
def _kernels(dtype):
    T = numba_type(dtype)
    relu, sigmoid, tanh, _ = scalar_functions(dtype)

    @cuda.jit
    def relu_forward_kernel(x, out):
        # x (n,) -> out (n,)
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            out[i] = relu(x[i])

    @cuda.jit
    def relu_backward_kernel(x, dy, dx):
        # x, dy (n,) -> dx (n,); d relu / dx = 1 where x > 0, else 0 (0 at x == 0, as PyTorch)
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            dx[i] = dy[i] if x[i] > 0 else T(0)

    @cuda.jit
    def sigmoid_forward_kernel(x, out):
        # x (n,) -> out (n,)
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            out[i] = sigmoid(x[i])

    @cuda.jit
    def sigmoid_backward_kernel(y, dy, dx):
        # y = sigmoid(x), dy (n,) -> dx (n,); d sigmoid / dx = y (1 - y)
        for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
            dx[i] = dy[i] * y[i] * (T(1) - y[i])

    @cuda.jit
    def tanh_forward_kernel(x, out):
        # x (n,) -> out (n,)
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            out[i] = tanh(x[i])

    @cuda.jit
    def tanh_backward_kernel(y, dy, dx):
        # y = tanh(x), dy (n,) -> dx (n,); d tanh / dx = 1 - y^2
        for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
            dx[i] = dy[i] * (T(1) - y[i] * y[i])

    @cuda.jit
    def gelu_forward_kernel(x, out):
        # x (n,) -> out (n,); gelu(x) = x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2.
        # x = -inf: -inf * 0 = nan, as PyTorch
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            v = x[i]
            out[i] = v * (T(0.5) * math.erfc(-v * T(SQRT_HALF)))

    @cuda.jit
    def gelu_backward_kernel(x, dy, dx):
        # x, dy (n,) -> dx (n,); d gelu / dx = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi)
        # (x = +-inf: inf * 0 = nan, as PyTorch)
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            v = x[i]
            cdf = T(0.5) * math.erfc(-v * T(SQRT_HALF))
            dx[i] = dy[i] * (cdf + v * T(INV_SQRT_2PI) * math.exp(T(-0.5) * v * v))

    @cuda.jit
    def gelu_tanh_forward_kernel(x, out):
        # x (n,) -> out (n,); gelu(x) ~ x (1 + tanh(u)) / 2, u = sqrt(2/pi) (x + 0.044715 x^3)
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            v = x[i]
            t = math.tanh(T(SQRT_2_OVER_PI) * (v + T(GELU_TANH_CUBIC) * v * v * v))
            out[i] = T(0.5) * v * (T(1) + t)

    @cuda.jit
    def gelu_tanh_backward_kernel(x, dy, dx):
        # x, dy (n,) -> dx (n,); d/dx x (1 + t) / 2 = (1 + t) / 2 + x (1 - t^2) u'(x) / 2,
        # u'(x) = sqrt(2/pi) (1 + 3 0.044715 x^2)
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            v = x[i]
            t = math.tanh(T(SQRT_2_OVER_PI) * (v + T(GELU_TANH_CUBIC) * v * v * v))
            du = T(SQRT_2_OVER_PI) * (T(1) + T(GELU_TANH_CUBIC_3) * v * v)
            dx[i] = dy[i] * (T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * du)

    return {
        "relu_forward": relu_forward_kernel,
        "relu_backward": relu_backward_kernel,
        "sigmoid_forward": sigmoid_forward_kernel,
        "sigmoid_backward": sigmoid_backward_kernel,
        "tanh_forward": tanh_forward_kernel,
        "tanh_backward": tanh_backward_kernel,
        "gelu_forward": gelu_forward_kernel,
        "gelu_backward": gelu_backward_kernel,
        "gelu_tanh_forward": gelu_tanh_forward_kernel,
        "gelu_tanh_backward": gelu_tanh_backward_kernel,
    }


def _launch(name, *arrays):
    """Run elementwise kernel ``name`` on ``arrays`` (one shape) -> a new array."""
    on_device = any_device(*arrays)
    shape = tuple(arrays[0].shape)
    dtype = np.dtype(arrays[0].dtype)
    flat = [to_device_flat(a) for a in arrays]
    out = cuda.device_array(flat[0].shape[0], dtype=dtype)
    blocks, threads = elementwise_grid(flat[0].shape[0])
    _kernels(dtype)[name][blocks, threads](*flat, out)
    return finish(out.reshape(shape), on_device)


def relu_forward(x):
    return _launch("relu_forward", x)


def relu_backward(x, dy):
    return _launch("relu_backward", x, dy)


def sigmoid_forward(x):
    return _launch("sigmoid_forward", x)


def sigmoid_backward(y, dy):
    return _launch("sigmoid_backward", y, dy)


def tanh_forward(x):
    return _launch("tanh_forward", x)


def tanh_backward(y, dy):
    return _launch("tanh_backward", y, dy)


# "none" -> the erf kernels, "tanh" -> GPT-2's approximation
_GELU = {"none": "gelu", "tanh": "gelu_tanh"}


def gelu_forward(x, approximate):
    # x (any shape) -> gelu(x), same shape
    return _launch(_GELU[approximate] + "_forward", x)


def gelu_backward(x, dy, approximate):
    # x (forward input), dy (same shape) -> dx
    return _launch(_GELU[approximate] + "_backward", x, dy)
