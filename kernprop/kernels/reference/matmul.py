"""Reference GEMM and linear layer, at each matmul precision.

The bf16 precisions round exactly as the fast kernels must: ``round_bf16`` is integer
round-to-nearest-even on the float32 bits (never a hardware conversion, which may flush
subnormals), and the rounded operands are multiplied in float64, so the only difference
a correct backend may show is its float32 accumulation.
"""

import numpy as np

from .activations import ACTIVATIONS


def round_bf16(x):
    """float32 array -> float32 array of the nearest bfloat16 values (ties to even).

    NaN stays NaN (a quiet NaN); values beyond the largest bf16 become +-inf, as round to
    nearest even demands; subnormals are rounded, not flushed."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # adding 0x7FFF plus the lowest kept bit rounds to nearest, ties to the even one
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) & np.uint32(0xFFFF0000)
    # a NaN whose payload sits in the dropped bits would round to inf: keep it a NaN
    rounded = np.where(np.isnan(x), np.uint32(0x7FC00000), rounded).astype(np.uint32)
    return rounded.view(np.float32).reshape(np.shape(x))


def split_bf16(x):
    """float32 ``x`` -> ``(hi, lo)``: ``hi = bf16(x)`` and ``lo = bf16(x - hi)`` (the
    subtraction is exact in float32), so ``hi + lo`` carries 16 significant bits."""
    hi = round_bf16(x)
    with np.errstate(invalid="ignore"):
        lo = round_bf16(np.asarray(x, np.float32) - hi)
    return hi, lo


def product(a, b, precision="fp32"):
    """``a @ b`` as computed at ``precision`` (float64 inputs: always float64)."""
    if a.dtype == np.float64 or precision == "fp32":
        return a @ b
    wide = np.float64
    if precision == "bf16":
        out = round_bf16(a).astype(wide) @ round_bf16(b).astype(wide)
    elif precision == "bf16x3":
        a_hi, a_lo = split_bf16(a)
        b_hi, b_lo = split_bf16(b)
        a_hi, a_lo, b_hi, b_lo = (part.astype(wide) for part in (a_hi, a_lo, b_hi, b_lo))
        out = a_hi @ b_hi + (a_hi @ b_lo + a_lo @ b_hi)
    else:
        raise ValueError(f"unknown precision {precision!r}")
    return out.astype(a.dtype)


def matmul(a, b, precision="fp32"):
    # a (M, K), b (K, N) -> (M, N)
    return product(a, b, precision)


def linear_forward(x, w, b, activation, precision="fp32"):
    # x (N, IN), w (IN, OUT), b (OUT,) or None -> y (N, OUT)
    y = product(x, w, precision)
    if b is not None:
        y = y + b
    if activation is not None:
        y = ACTIVATIONS[activation](y)
    return y


def linear_backward(x, w, dy, has_bias, need_dx=True, precision="fp32"):
    # y = x @ w + b: dx = dy @ w.T, dw = x.T @ dy, db = sum of dy over rows
    dx = product(dy, w.T, precision) if need_dx else None
    dw = product(x.T, dy, precision)
    db = dy.sum(axis=0) if has_bias else None
    return dx, dw, db
