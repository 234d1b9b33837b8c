"""Numba CPU matmul family: the contract's products, each one call of the GEMM engine.

The engine (``gemm/``: packing, drivers, run-time selected micro-kernels) computes every
product; this module only says which product each op is.  ``linear_forward`` fuses the
bias and the activation into the engine's epilogue; ``linear_backward`` sums the
columns of dy (db) while the engine packs dy for dW = x.T @ dy (one read of dy for both).
``precision`` is the contract's ("fp32", "bf16x3", "bf16"; see ``kernprop.precision``).
"""

import numpy as np

from .gemm import check_kernel, gemm, kernel_info  # noqa: F401  (for the Trainer and kernprop info)


def matmul(a, b, precision="fp32"):
    # a (M, K) @ b (K, N) -> (M, N)
    return gemm(a, b, precision=precision)


def linear_forward(x, w, b, activation, precision="fp32"):
    # x (N, IN) @ w (IN, OUT) + b (OUT,), activation fused into the GEMM epilogue
    return gemm(x, w, bias=b, activation=activation, precision=precision)


def linear_backward(x, w, dy, has_bias, need_dx=True, precision="fp32"):
    # y = x @ w + b: dx = dy @ w.T, dw = x.T @ dy, db = column sums of dy, summed while
    # dy is packed as the B operand of dw (one read of dy for both).
    dx = gemm(dy, w.T, precision=precision) if need_dx else None
    sums = np.zeros(dy.shape[1], dtype=np.float64) if has_bias else None
    dw = gemm(x.T, dy, column_sums_of_b=sums, precision=precision)
    db = sums.astype(dy.dtype) if has_bias else None
    return dx, dw, db
