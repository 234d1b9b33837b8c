"""Numba CPU losses: fused cross-entropy (loss and gradient in one kernel), MSE, and the
chunked fused linear + cross-entropy.  Semantics as kernprop.kernels.reference.losses.

Cross-entropy with gradient, per row (as Liger-Kernel's): m = max (vectorised), then
e = exp(z - m) with the vectorisable ``fast_exp`` written into the gradient row while
s = sum e accumulates in float64, the loss from m, log s and the target logit, and the
row scaled in place to ``p_coef * e / s - w_coef * w``: one exp per element, the row in
L1 between the passes.  The target's entry is recomputed in float64 so that a one-class
row gets exactly 0.  Without gradient the online statistics of Milakov & Gimelshein
(2018) (``softmax.row_stats``) give m and log s in one read.  Rows
are split over threads, each row owned by one task, so results do not depend on the
thread count.
"""

import numpy as np
from numba import njit, prange

from .._chunks import linear_cross_entropy_chunks
from ._jit import helper, kernel, precise, sized
from ._math import fast_exp
from .gemm import gemm
from .softmax import _SHORT, _SHORT_ROWS, _SUM_BLOCK, block_max, row_stats, short_rows_stats

_BLOCK = 16384
_CHUNK_ELEMENTS = 16384  # logits per parallel task


@helper
def _exp_row(row, m, e_row, weight, weighted, smoothed):
    # e_row = exp(row - m) (may alias row: each element is read before it is written);
    # returns (sum of e in float64, sum_c w_c z_c when smoothed else 0).  The sum runs in
    # the input dtype over blocks of _SUM_BLOCK (zmm-wide loop), joined in float64.
    s = 0.0
    wz = 0.0
    n = row.shape[0]
    if smoothed:
        wz = weighted_sum(row, weight, weighted)
    for b0 in range(0, n, _SUM_BLOCK):
        b1 = min(b0 + _SUM_BLOCK, n)
        zs = row[b0:b1]
        es = e_row[b0:b1]
        partial = row.dtype.type(0)
        for c in range(b1 - b0):
            e = fast_exp(zs[c] - m)
            es[c] = e
            partial += e
        s += partial
    return s, wz


@helper
def weighted_sum(row, weight, weighted):
    # sum_c w_c z_c in float64
    total = 0.0
    if weighted:
        for c in range(row.shape[0]):
            total += weight[c] * row[c]
    else:
        for c in range(row.shape[0]):
            total += row[c]
    return total


@helper
def scale_row(e_row, g, scale, w_coef, weight, weighted, smoothed):
    # g = scale * e_row - w_coef * w (e_row = exp(z - m), scale = p_coef / s; without
    # smoothing no w term, without class weights w = 1); e_row may be g itself.  The
    # target's entry is the caller's.
    if weighted and smoothed:
        for c in range(g.shape[0]):
            g[c] = scale * e_row[c] - w_coef * weight[c]
    elif smoothed:
        for c in range(g.shape[0]):
            g[c] = scale * e_row[c] - w_coef
    else:
        for c in range(g.shape[0]):
            g[c] = scale * e_row[c]


@precise
def _target_grad(target_logit, m, log_s, grad_scale, hard, uniform, weight_total, target_weight):
    # float64: scale * (hard * (p - 1) + uniform * (W p - w_y)), grouped so that a
    # one-class row (p = 1, W = w_y) gives exactly 0 (no reassoc here).
    p = np.exp((np.float64(target_logit) - m) - log_s)
    return grad_scale * (hard * (p - 1.0) + uniform * (weight_total * p - target_weight))


@precise
def target_grad_p(p, grad_scale, hard, uniform, weight_total, target_weight):
    # as _target_grad, from p = softmax of the target (float64)
    return grad_scale * (hard * (p - 1.0) + uniform * (weight_total * p - target_weight))


@helper
def class_weight_total(weight, weighted, num_classes):
    # W = sum of the class weights (C without weights), the smoothing gradient's p factor
    total = 0.0
    if weighted:
        for c in range(num_classes):
            total += weight[c]
    else:
        total = num_classes
    return total


@helper
def _ignored_row(i, want_grad, row_losses, grad):
    # row i's label is ignore_index: no loss, and a zero gradient row
    row_losses[i] = 0.0
    if want_grad:
        grad_row = grad[i]
        for c in range(grad_row.shape[0]):
            grad_row[c] = 0


