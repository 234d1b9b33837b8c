"""Numba CPU activations and their backward, elementwise over any shape."""

import math

import numpy as np
from numba import njit, prange

from ._jit import ERROR_MODEL, FASTMATH, helper, kernel, sized
from ._math import fast_sigmoid, fast_tanh

# Elements per parallel task: big enough to amortise scheduling, small enough to split.
_BLOCK = 16384

RELU, SIGMOID, TANH = 1, 2, 3
ACTIVATION_CODES = {None: 0, "relu": RELU, "sigmoid": SIGMOID, "tanh": TANH}


@helper
def sigmoid_scalar(x):
    # branch-free and in the input's precision (see _math.sigmoid_f32)
    return fast_sigmoid(x)


@helper
def activate(value, activation):
    if activation == RELU:
        return max(value, 0)
    if activation == SIGMOID:
        return sigmoid_scalar(value)
    if activation == TANH:
        return fast_tanh(value)
    return value


@kernel
def _activation_forward(x, activation, out):
    # x (n,) -> out (n,), flat views of contiguous arrays
    n = x.shape[0]
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        start = block * _BLOCK
        xs = x[start : min(start + _BLOCK, n)]
        outs = out[start : start + xs.shape[0]]
        # One loop per activation: a switch inside the loop stops LLVM vectorising it.
        if activation == TANH:
            for i in range(xs.shape[0]):
                outs[i] = fast_tanh(xs[i])
        elif activation == SIGMOID:
            for i in range(xs.shape[0]):
                outs[i] = sigmoid_scalar(xs[i])
        else:
            for i in range(xs.shape[0]):
                outs[i] = activate(xs[i], activation)


@helper
def activation_backward_flat(saved, dy, activation, out):
    # saved, dy (n,) -> out (n,) = dy * activation'(.) (in place: the twin below); saved is x
    # for relu (the forward output y works too: y > 0 exactly where x > 0) and y for
    # sigmoid/tanh.  One loop per activation, as in _activation_forward, and constants
    # of the array's dtype: an integer literal makes Numba compute float32 in float64.
    # The kernel below runs it per block.
    zero, one = saved.dtype.type(0), saved.dtype.type(1)
    if activation == RELU:
        for i in range(saved.shape[0]):
            g = dy[i]
            out[i] = g if saved[i] > zero else zero
    elif activation == SIGMOID:
        for i in range(saved.shape[0]):
            s = saved[i]
            out[i] = dy[i] * s * (one - s)
    elif activation == TANH:
        for i in range(saved.shape[0]):
            s = saved[i]
            out[i] = dy[i] * (one - s * s)


@njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
def activation_backward_in_place(saved, grad, activation):
    # grad (n,) *= activation'(.), as activation_backward_flat(saved, grad, activation,
    # grad) computes it (the fused training step, mlp_step, per layer).  Its own loops,
    # with one array written: through activation_backward_flat LLVM cannot tell that out
    # and dy are one array, the vector loop's overlap check fails and the scalar loop
    # runs, branching on each element (relu over 200 x 256 float32, one Zen 3 core:
    # 18-32 us that way, 4.4-5.2 us this way).  Through a shared per-element function the
    # relu loop stayed scalar as well (24 us).  A call, not inlined into the step: the
    # step took as long either way, within this machine's noise.
    zero, one = saved.dtype.type(0), saved.dtype.type(1)
    if activation == RELU:
        for i in range(saved.shape[0]):
            grad[i] = grad[i] if saved[i] > zero else zero
    elif activation == SIGMOID:
        for i in range(saved.shape[0]):
            s = saved[i]
            grad[i] = grad[i] * s * (one - s)
    elif activation == TANH:
        for i in range(saved.shape[0]):
            s = saved[i]
            grad[i] = grad[i] * (one - s * s)


@kernel
def _activation_backward(saved, dy, activation, out):
    # saved (n,) is x for relu and the forward output y for sigmoid/tanh; dy (n,) -> out (n,)
    n = saved.shape[0]
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        start = block * _BLOCK
        ss = saved[start : min(start + _BLOCK, n)]
        ds = dy[start : start + ss.shape[0]]
        outs = out[start : start + ss.shape[0]]
        activation_backward_flat(ss, ds, activation, outs)


def _flat(x):
    return np.ascontiguousarray(x).reshape(-1)


def _forward(x, activation):
    out = np.empty(x.shape, dtype=x.dtype)
    sized(_activation_forward, x.size)(_flat(x), ACTIVATION_CODES[activation], out.reshape(-1))
    return out


