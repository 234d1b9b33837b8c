"""CUDA losses: cross-entropy (loss and gradient fused), MSE, fused linear cross-entropy.

Kernels:
    cross_entropy_kernel   one block per row: pass 1 reads the row once for the online
                           max and rescaled sum (``softmax.row_max_sum``), pass 2 writes
                           the gradient and gathers the label-smoothing term, so the
                           softmax is never stored (the fused loss + gradient of
                           Liger-Kernel's cross-entropy, Hsu et al. 2024).  PyTorch
                           semantics, as in ``reference/losses.py``: ignore_index,
                           label_smoothing, class weights, weighted mean.
    mse_partial_kernel     per-block float64 partial sums of (pred - target)^2, summed on
                           the host in a fixed order: deterministic, no float64 atomics.
    squared_error_kernel   (pred - target)^2 elementwise (reduction "none").
    mse_backward_kernel    2 (pred - target) / divisor elementwise.

``linear_cross_entropy`` holds one chunk of logits on the device at a time (the chunk loop
of every backend, ``kernels/_chunks.py``): per chunk,
the GEMM writes the logits into the chunk buffer, the cross-entropy kernel overwrites them
with their gradient in place, and dx, dw, db are taken from it before the next chunk.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import cuda

from ._common import (
    MAX_WARPS,
    any_device,
    block_sum,
    dummy,
    elementwise_grid,
    finish,
    log_of_sum,
    numba_type,
    row_threads,
    to_device,
    to_device_flat,
)
from .._chunks import linear_cross_entropy_chunks
from .matmul import column_sum, gemm
from .softmax import row_max_sum


@lru_cache(maxsize=None)
def _cross_entropy_kernel(dtype, write_grad):
    T = numba_type(dtype)
    # One column per trip here: with four (softmax's choice, 1.21 -> 1.04 ms for
    # log_softmax at 8192 x 32000 on an H200) this kernel went 2.6 -> 3.6 ms there
    # (bench/RESULTS-gpu.md), cause not yet measured; pass 2 re-reads the row.
    max_sum = row_max_sum(dtype, four_per_trip=False)

    @cuda.jit
    def cross_entropy_kernel(
        logits, labels, weight, has_weight, ignore_index, smoothing, total_weight,
        grad_scale, row_loss, grad,
    ):
        # logits (N, C), labels (N,), weight (C,) -> row_loss (N,), grad (N, C); block = row
        """
        logits        IN      (N, C); may be the same array as grad (then overwritten)
        labels        IN      (N,) int64, in [0, C) or == ignore_index
        weight        IN      (C,) class weights, read only when has_weight
        ignore_index  IN      label of rows that count 0
        smoothing     IN      label smoothing eps in [0, 1]
        total_weight  IN      sum of the class weights (C without weights)
        grad_scale    IN      1 / (sum of w[label] over kept rows) for "mean", else 1
        row_loss      OUT     (N,) loss of each row, 0 for ignored rows
        grad          OUT     (N, C) gradient of the reduced loss, when write_grad
        """
        scratch_m = cuda.shared.array(MAX_WARPS, T)
        scratch_s = cuda.shared.array(MAX_WARPS, T)
        row = cuda.blockIdx.x
        num_classes = logits.shape[1]
        label = labels[row]
        valid = label != ignore_index
        target = label if valid else 0
        # Read before any thread overwrites the row with its gradient (grad may be
        # logits): the barrier orders this read before every write of pass 2, which
        # warp shuffles alone (execution, not memory) would not.
        target_logit = logits[row, target]
        cuda.syncthreads()
        m, s = max_sum(logits, row, scratch_m, scratch_s)
        log_s = log_of_sum(s, T(math.nan))  # logp = (x - m) - log_s, see log_of_sum

        w_target = T(0)  # ignored rows weigh 0, so their gradient is 0 with no branch
        if valid:
            w_target = weight[target] if has_weight else T(1)
        hard = (T(1) - T(smoothing)) * w_target  # weight of the one-hot target
        soft = T(smoothing) / T(num_classes)  # weight of each class in the uniform target
        smooth = T(0)
        for c in range(cuda.threadIdx.x, num_classes, cuda.blockDim.x):
            logp = (logits[row, c] - m) - log_s
            w_c = weight[c] if has_weight else T(1)
            if write_grad:
                # d loss_row / d logit_c = hard (p_c - [c == y]) + soft (W p_c - w_c)
                p = math.exp(logp)
                g = hard * p
                if c == target:
                    g -= hard
                if valid and smoothing > 0:
                    g += soft * (T(total_weight) * p - w_c)
                # An ignored row's gradient is 0, also when every row is ignored: there
                # grad_scale = 1/0 = inf and 0 * inf would be nan (reference and PyTorch: 0)
                grad[row, c] = g * T(grad_scale) if valid else T(0)
            if smoothing > 0:
                smooth += w_c * logp
        if smoothing > 0:  # uniform over the launch: every thread reduces, or none
            smooth = block_sum(smooth, scratch_s, T(0))
        if cuda.threadIdx.x == 0:
            # loss_row = hard (-logp_y) + soft sum_c w_c (-logp_c)
            loss = T(0)
            if valid:
                loss = -hard * ((target_logit - m) - log_s)
                if smoothing > 0:
                    loss -= soft * smooth
            row_loss[row] = loss

    return cross_entropy_kernel


def _class_weights_on_host(weight, num_classes, dtype):
    if weight is None:
        return np.ones(num_classes, dtype=dtype)
    return weight if isinstance(weight, np.ndarray) else to_device(weight).copy_to_host()


def _normalisers(labels, weight, num_classes, dtype, reduction, ignore_index):
    """(denominator of the mean, gradient scale, total class weight), from the host labels
    and the class weights (C numbers, copied to the host when they are on the device)."""
    w = _class_weights_on_host(weight, num_classes, dtype)
    valid = labels != ignore_index
    denominator = float(w[labels[valid]].astype(np.float64).sum()) if reduction == "mean" else 1.0
    with np.errstate(divide="ignore"):
        # every row ignored (or zero weights): inf; the kernel writes 0 for ignored rows
        # and kept rows of weight 0 get 0 * inf = nan, as the reference's 0 / 0
        grad_scale = float(np.float64(1.0) / np.float64(denominator))
    return denominator, grad_scale, float(w.astype(np.float64).sum())


def _cross_entropy_rows(d_logits, d_labels, d_weight, ignore_index, smoothing, total_weight,
                        grad_scale, row_loss, grad):
    """Launch cross_entropy_kernel on device arrays; grad None: loss only."""
    dtype = np.dtype(d_logits.dtype)
    n, c = d_logits.shape
    kernel = _cross_entropy_kernel(dtype, grad is not None)
    kernel[n, row_threads(c)](
        d_logits, d_labels,
        dummy(dtype) if d_weight is None else d_weight, d_weight is not None,
        ignore_index, smoothing, total_weight, grad_scale, row_loss,
        dummy(dtype, 2) if grad is None else grad,
    )


def _reduce(row_loss, denominator, reduction, dtype, on_device):
    if reduction == "none":
        return finish(row_loss, on_device)
    total = np.float64(row_loss.copy_to_host().sum())  # float64, host order: deterministic
    with np.errstate(invalid="ignore", divide="ignore"):
        return dtype.type(total / denominator)


def _cross_entropy(logits, labels, reduction, ignore_index, label_smoothing, weight, with_grad):
    on_device = any_device(logits, weight)
    d_logits = to_device(logits)
    dtype = np.dtype(d_logits.dtype)
    n, c = d_logits.shape
    denominator, grad_scale, total_weight = _normalisers(
        labels, weight, c, dtype, reduction, ignore_index
    )
    # "none" keeps the rows in the logits' dtype; a reduction sums float64 rows
    row_loss = cuda.device_array(n, dtype=dtype if reduction == "none" else np.float64)
    grad = cuda.device_array((n, c), dtype=dtype) if with_grad else None
    _cross_entropy_rows(
        d_logits, to_device(labels), to_device(weight), ignore_index, label_smoothing,
        total_weight, grad_scale, row_loss, grad,
    )
    loss = _reduce(row_loss, denominator, reduction, dtype, on_device)
    return (loss, finish(grad, on_device)) if with_grad else loss


def cross_entropy_forward(logits, labels, reduction, ignore_index, label_smoothing, weight):
    # logits (N, C), labels (N,) -> loss (0-d, or (N,) for "none")
    return _cross_entropy(logits, labels, reduction, ignore_index, label_smoothing, weight, False)


def cross_entropy_with_grad(logits, labels, reduction, ignore_index, label_smoothing, weight):
    # logits (N, C), labels (N,) -> loss, dlogits (N, C)
    return _cross_entropy(logits, labels, reduction, ignore_index, label_smoothing, weight, True)


# --- MSE ------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _mse_kernels(dtype):
    T = numba_type(dtype)

    @cuda.jit
    def mse_partial_kernel(pred, target, partial):
        # pred, target (n,) -> partial (blocks,) float64 sums of squares
        scratch = cuda.shared.array(MAX_WARPS, np.float64)
        total = 0.0  # float64: squares in the input dtype, as the reference, summed wide
        for i in range(cuda.grid(1), pred.shape[0], cuda.gridsize(1)):
            d = pred[i] - target[i]
            total += d * d
        total = block_sum(total, scratch, 0.0)
        if cuda.threadIdx.x == 0:
            partial[cuda.blockIdx.x] = total

    @cuda.jit
    def squared_error_kernel(pred, target, out):
        # pred, target (n,) -> out (n,)
        for i in range(cuda.grid(1), pred.shape[0], cuda.gridsize(1)):
            d = pred[i] - target[i]
            out[i] = d * d

    @cuda.jit
    def mse_backward_kernel(pred, target, divisor, out):
        # pred, target (n,) -> out (n,); d/dpred (pred - target)^2 = 2 (pred - target)
        for i in range(cuda.grid(1), pred.shape[0], cuda.gridsize(1)):
            out[i] = T(2) * (pred[i] - target[i]) / T(divisor)

    return mse_partial_kernel, squared_error_kernel, mse_backward_kernel


def mse_forward(pred, target, reduction):
    # pred, target (any shape) -> 0-d, or elementwise for "none"
    on_device = any_device(pred, target)
    shape = tuple(pred.shape)
    d_pred, d_target = to_device_flat(pred), to_device_flat(target)
    dtype = np.dtype(d_pred.dtype)
    size = d_pred.shape[0]
    partial_kernel, squared_kernel, _ = _mse_kernels(dtype)
    blocks, threads = elementwise_grid(size)
    if reduction == "none":
        out = cuda.device_array(size, dtype=dtype)
        squared_kernel[blocks, threads](d_pred, d_target, out)
        return finish(out.reshape(shape), on_device)
    partial = cuda.device_array(blocks, dtype=np.float64)
    partial_kernel[blocks, threads](d_pred, d_target, partial)
    total = np.float64(partial.copy_to_host().sum())
    return dtype.type(total / size if reduction == "mean" else total)


def mse_backward(pred, target, reduction):
    # pred, target (any shape) -> dpred (same shape)
    on_device = any_device(pred, target)
    shape = tuple(pred.shape)
    d_pred, d_target = to_device_flat(pred), to_device_flat(target)
    dtype = np.dtype(d_pred.dtype)
    size = d_pred.shape[0]
    out = cuda.device_array(size, dtype=dtype)
    blocks, threads = elementwise_grid(size)
    _mse_kernels(dtype)[2][blocks, threads](
        d_pred, d_target, float(size if reduction == "mean" else 1), out
    )
    return finish(out.reshape(shape), on_device)


# --- fused linear cross-entropy -------------------------------------------------------


def linear_cross_entropy(x, w, b, labels, reduction, ignore_index, label_smoothing, weight, chunk_size,
                         precision="fp32"):
    # x (N, IN), w (IN, C), b (C,) or None, labels (N,) -> loss, dx (N, IN), dw (IN, C), db (C,)
    on_device = any_device(x, w, b, weight)
    d_x, d_w, d_b = to_device(x), to_device(w), to_device(b)
    dtype = np.dtype(d_x.dtype)
    n, fan_in = d_x.shape
    c = d_w.shape[1]
    denominator, grad_scale, total_weight = _normalisers(
        labels, weight, c, dtype, reduction, ignore_index
    )
    d_labels = to_device(labels)
    d_weight = to_device(weight)

    row_loss = cuda.device_array(n, dtype=np.float64)
    dx = cuda.device_array((n, fan_in), dtype=dtype)
    dw = cuda.device_array((fan_in, c), dtype=dtype)
    db = cuda.device_array(c, dtype=dtype) if d_b is not None else None

    def forward(x_rows, logits):
        gemm(x_rows, d_w, logits, bias=d_b)

    def rows(logits, start, stop):
        # the gradient overwrites the logits in place: each element is read, then
        # written, by one thread (see cross_entropy_kernel)
        _cross_entropy_rows(
            logits, d_labels[start:stop], d_weight, ignore_index, label_smoothing,
            total_weight, grad_scale, row_loss[start:stop], logits,
        )

    def backward(x_rows, logits, start, stop):
        gemm(logits, d_w, dx[start:stop], trans_b=True)  # dx = dlogits @ w.T
        gemm(x_rows, logits, dw, trans_a=True, accumulate=start > 0)  # dw += x.T @ dlogits
        if db is not None:
            column_sum(logits, db, accumulate=start > 0)  # db += dlogits.sum(0)

    # the chunk buffer holds the only logits ever on the device
    linear_cross_entropy_chunks(d_x, c, chunk_size, lambda shape: cuda.device_array(shape, dtype=dtype), forward,
                                rows, backward)
    loss = _reduce(row_loss, denominator, reduction, dtype, on_device)
    return loss, finish(dx, on_device), finish(dw, on_device), finish(db, on_device)