@kernel
def _cross_entropy_rows(logits, labels, weight, weighted, ignore_index, smoothing, grad_scale,
                        want_grad, row_losses, grad):
    # logits (N, C), labels (N,), weight (C,) (ignored unless weighted) -> row_losses (N,)
    # float64 and, when want_grad, grad (N, C) scaled by grad_scale.  grad may be logits
    # itself: a row's statistics and target logit are read before its gradient is written.
    n, num_classes = logits.shape
    weight_total = class_weight_total(weight, weighted, num_classes)
    uniform = smoothing / num_classes
    rows = max(1, _CHUNK_ELEMENTS // num_classes)
    for task in prange((n + rows - 1) // rows):
        for i in range(task * rows, min((task + 1) * rows, n)):
            label = labels[i]
            if label == ignore_index:
                _ignored_row(i, want_grad, row_losses, grad)
                continue
            row = logits[i]
            target_weight = weight[label] if weighted else 1.0
            target_logit = row[label]  # saved: grad_row may alias row
            smoothed = smoothing > 0
            if want_grad:
                # max, then e = exp(z - m) stored in the gradient row while summing: one
                # exp per element; the row is then scaled in place
                grad_row = grad[i]
                m = block_max(row)
                s, wz = _exp_row(row, m, grad_row, weight, weighted, smoothed)
                log_s = np.log(s)
            else:
                m, log_s = row_stats(row)
                s = 0.0
                wz = weighted_sum(row, weight, weighted) if smoothed else 0.0
            # -logp = (m - z) + log s: exact for the max logit, where lse - z would cancel
            loss = (1 - smoothing) * target_weight * ((m - target_logit) + log_s)
            if smoothed:
                # -sum_c w_c logp_c = sum_c w_c (m + log s) - sum_c w_c z_c
                loss += uniform * (weight_total * (np.float64(m) + log_s) - wz)
            row_losses[i] = loss
            if want_grad:
                # (1 - eps) w_y (p - onehot) + (eps / C) (W p - w), times 1/denominator,
                # with p = e / s; coefficients in the logits' dtype keep the loop float32
                hard = (1 - smoothing) * target_weight
                p_coef = grad_scale * (hard + uniform * weight_total)
                w_coef = grad_scale * uniform
                scale_row(grad_row, grad_row, row.dtype.type(p_coef / s), row.dtype.type(w_coef), weight,
                           weighted, smoothed)
                # The target's entry is recomputed in float64 with the one-hot term, not
                # corrected after rounding: a 1-class row then gets exactly 0.
                grad[i, label] = _target_grad(target_logit, m, log_s, grad_scale, hard, uniform,
                                              weight_total, np.float64(target_weight))


@helper
def cross_entropy_short_rows(logits, labels, r0, r1, weight, weighted, ignore_index, smoothing, grad_scale,
                             weight_total, want_grad, row_losses, grad, d, e, m, sums, log_s, preds=None):
    # Rows r0:r1 of logits (N, C), labels (N,) -> row_losses[r0:r1] (float64) and, when
    # want_grad, grad[r0:r1] (N, C) scaled by grad_scale (it may be logits itself).  The
    # row statistics of the block come from one flat vectorised exp loop
    # (softmax.short_rows_stats into the scratch d, e (>= (r1-r0) C,), m, sums, log_s
    # (>= r1-r0,)), and the gradient is p_coef * e / s - w_coef * w from the stored
    # e = exp(z - m).  weight_total: class_weight_total's W; preds: short_rows_stats'.
    # The row helper of _cross_entropy_short (a block per task) and of the fused
    # training step (its batch, with its predictions).
    num_classes = logits.shape[1]
    uniform = smoothing / num_classes
    short_rows_stats(logits, r0, r1, d, e, m, sums, log_s, preds)
    for r in range(r1 - r0):
        i = r0 + r
        label = labels[i]
        if label == ignore_index:
            _ignored_row(i, want_grad, row_losses, grad)
            continue
        row = logits[i]
        dr = d[r * num_classes : (r + 1) * num_classes]
        er = e[r * num_classes : (r + 1) * num_classes]
        target_weight = weight[label] if weighted else 1.0
        hard = (1 - smoothing) * target_weight
        # -logp_y = (m - z_y) + log s = -d_y + log s
        loss = hard * (log_s[r] - dr[label])
        if smoothing > 0:
            wz = weighted_sum(row, weight, weighted)
            loss += uniform * (weight_total * (np.float64(m[r]) + log_s[r]) - wz)
        row_losses[i] = loss
        if want_grad:
            p_target = np.float64(er[label]) / sums[r]
            p_coef = grad_scale * (hard + uniform * weight_total)
            w_coef = grad_scale * uniform
            scale = logits.dtype.type(p_coef / sums[r])
            w_coef_x = logits.dtype.type(w_coef)
            grad_row = grad[i]
            scale_row(er, grad_row, scale, w_coef_x, weight, weighted, smoothing > 0)
            grad_row[label] = target_grad_p(p_target, grad_scale, hard, uniform, weight_total,
                                             np.float64(target_weight))


@kernel
def _cross_entropy_short(logits, labels, weight, weighted, ignore_index, smoothing, grad_scale,
                         want_grad, row_losses, grad):
    # As _cross_entropy_rows, for C < softmax._SHORT: blocks of _SHORT_ROWS rows, one per
    # task, through cross_entropy_short_rows with the task's own scratch.
    n, num_classes = logits.shape
    weight_total = class_weight_total(weight, weighted, num_classes)
    for task in prange((n + _SHORT_ROWS - 1) // _SHORT_ROWS):
        r0 = task * _SHORT_ROWS
        r1 = min(r0 + _SHORT_ROWS, n)
        d = np.empty(_SHORT_ROWS * num_classes, dtype=logits.dtype)
        e = np.empty(_SHORT_ROWS * num_classes, dtype=logits.dtype)
        m = np.empty(_SHORT_ROWS, dtype=logits.dtype)
        sums = np.empty(_SHORT_ROWS, dtype=np.float64)
        log_s = np.empty(_SHORT_ROWS, dtype=np.float64)
        cross_entropy_short_rows(logits, labels, r0, r1, weight, weighted, ignore_index, smoothing, grad_scale,
                                 weight_total, want_grad, row_losses, grad, d, e, m, sums, log_s)


@njit(cache=True)
def mean_denominator(labels, ignore_index, weight, weighted):
    # sum of the weights of the non-ignored rows' labels (their count without weights)
    total = 0.0
    for i in range(labels.shape[0]):
        label = labels[i]
        if label != ignore_index:
            total += weight[label] if weighted else 1.0
    return total


_NO_WEIGHT = {np.dtype(np.float32): np.ones(1, np.float32), np.dtype(np.float64): np.ones(1, np.float64)}


def _class_weight(weight, dtype):
    # (weight array, weighted flag): a 1-element dummy when there are no class weights
    return (_NO_WEIGHT[dtype], False) if weight is None else (np.ascontiguousarray(weight), True)


def _mean_denominator(labels, ignore_index, weight, weighted):
    return mean_denominator(labels, ignore_index, weight, weighted)


def _reduce(row_losses, denominator, reduction, dtype):
    if reduction == "none":
        return row_losses.astype(dtype)
    total = row_losses.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return dtype.type(np.float64(total) / denominator if reduction == "mean" else total)


def _cross_entropy(logits, labels, reduction, ignore_index, label_smoothing, weight, want_grad):
    n, num_classes = logits.shape
    logits = np.ascontiguousarray(logits)
    weight, weighted = _class_weight(weight, logits.dtype)
    denominator = _mean_denominator(labels, ignore_index, weight, weighted) if reduction == "mean" else 1.0
    with np.errstate(divide="ignore"):
        grad_scale = np.float64(1.0) / denominator
    row_losses = np.empty(n, dtype=np.float64)
    grad = np.empty_like(logits) if want_grad else np.empty((0, num_classes), logits.dtype)
    kernel = sized(_cross_entropy_short if num_classes < _SHORT else _cross_entropy_rows, logits.size)
    kernel(logits, labels, weight, weighted, ignore_index, label_smoothing, grad_scale,
           want_grad, row_losses, grad)
    return _reduce(row_losses, denominator, reduction, logits.dtype), grad


def cross_entropy_forward(logits, labels, reduction, ignore_index, label_smoothing, weight):
    return _cross_entropy(logits, labels, reduction, ignore_index, label_smoothing, weight, False)[0]


def cross_entropy_with_grad(logits, labels, reduction, ignore_index, label_smoothing, weight):
    return _cross_entropy(logits, labels, reduction, ignore_index, label_smoothing, weight, True)


@kernel
def _squared_error_sum(pred, target):
    # pred, target (n,) -> sum of squares in float64.  Each block is sliced before its
    # loop: indexing the whole arrays by i, LLVM kept its per-element index checks and
    # did not vectorise (4096x1000 float32: 5.7 -> 0.55 ms).
    n = pred.shape[0]
    total = 0.0
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        hi = min(lo + _BLOCK, n)
        p, t = pred[lo:hi], target[lo:hi]
        partial = 0.0
        for i in range(hi - lo):
            d = np.float64(p[i]) - np.float64(t[i])
            partial += d * d
        total += partial
    return total


@kernel
def _squared_error(pred, target, scale, square, out):
    # pred, target (n,) -> out = (pred - target)^2 when square, else scale * (pred - target)
    # with scale rounded to the dtype first, as NumPy does with a Python float
    n = pred.shape[0]
    s = pred.dtype.type(scale)
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        lo = block * _BLOCK
        hi = min(lo + _BLOCK, n)
        p, t, o = pred[lo:hi], target[lo:hi], out[lo:hi]
        if square:
            for i in range(hi - lo):
                d = p[i] - t[i]
                o[i] = d * d
        else:
            for i in range(hi - lo):
                o[i] = s * (p[i] - t[i])


# The MSE kernels' serial twins, for the fused training step (engines/mlp_step.py),
# which runs on one thread
squared_error_sum = _squared_error_sum.serial
squared_error = _squared_error.serial


def _flat(x):
    return np.ascontiguousarray(x).reshape(-1)


def mse_forward(pred, target, reduction):
    if reduction == "none":
        out = np.empty(pred.shape, dtype=pred.dtype)
        sized(_squared_error, pred.size)(_flat(pred), _flat(target), 1.0, True, out.reshape(-1))
        return out
    total = sized(_squared_error_sum, pred.size)(_flat(pred), _flat(target))
    return pred.dtype.type(total / pred.size if reduction == "mean" else total)


def mse_backward(pred, target, reduction):
    scale = 2.0 / pred.size if reduction == "mean" else 2.0
    out = np.empty(pred.shape, dtype=pred.dtype)
    sized(_squared_error, pred.size)(_flat(pred), _flat(target), scale, False, out.reshape(-1))
    return out


def linear_cross_entropy(x, w, b, labels, reduction, ignore_index, label_smoothing, weight, chunk_size,
                         precision="fp32"):
    # x (N, IN) @ w (IN, C) + b -> loss, dx, dw, db, in chunks of rows (the loop:
    # kernels/_chunks.py).  Per chunk: logits = x_c @ w + b (bias in the GEMM epilogue);
    # loss and gradient in place (the row kernel, one fused pass); dx_c = g @ w.T (w.T
    # read through the packing, never copied); dw (+)= x_c.T @ g with db summed while g
    # is packed for that product.
    n, num_classes = x.shape[0], w.shape[1]
    dtype = x.dtype
    weight, weighted = _class_weight(weight, dtype)
    denominator = _mean_denominator(labels, ignore_index, weight, weighted) if reduction == "mean" else 1.0
    with np.errstate(divide="ignore"):
        grad_scale = np.float64(1.0) / denominator
    ce_rows = _cross_entropy_short if num_classes < _SHORT else _cross_entropy_rows
    row_losses = np.empty(n, dtype=np.float64)
    dx = np.empty(x.shape, dtype=dtype)
    dw = np.empty(w.shape, dtype=dtype)
    db_sums = np.zeros(num_classes, dtype=np.float64) if b is not None else None

    def forward(x_chunk, logits):
        gemm(x_chunk, w, out=logits, bias=b, precision=precision)

    def rows(logits, start, stop):
        ce_rows(logits, labels[start:stop], weight, weighted, ignore_index, label_smoothing, grad_scale, True,
                row_losses[start:stop], logits)

    def backward(x_chunk, g, start, stop):
        gemm(g, w.T, out=dx[start:stop], precision=precision)
        gemm(x_chunk.T, g, out=dw, accumulate=start > 0, column_sums_of_b=db_sums, precision=precision)

    linear_cross_entropy_chunks(x, num_classes, chunk_size, lambda shape: np.empty(shape, dtype), forward, rows,
                                backward)
    db = db_sums.astype(dtype) if b is not None else None
    return _reduce(row_losses, denominator, reduction, dtype), dx, dw, db
