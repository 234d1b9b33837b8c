"""Cython losses: loaders over ``kernprop._cy.losses`` (pyx/losses.pyx), and the fused
linear cross-entropy, which chains the compiled GEMM and cross-entropy row kernels over
chunks of rows.

Semantics are PyTorch's, as the reference (kernprop/kernels/reference/losses.py)
documents.  The reductions are finished here: the kernels return per-row losses in
float64, summed in a fixed order so the result does not depend on the thread count.
"""

import numpy as np

from kernprop._cy import losses as _cy
from kernprop._cy import matmul as _cy_matmul

from .._chunks import linear_cross_entropy_chunks
from .matmul import contiguous_bias, gemm


def _class_weight(weight, num_classes, dtype):
    if weight is None:
        return np.ones(num_classes, dtype=dtype)
    return np.ascontiguousarray(weight)


def _labels(labels):
    return np.ascontiguousarray(labels, dtype=np.int64)


def _denominator(labels, weight, ignore_index, reduction):
    # "mean" divides by the weights of the non-ignored rows' labels (their count
    # without weights); "sum" and "none" by 1.
    if reduction != "mean":
        return np.float64(1.0)
    return np.float64(_cy.ce_denominator(labels, weight, ignore_index))


def _reduce(row_losses, denominator, reduction, dtype):
    if reduction == "none":
        return row_losses.astype(dtype)
    # 0 / 0 = nan when every row is ignored, as PyTorch.
    with np.errstate(invalid="ignore", divide="ignore"):
        return dtype.type(row_losses.sum() / denominator)


def _inverse(denominator):
    with np.errstate(divide="ignore"):
        return float(np.float64(1.0) / denominator)


def cross_entropy_forward(logits, labels, reduction, ignore_index, label_smoothing, weight):
    # logits (N, C), labels (N,) -> loss: 0-d ("mean", "sum") or (N,) ("none")
    n, c = logits.shape
    labels = _labels(labels)
    w = _class_weight(weight, c, logits.dtype)
    row_losses = np.empty(n, dtype=np.float64)
    _cy.ce_forward_rows(
        np.ascontiguousarray(logits), labels, w, ignore_index, label_smoothing, row_losses
    )
    denominator = _denominator(labels, w, ignore_index, reduction)
    return _reduce(row_losses, denominator, reduction, logits.dtype)


def cross_entropy_with_grad(logits, labels, reduction, ignore_index, label_smoothing, weight):
    # logits (N, C), labels (N,) -> loss, dlogits (N, C) from one fused pass per row
    n, c = logits.shape
    labels = _labels(labels)
    w = _class_weight(weight, c, logits.dtype)
    denominator = _denominator(labels, w, ignore_index, reduction)
    row_losses = np.empty(n, dtype=np.float64)
    grad = np.empty((n, c), dtype=logits.dtype)
    _cy.ce_grad_rows(
        np.ascontiguousarray(logits), labels, w, ignore_index, label_smoothing,
        _inverse(denominator), row_losses, grad,
    )
    return _reduce(row_losses, denominator, reduction, logits.dtype), grad


def _flat(x):
    return np.ascontiguousarray(x).reshape(-1)


def mse_forward(pred, target, reduction):
    # pred, target (any shape) -> 0-d mean/sum of (pred - target)^2, or elementwise
    if reduction == "none":
        out = np.empty(pred.shape, dtype=pred.dtype)
        _cy.mse_elementwise(_flat(pred), _flat(target), out.reshape(-1))
        return out
    total = _cy.mse_sum(_flat(pred), _flat(target))
    return pred.dtype.type(total / pred.size if reduction == "mean" else total)


def mse_backward(pred, target, reduction):
    # d/dpred of sum (pred - target)^2 is 2 (pred - target); "mean" divides by the size
    out = np.empty(pred.shape, dtype=pred.dtype)
    divisor = pred.size if reduction == "mean" else 1
    _cy.mse_grad(_flat(pred), _flat(target), float(divisor), out.reshape(-1))
    return out


def linear_cross_entropy(
    x, w, b, labels, reduction, ignore_index, label_smoothing, weight, chunk_size,
    precision="fp32",
):
    # x (N, IN), w (IN, C), b (C,) or None, labels (N,) -> loss, dx (N, IN),
    # dw (IN, C), db (C,) or None, in chunks of rows (the loop: kernels/_chunks.py).  Per
    # chunk: logits = x_chunk @ w + b, the cross-entropy gradient in place over them
    # (the row kernel), then dx_chunk = g @ w.T, dw += x_chunk.T @ g, db += column sums
    # of g.
    n, fan_in = x.shape
    c = w.shape[1]
    dtype = x.dtype
    labels = _labels(labels)
    class_weight = _class_weight(weight, c, dtype)
    denominator = _denominator(labels, class_weight, ignore_index, reduction)
    inv_denominator = _inverse(denominator)
    row_losses = np.empty(n, dtype=np.float64)
    dx = np.empty((n, fan_in), dtype=dtype)
    dw = np.empty((fan_in, c), dtype=dtype)
    db_sums = np.zeros(c, dtype=np.float64) if b is not None else None
    w_t = w.T
    b = contiguous_bias(b)

    def forward(x_chunk, logits):
        gemm(x_chunk, w, logits, False, b, precision=precision)

    def rows(logits, start, stop):
        _cy.ce_grad_rows(logits, labels[start:stop], class_weight, ignore_index, label_smoothing,
                         inv_denominator, row_losses[start:stop], logits)

    def backward(x_chunk, g, start, stop):
        gemm(g, w_t, dx[start:stop], precision=precision)
        gemm(x_chunk.T, g, dw, start > 0, precision=precision)
        if db_sums is not None:
            _cy_matmul.column_sums(g, db_sums)

    linear_cross_entropy_chunks(x, c, chunk_size, lambda shape: np.empty(shape, dtype), forward, rows, backward)
    loss = _reduce(row_losses, denominator, reduction, dtype)
    db = db_sums.astype(dtype) if db_sums is not None else None
    return loss, dx, dw, db
