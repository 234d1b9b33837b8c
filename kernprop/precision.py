"""Matmul precision: how the products of float32 GEMMs are computed.

Like ``torch.set_float32_matmul_precision``, one global default (``set_matmul_precision``),
a per-thread override for a block (``matmul_precision``) and a per-call ``precision=``
argument on ``matmul``, ``linear``, ``linear_backward`` and ``linear_cross_entropy``.
Inputs and outputs stay float32 whatever the precision; float64 inputs always compute in
float64.

``"fp32"`` (default)
    IEEE float32 products and sums.
``"bf16x3"``
    Each operand is split into a bfloat16 high part and a bfloat16 residual
    (``hi = bf16(x)``, ``lo = bf16(x - hi)``) and the product is
    ``hi@hi + hi@lo + lo@hi`` accumulated in float32: relative error near 1e-5.
``"bf16"``
    Operands rounded to bfloat16 (round to nearest even, subnormals kept), products
    accumulated in float32: relative error near 4e-3 of ``|a| @ |b|``.

A backend may compute more accurately than asked where it has no faster kernel for the
precision (on a CPU without a fast bf16 unit a "bf16" request runs the float32 kernel);
``kernprop info`` shows which kernel each precision runs.
"""

from __future__ import annotations

from ._defaults import ThreadDefault

__all__ = ["PRECISIONS", "DEFAULT_PRECISION", "check_precision", "set_matmul_precision",
           "get_matmul_precision", "matmul_precision", "resolve_precision"]

PRECISIONS = ("fp32", "bf16x3", "bf16")
DEFAULT_PRECISION = "fp32"


def check_precision(precision) -> str:
    """``precision`` if it is one of PRECISIONS, else a ValueError naming the choices."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return precision


# the default precision: global, and per thread inside matmul_precision
_default = ThreadDefault(DEFAULT_PRECISION, check_precision)


def set_matmul_precision(precision: str) -> None:
    """Set the global default precision of float32 matmuls ("fp32", "bf16x3" or "bf16")."""
    _default.set(precision)


def get_matmul_precision() -> str:
    """The precision a float32 matmul uses when it gets ``precision=None``."""
    return _default.get()


def matmul_precision(precision: str):
    """Use ``precision`` as the default matmul precision inside a ``with`` block (per thread)."""
    return _default.override(precision)


def resolve_precision(precision, dtype) -> str:
    """The precision a product of ``dtype`` operands runs at: ``precision`` (or the
    default when None), checked; always "fp32" (full precision) for float64."""
    precision = get_matmul_precision() if precision is None else check_precision(precision)
    return precision if dtype.itemsize == 4 else "fp32"
