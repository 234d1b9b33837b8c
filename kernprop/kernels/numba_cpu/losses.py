"""Numba CPU losses: fused cross-entropy (loss and gradient in one kernel), MSE, and the
chunked fused linear + cross-entropy.  Semantics as kernprop.kernels.reference.losses."""

import numpy as np
from numba import prange

from ._jit import kernel
from .matmul import column_sums, gemm
from .softmax import row_max_and_log_sum_exp

_BLOCK = 16384


@kernel
def _cross_entropy_rows(logits, labels, weight, ignore_index, smoothing, grad_scale,
                        want_grad, row_losses, grad):
    # logits (N, C), labels (N,), weight (C,) -> row_losses (N,) float64 and, when
    # want_grad, grad (N, C) scaled by grad_scale.  grad may be logits itself: each
    # element is read for the row statistics before its gradient overwrites it.
    n, num_classes = logits.shape
    weight_total = 0.0
    for c in range(num_classes):
        weight_total += weight[c]
    uniform = smoothing / num_classes
    for i in prange(n):
        label = labels[i]
        if label == ignore_index:
            row_losses[i] = 0.0
            if want_grad:
                grad[i, :] = 0
            continue
        row = logits[i]
        m, log_sum = row_max_and_log_sum_exp(row)
        target_weight = weight[label]
        # -logp = (m - z) + log_sum: exact for the max logit, where lse - z would cancel
        loss = (1 - smoothing) * target_weight * ((m - row[label]) + log_sum)
        if smoothing > 0:
            # -sum_c w_c logp_c, one term per class
            smooth = 0.0
            for c in range(num_classes):
                smooth += weight[c] * ((m - row[c]) + log_sum)
            loss += uniform * smooth
        row_losses[i] = loss
        if want_grad:
            # (1 - eps) w_y (p - onehot) + (eps / C) (W p - w), times 1/denominator
            hard = (1 - smoothing) * target_weight
            p_coef = grad_scale * (hard + uniform * weight_total)
            w_coef = grad_scale * uniform
            target_logit = row[label]  # saved: grad_row may alias row
            grad_row = grad[i]
            for c in range(num_classes):
                p = np.exp((row[c] - m) - log_sum)
                grad_row[c] = p_coef * p - w_coef * weight[c]
            # The target's entry is recomputed in float64 with the one-hot term, not
            # corrected after rounding: a 1-class row then gets exactly 0.
            p = np.exp((target_logit - m) - log_sum)
            grad_row[label] = p_coef * p - w_coef * weight[label] - grad_scale * hard


def _class_weight(weight, num_classes, dtype):
    return np.ones(num_classes, dtype=dtype) if weight is None else np.ascontiguousarray(weight)


def _mean_denominator(labels, ignore_index, weight):
    valid = labels != ignore_index
    return float(weight[labels[valid]].sum(dtype=np.float64))


def _reduce(row_losses, denominator, reduction, dtype):
    if reduction == "none":
        return row_losses.astype(dtype)
    total = row_losses.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return dtype.type(np.float64(total) / denominator if reduction == "mean" else total)


def _cross_entropy(logits, labels, reduction, ignore_index, label_smoothing, weight, want_grad):
    n, num_classes = logits.shape
    logits = np.ascontiguousarray(logits)
    weight = _class_weight(weight, num_classes, logits.dtype)
    denominator = _mean_denominator(labels, ignore_index, weight) if reduction == "mean" else 1.0
    with np.errstate(divide="ignore"):
        grad_scale = np.float64(1.0) / denominator
    row_losses = np.empty(n, dtype=np.float64)
    grad = np.empty_like(logits) if want_grad else np.empty((0, num_classes), logits.dtype)
    _cross_entropy_rows(logits, labels, weight, ignore_index, label_smoothing, grad_scale,
                        want_grad, row_losses, grad)
    return _reduce(row_losses, denominator, reduction, logits.dtype), grad


def cross_entropy_forward(logits, labels, reduction, ignore_index, label_smoothing, weight):
    return _cross_entropy(logits, labels, reduction, ignore_index, label_smoothing, weight, False)[0]


def cross_entropy_with_grad(logits, labels, reduction, ignore_index, label_smoothing, weight):
    return _cross_entropy(logits, labels, reduction, ignore_index, label_smoothing, weight, True)


@kernel
def _squared_error_sum(pred, target):
    # pred, target (n,) -> sum of squares in float64
    n = pred.shape[0]
    total = 0.0
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        partial = 0.0
        for i in range(block * _BLOCK, min((block + 1) * _BLOCK, n)):
            d = np.float64(pred[i]) - np.float64(target[i])
            partial += d * d
        total += partial
    return total


@kernel
def _squared_error(pred, target, scale, square, out):
    # pred, target (n,) -> out = (pred - target)^2 when square, else scale * (pred - target)
    n = pred.shape[0]
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(block * _BLOCK, min((block + 1) * _BLOCK, n)):
            d = pred[i] - target[i]
            out[i] = d * d if square else scale * d


def _flat(x):
    return np.ascontiguousarray(x).reshape(-1)


def mse_forward(pred, target, reduction):
    if reduction == "none":
        out = np.empty(pred.shape, dtype=pred.dtype)
        _squared_error(_flat(pred), _flat(target), 1.0, True, out.reshape(-1))
        return out
    total = _squared_error_sum(_flat(pred), _flat(target))
    return pred.dtype.type(total / pred.size if reduction == "mean" else total)


def mse_backward(pred, target, reduction):
    scale = 2.0 / pred.size if reduction == "mean" else 2.0
    out = np.empty(pred.shape, dtype=pred.dtype)
    _squared_error(_flat(pred), _flat(target), scale, False, out.reshape(-1))
    return out


def linear_cross_entropy(x, w, b, labels, reduction, ignore_index, label_smoothing, weight, chunk_size):
    # x (N, IN) @ w (IN, C) + b -> logits, one chunk of rows at a time: the chunk's
    # logits buffer is reused for its gradient, so at most chunk_size x C is held.
    n, num_classes = x.shape[0], w.shape[1]
    dtype = x.dtype
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    w_t = np.ascontiguousarray(w.T)
    weight = _class_weight(weight, num_classes, dtype)
    denominator = _mean_denominator(labels, ignore_index, weight) if reduction == "mean" else 1.0
    with np.errstate(divide="ignore"):
        grad_scale = np.float64(1.0) / denominator

    chunk_size = min(chunk_size, n)
    buffer = np.empty((chunk_size, num_classes), dtype=dtype)
    row_losses = np.empty(n, dtype=np.float64)
    dx = np.empty_like(x)
    dw = np.zeros_like(w)
    db = np.zeros(num_classes, dtype=dtype) if b is not None else None
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        x_chunk = x[start:stop]
        logits = buffer[: stop - start]
        gemm(x_chunk, w, out=logits, bias=b)
        _cross_entropy_rows(logits, labels[start:stop], weight, ignore_index, label_smoothing,
                            grad_scale, True, row_losses[start:stop], logits)
        gemm(logits, w_t, out=dx[start:stop])
        gemm(x_chunk.T, logits, out=dw, accumulate=True)
        if db is not None:
            column_sums(logits, out=db, accumulate=True)
    return _reduce(row_losses, denominator, reduction, dtype), dx, dw, db