def _backward(saved, dy, activation):
    out = np.empty(saved.shape, dtype=saved.dtype)
    sized(_activation_backward, dy.size)(_flat(saved), _flat(dy), ACTIVATION_CODES[activation],
                                        out.reshape(-1))
    return out


def relu_forward(x):
    return _forward(x, "relu")


def relu_backward(x, dy):
    return _backward(x, dy, "relu")


def sigmoid_forward(x):
    return _forward(x, "sigmoid")


def sigmoid_backward(y, dy):
    return _backward(y, dy, "sigmoid")


def tanh_forward(x):
    return _forward(x, "tanh")


def tanh_backward(y, dy):
    return _backward(y, dy, "tanh")


# GELU, "none" (erf) and "tanh" (GPT-2's approximation): formulas and constants as in
# the reference (kernels.reference.activations), each derivative beside its forward.
# The tanh form runs on _math's vectorisable float32 sigmoid; erf is libm's (scalar).
_SQRT_HALF = 0.7071067811865476
_SQRT_2_OVER_PI = 0.7978845608028654
_INV_SQRT_2PI = 0.3989422804014327
_CUBIC = 0.044715
GELU_NONE, GELU_TANH = 0, 1
GELU_CODES = {"none": GELU_NONE, "tanh": GELU_TANH}


@kernel
def _gelu_forward(x, form, out):
    # x (n,) -> out (n,) = x Phi(x)
    n = x.shape[0]
    half, one = x.dtype.type(0.5), x.dtype.type(1)
    two_c0, c1, sqrt_half = x.dtype.type(2 * _SQRT_2_OVER_PI), x.dtype.type(_CUBIC), x.dtype.type(_SQRT_HALF)
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        start = block * _BLOCK
        xs = x[start : min(start + _BLOCK, n)]
        outs = out[start : start + xs.shape[0]]
        if form == GELU_TANH:
            # 0.5 (1 + tanh(u)) = sigmoid(2u): one vectorised exp, no tanh branches
            for i in range(xs.shape[0]):
                v = xs[i]
                outs[i] = v * sigmoid_scalar(two_c0 * (v + c1 * v * v * v))
        else:
            for i in range(xs.shape[0]):
                v = xs[i]
                outs[i] = v * (half * (one + math.erf(v * sqrt_half)))


@kernel
def _gelu_backward(x, dy, form, out):
    # x, dy (n,) -> out (n,) = dy * gelu'(x)
    n = x.shape[0]
    half, one, three = x.dtype.type(0.5), x.dtype.type(1), x.dtype.type(3)
    two_c0, c1, sqrt_half = x.dtype.type(2 * _SQRT_2_OVER_PI), x.dtype.type(_CUBIC), x.dtype.type(_SQRT_HALF)
    inv_sqrt_2pi = x.dtype.type(_INV_SQRT_2PI)
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        start = block * _BLOCK
        xs = x[start : min(start + _BLOCK, n)]
        ds = dy[start : start + xs.shape[0]]
        outs = out[start : start + xs.shape[0]]
        if form == GELU_TANH:
            # gelu = x s, s = sigmoid(2u), u = sqrt(2/pi) (x + c x^3):
            # d/dx = s + x s (1 - s) 2u',  2u' = 2 sqrt(2/pi) (1 + 3 c x^2)
            for i in range(xs.shape[0]):
                v = xs[i]
                sg = sigmoid_scalar(two_c0 * (v + c1 * v * v * v))
                du2 = two_c0 * (one + three * c1 * v * v)
                outs[i] = ds[i] * (sg + v * sg * (one - sg) * du2)
        else:
            # d/dx x Phi(x) = Phi(x) + x phi(x)
            for i in range(xs.shape[0]):
                v = xs[i]
                cdf = half * (one + math.erf(v * sqrt_half))
                outs[i] = ds[i] * (cdf + v * inv_sqrt_2pi * np.exp(-half * v * v))


def gelu_forward(x, approximate):
    out = np.empty(x.shape, dtype=x.dtype)
    sized(_gelu_forward, x.size)(_flat(x), GELU_CODES[approximate], out.reshape(-1))
    return out


def gelu_backward(x, dy, approximate):
    out = np.empty(x.shape, dtype=x.dtype)
    sized(_gelu_backward, x.size)(_flat(x), _flat(dy), GELU_CODES[approximate], out.reshape(-1))
    return out
