"""Reference losses, with PyTorch's semantics.

Cross-entropy with label smoothing eps over C classes and class weights w, for a row
with label y and log-probabilities logp (torch.nn.functional.cross_entropy):

    loss_row = (1 - eps) * w[y] * (-logp[y]) + (eps / C) * sum_c w[c] * (-logp[c])

Ignored rows (label == ignore_index) contribute 0.  "mean" divides the sum of the rows
by the sum of w[y] over non-ignored rows (their count without weights): 0 / 0 = nan
when every row is ignored, as in PyTorch (whose gradient is then 0).  The gradient of a row with respect to its
logits, with p = softmax(logits):

    (1 - eps) * w[y] * (p - onehot(y)) + (eps / C) * (sum_c w[c] * p - w)
"""

import numpy as np

from .matmul import linear_backward, product
from .softmax import log_softmax_forward


def _class_weight(weight, num_classes, dtype):
    return np.ones(num_classes, dtype=dtype) if weight is None else weight


def _denominator(labels, ignore_index, weight, reduction):
    if reduction != "mean":
        return 1.0
    valid = labels != ignore_index
    return float(weight[labels[valid]].astype(np.float64).sum())


def _reduce(row_losses, denominator, reduction, dtype):
    if reduction == "none":
        return row_losses.astype(dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        return dtype.type(row_losses.astype(np.float64).sum() / denominator)


def cross_entropy_with_grad(logits, labels, reduction, ignore_index, label_smoothing, weight):
    # logits (N, C), labels (N,) -> loss, dlogits (N, C)
    n, c = logits.shape
    dtype = logits.dtype
    w = _class_weight(weight, c, dtype)
    logp = log_softmax_forward(logits)
    valid = labels != ignore_index
    safe_labels = np.where(valid, labels, 0)
    rows = np.arange(n)
    target_weight = np.where(valid, w[safe_labels], 0).astype(dtype)

    row_losses = (1 - label_smoothing) * target_weight * -logp[rows, safe_labels]
    grad = (1 - label_smoothing) * target_weight[:, None] * np.exp(logp)
    grad[rows, safe_labels] -= (1 - label_smoothing) * target_weight
    if label_smoothing > 0:
        smooth = -(logp * w).sum(axis=1)
        row_losses = row_losses + (label_smoothing / c) * np.where(valid, smooth, 0)
        smooth_grad = (label_smoothing / c) * (w.sum() * np.exp(logp) - w)
        grad += np.where(valid[:, None], smooth_grad, 0)
    row_losses = np.where(valid, row_losses, 0)

    denominator = _denominator(labels, ignore_index, w, reduction)
    # Ignored rows get a zero gradient even when every row is ignored and the mean
    # divides by 0 (PyTorch's nll_loss backward never touches them).
    with np.errstate(invalid="ignore", divide="ignore"):
        grad = np.where(valid[:, None], grad / denominator, 0).astype(dtype)
    return _reduce(row_losses, denominator, reduction, dtype), grad


def cross_entropy_forward(logits, labels, reduction, ignore_index, label_smoothing, weight):
    return cross_entropy_with_grad(
        logits, labels, reduction, ignore_index, label_smoothing, weight
    )[0]


def mse_forward(pred, target, reduction):
    squared = (pred - target) ** 2
    if reduction == "none":
        return squared
    total = squared.astype(np.float64).sum()
    return pred.dtype.type(total / pred.size if reduction == "mean" else total)


def mse_backward(pred, target, reduction):
    # d/dpred of sum (pred - target)^2 is 2 (pred - target); "mean" divides by the size.
    grad = 2 * (pred - target)
    return grad / pred.size if reduction == "mean" else grad


def linear_cross_entropy(
    x, w, b, labels, reduction, ignore_index, label_smoothing, weight, chunk_size,
    precision="fp32",
):
    # The oracle materialises all logits; chunk_size only matters to the fast backends.
    logits = product(x, w, precision)
    if b is not None:
        logits = logits + b
    loss, dlogits = cross_entropy_with_grad(
        logits, labels, reduction, ignore_index, label_smoothing, weight
    )
    dx, dw, db = linear_backward(x, w, dlogits, b is not None, True, precision)
    return loss, dx, dw, db
