"""The public ops: validate the input once, then dispatch to a backend.  No math here.

Every op takes ``backend=None``, meaning the default backend (``kernprop.get_backend()``).
Arrays are float32 or float64 NumPy arrays (or CUDA device arrays on the ``cuda``
backend), all of one dtype; the result has that dtype.  Objects implementing DLPack
(``__dlpack__``: CPU PyTorch tensors, JAX arrays; CuPy or JAX device arrays on ``cuda``)
are read in place, without a copy (``np.from_dlpack``), and the result is a NumPy array
(a device array on ``cuda``).  Lists are refused: call ``np.asarray`` first.  Batches are rows and weights are
``(in_features, out_features)``, so a linear layer is ``x @ w + b``.  No op writes into
its inputs, except the optimizer steps, which update their state in place by design.
"""

from __future__ import annotations

import numpy as np

from .backends import family as _family
from .precision import resolve_precision as _resolve_precision
from .backends import resolve as _resolve
from ._validate import (
    ACTIVATIONS,
    REDUCTIONS,
    as_array,
    check_array,
    check_choice,
    check_int,
    check_label_values,
    check_labels,
    check_no_alias,
    check_same_dtype,
    check_scalar,
    check_shape,
    is_device_array,
    shape_and_dtype,
)

__all__ = [
    "matmul", "linear", "linear_backward",
    "relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
    "log_softmax", "log_softmax_backward", "softmax",
    "cross_entropy", "cross_entropy_with_grad", "mse", "mse_backward", "linear_cross_entropy",
    "default_chunk_size", "sgd_step", "adam_step", "LOGITS_CHUNK_BYTES",
    "gelu", "gelu_backward", "layer_norm", "layer_norm_backward", "attention", "attention_backward",
    "embedding", "embedding_backward", "GELU_APPROXIMATIONS",
]

# torch.nn.functional.gelu's ``approximate``
GELU_APPROXIMATIONS = ("none", "tanh")

# The fused linear cross-entropy holds at most about this many bytes of logits at once.
LOGITS_CHUNK_BYTES = 32 * 1024 * 1024


def _kernels(backend, family):
    name = _resolve(backend)
    return name, _family(name, family)


# --- matmul family -------------------------------------------------------------------


def matmul(a, b, *, precision=None, backend=None):
    """Matrix product ``a @ b`` of 2-D arrays ``a`` (M, K) and ``b`` (K, N) -> (M, N).

    Any strides are accepted (transposed views, non-contiguous slices).  ``precision``
    ("fp32", "bf16x3", "bf16"; None: ``kernprop.get_matmul_precision()``) says how a
    float32 product is computed (``kernprop.precision``); float64 is always float64.
    """
    name, kernels = _kernels(backend, "matmul")
    a, b = as_array("a", a, name), as_array("b", b, name)
    (m, k), _ = check_array("a", a, 2, name)
    (k2, n), _ = check_array("b", b, 2, name)
    check_same_dtype(a=a, b=b)
    if k != k2:
        raise ValueError(f"b must have shape ({k}, N) to match a of shape ({m}, {k}), got ({k2}, {n})")
    return kernels.matmul(a, b, _resolve_precision(precision, a.dtype))


def _linear_operands(name, x, w, b=None, out_name="OUT"):
    """Check ``x`` (N, IN), ``w`` (IN, OUT) and an optional bias ``b`` (OUT,) of one
    dtype; returns (N, IN, OUT, dtype)."""
    (n, fan_in), dtype = check_array("x", x, 2, name)
    (w_in, fan_out), _ = check_array("w", w, 2, name)
    if w_in != fan_in:
        raise ValueError(
            f"w must have shape ({fan_in}, {out_name}) to match x of shape ({n}, {fan_in}), "
            f"got ({w_in}, {fan_out})"
        )
    if b is not None:
        b_shape, _ = check_array("b", b, 1, name)
        check_shape("b", b_shape, (fan_out,), "one bias per column of w")
    check_same_dtype(x=x, w=w, b=b)
    return n, fan_in, fan_out, dtype


def linear(x, w, b=None, *, activation=None, precision=None, backend=None):
    """Linear layer ``activation(x @ w + b)``.

    ``x`` (N, IN), ``w`` (IN, OUT), ``b`` (OUT,) or None -> (N, OUT).  ``activation``
    is None, "relu", "sigmoid" or "tanh", applied in the same pass as the product.
    For its backward, pass the output ``y`` to ``relu_backward`` (``y > 0`` exactly
    where ``x @ w + b > 0``), ``sigmoid_backward`` or ``tanh_backward``, then the result
    to ``linear_backward``.  ``precision`` is the product's, as in ``matmul``.
    """
    name, kernels = _kernels(backend, "matmul")
    x, w, b = as_array("x", x, name), as_array("w", w, name), as_array("b", b, name)
    _linear_operands(name, x, w, b)
    check_choice("activation", activation, ACTIVATIONS)
    return kernels.linear_forward(x, w, b, activation, _resolve_precision(precision, x.dtype))


def linear_backward(x, w, dy, has_bias=True, *, need_dx=True, precision=None, backend=None):
    """Gradients of ``y = x @ w + b``: returns ``(dx (N, IN), dw (IN, OUT), db (OUT,))``.

    ``db`` is None when ``has_bias`` is false.  ``need_dx=False`` skips ``dx`` (returned
    as None), a third of the work, for a layer whose input needs no gradient (a
    network's first layer).  ``precision`` is that of both products, as in ``matmul``.
    """
    name, kernels = _kernels(backend, "matmul")
    x, w, dy = as_array("x", x, name), as_array("w", w, name), as_array("dy", dy, name)
    n, _, fan_out, _ = _linear_operands(name, x, w)
    dy_shape, _ = check_array("dy", dy, 2, name)
    check_shape("dy", dy_shape, (n, fan_out), "rows of x by columns of w")
    check_same_dtype(x=x, w=w, dy=dy)
    return kernels.linear_backward(
        x, w, dy, bool(has_bias), bool(need_dx), _resolve_precision(precision, x.dtype)
    )


# --- activations family --------------------------------------------------------------


def _unary(op, x, backend):
    name, kernels = _kernels(backend, "activations")
    x = as_array("x", x, name)
    check_array("x", x, None, name)
    return getattr(kernels, op)(x)


def _unary_backward(op, saved_name, saved, dy, backend):
    name, kernels = _kernels(backend, "activations")
    saved, dy = as_array(saved_name, saved, name), as_array("dy", dy, name)
    saved_shape, _ = check_array(saved_name, saved, None, name)
    dy_shape, _ = check_array("dy", dy, None, name)
    check_shape("dy", dy_shape, saved_shape, f"the shape of {saved_name}")
    check_same_dtype(**{saved_name: saved, "dy": dy})
    return getattr(kernels, op)(saved, dy)


def relu(x, *, backend=None):
    """``max(x, 0)`` elementwise, any shape."""
    return _unary("relu_forward", x, backend)


def relu_backward(x, dy, *, backend=None):
    """``dy`` where ``x > 0``, else 0 (0 at ``x == 0``, as PyTorch)."""
    return _unary_backward("relu_backward", "x", x, dy, backend)


def sigmoid(x, *, backend=None):
    """``1 / (1 + exp(-x))`` elementwise, without overflow for large ``|x|``."""
    return _unary("sigmoid_forward", x, backend)


def sigmoid_backward(y, dy, *, backend=None):
    """``dy * y * (1 - y)`` where ``y = sigmoid(x)`` is the forward output."""
    return _unary_backward("sigmoid_backward", "y", y, dy, backend)


def tanh(x, *, backend=None):
    """``tanh(x)`` elementwise."""
    return _unary("tanh_forward", x, backend)


def tanh_backward(y, dy, *, backend=None):
    """``dy * (1 - y**2)`` where ``y = tanh(x)`` is the forward output."""
    return _unary_backward("tanh_backward", "y", y, dy, backend)


def gelu(x, approximate="none", *, backend=None):
    """GELU ``x * Phi(x)`` elementwise, any shape, as ``torch.nn.functional.gelu``.

    ``approximate="none"`` uses the normal CDF through ``erf``; ``"tanh"`` uses GPT-2's
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.
    """
    name, kernels = _kernels(backend, "activations")
    x = as_array("x", x, name)
    check_array("x", x, None, name)
    check_choice("approximate", approximate, GELU_APPROXIMATIONS)
    return kernels.gelu_forward(x, approximate)


def gelu_backward(x, dy, approximate="none", *, backend=None):
    """Gradient of ``gelu``: ``dy * d gelu(x) / dx`` with ``x`` the forward *input*."""
    name, kernels = _kernels(backend, "activations")
    x, dy = as_array("x", x, name), as_array("dy", dy, name)
    x_shape, _ = check_array("x", x, None, name)
    dy_shape, _ = check_array("dy", dy, None, name)
    check_shape("dy", dy_shape, x_shape, "the shape of x")
    check_same_dtype(x=x, dy=dy)
    check_choice("approximate", approximate, GELU_APPROXIMATIONS)
    return kernels.gelu_backward(x, dy, approximate)


# --- softmax family ------------------------------------------------------------------


def log_softmax(x, *, backend=None):
    """Log-softmax over the last axis of ``x`` (N, C) -> (N, C).

    Numerically stable: finite for logits of +-1e4; ``-inf`` entries give ``-inf``;
    a row of all ``-inf`` gives NaN, as PyTorch does.
    """
    name, kernels = _kernels(backend, "softmax")
    x = as_array("x", x, name)
    check_array("x", x, 2, name)
    return kernels.log_softmax_forward(x)


def log_softmax_backward(y, dy, *, backend=None):
    """Gradient of log-softmax: ``dy - exp(y) * dy.sum(-1)`` with ``y`` the forward output."""
    name, kernels = _kernels(backend, "softmax")
    y, dy = as_array("y", y, name), as_array("dy", dy, name)
    y_shape, _ = check_array("y", y, 2, name)
    dy_shape, _ = check_array("dy", dy, 2, name)
    check_shape("dy", dy_shape, y_shape, "the shape of y")
    check_same_dtype(y=y, dy=dy)
    return kernels.log_softmax_backward(y, dy)


def softmax(x, *, backend=None):
    """Softmax over the last axis of ``x`` (N, C) -> (N, C), rows summing to 1."""
    name, kernels = _kernels(backend, "softmax")
    x = as_array("x", x, name)
    check_array("x", x, 2, name)
    return kernels.softmax_forward(x)


# --- losses family -------------------------------------------------------------------


def _cross_entropy_args(name, num_rows, num_classes, dtype, labels, ignore_index, label_smoothing, weight):
    """Checks shared by every cross-entropy op; returns (labels as int64, ignore_index,
    label_smoothing as float)."""
    labels = check_labels(labels, num_rows, num_classes, ignore_index)
    label_smoothing = check_scalar("label_smoothing", label_smoothing, 0.0, 1.0)
    if weight is not None:
        weight_shape, weight_dtype = check_array("weight", weight, 1, name)
        check_shape("weight", weight_shape, (num_classes,), "one weight per class")
        if weight_dtype != dtype:
            raise TypeError(f"weight must have the dtype of the logits ({dtype}), got {weight_dtype}")
    return labels, int(ignore_index), label_smoothing


def _logits_args(name, logits, labels, reduction, ignore_index, label_smoothing, weight):
    (n, c), dtype = check_array("logits", logits, 2, name)
    check_choice("reduction", reduction, REDUCTIONS)
    return _cross_entropy_args(name, n, c, dtype, labels, ignore_index, label_smoothing, weight)


def cross_entropy(
    logits, labels, reduction="mean", ignore_index=-100, label_smoothing=0.0, weight=None,
    *, backend=None,
):
    """Softmax cross-entropy of ``logits`` (N, C) against integer ``labels`` (N,).

    Exactly ``torch.nn.functional.cross_entropy``: rows whose label is ``ignore_index``
    count 0 and are left out of the mean; ``weight`` (C,) weighs each class and the
    weighted mean divides by the sum of the weights of the non-ignored rows' labels;
    ``label_smoothing`` mixes the target with the uniform distribution.  ``reduction``
    "mean" or "sum" gives a 0-d value, "none" the (N,) per-row losses.  A mean over
    rows that are all ignored is NaN (0/0), as in PyTorch.
    """
    name, kernels = _kernels(backend, "losses")
    logits, labels, weight = as_array("logits", logits, name), as_array("labels", labels, name), \
        as_array("weight", weight, name)
    labels, ignore_index, label_smoothing = _logits_args(
        name, logits, labels, reduction, ignore_index, label_smoothing, weight
    )
    return kernels.cross_entropy_forward(logits, labels, reduction, ignore_index, label_smoothing, weight)


def cross_entropy_with_grad(
    logits, labels, reduction="mean", ignore_index=-100, label_smoothing=0.0, weight=None,
    *, backend=None,
):
    """``cross_entropy`` and its gradient from one fused pass: returns ``(loss, dlogits)``.

    Without weights or smoothing, ``dlogits = (softmax(logits) - onehot(labels)) / N``
    for "mean".  With ``reduction="none"`` it is the gradient of the sum of the rows.
    """
    name, kernels = _kernels(backend, "losses")
    logits, labels, weight = as_array("logits", logits, name), as_array("labels", labels, name), \
        as_array("weight", weight, name)
    labels, ignore_index, label_smoothing = _logits_args(
        name, logits, labels, reduction, ignore_index, label_smoothing, weight
    )
    return kernels.cross_entropy_with_grad(logits, labels, reduction, ignore_index, label_smoothing, weight)


def _mse_args(name, pred, target, reduction):
    pred_shape, _ = check_array("pred", pred, None, name)
    target_shape, _ = check_array("target", target, None, name)
    check_shape("target", target_shape, pred_shape, "the shape of pred")
    check_same_dtype(pred=pred, target=target)
    check_choice("reduction", reduction, REDUCTIONS)


def mse(pred, target, reduction="mean", *, backend=None):
    """Mean squared error ``mean((pred - target)**2)`` ("sum" sums, "none" is elementwise)."""
    name, kernels = _kernels(backend, "losses")
    pred, target = as_array("pred", pred, name), as_array("target", target, name)
    _mse_args(name, pred, target, reduction)
    return kernels.mse_forward(pred, target, reduction)


def mse_backward(pred, target, reduction="mean", *, backend=None):
    """Gradient of ``mse`` with respect to ``pred``: ``2 (pred - target)``, divided by
    ``pred.size`` for "mean" ("none" gives the gradient of the sum)."""
    name, kernels = _kernels(backend, "losses")
    pred, target = as_array("pred", pred, name), as_array("target", target, name)
    _mse_args(name, pred, target, reduction)
    return kernels.mse_backward(pred, target, reduction)


def default_chunk_size(num_classes: int, itemsize: int) -> int:
    """Rows per chunk so that one chunk of logits stays within ``LOGITS_CHUNK_BYTES``."""
    num_classes = check_int("num_classes", num_classes, 1)
    itemsize = check_int("itemsize", itemsize, 1)
    return max(1, LOGITS_CHUNK_BYTES // (num_classes * itemsize))


def linear_cross_entropy(
    x, w, b, labels, reduction="mean", ignore_index=-100, label_smoothing=0.0, weight=None,
    chunk_size=None, *, precision=None, backend=None,
):
    """Linear layer + cross-entropy, forward and backward fused: ``(loss, dx, dw, db)``.

    ``x`` (N, IN), ``w`` (IN, C), ``b`` (C,) or None, ``labels`` (N,).  The loss is
    ``cross_entropy(x @ w + b, labels, ...)`` and the gradients are those of that loss.
    The rows are processed ``chunk_size`` at a time so that the full (N, C) logits are
    never held at once (default: chunks of about 32 MiB of logits).  ``reduction`` is
    "mean" or "sum".  ``db`` is None when ``b`` is None.  ``precision`` is that of
    the three products (logits, dx, dw), as in ``matmul``; the softmax and the loss are
    always computed in the input's dtype.
    """
    name, kernels = _kernels(backend, "losses")
    x, w, b = as_array("x", x, name), as_array("w", w, name), as_array("b", b, name)
    labels, weight = as_array("labels", labels, name), as_array("weight", weight, name)
    n, _, c, dtype = _linear_operands(name, x, w, b, out_name="C")
    check_choice("reduction", reduction, ("mean", "sum"))
    labels, ignore_index, label_smoothing = _cross_entropy_args(
        name, n, c, dtype, labels, ignore_index, label_smoothing, weight
    )
    if chunk_size is None:
        chunk_size = default_chunk_size(c, dtype.itemsize)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    else:
        chunk_size = check_int("chunk_size", chunk_size, 1)
    return kernels.linear_cross_entropy(
        x, w, b, labels, reduction, ignore_index, label_smoothing, weight, int(chunk_size),
        _resolve_precision(precision, dtype),
    )


# --- normalization family ------------------------------------------------------------


def _row_vector(name, vector, channels, backend, what):
    shape, _ = check_array(name, vector, 1, backend)
    check_shape(name, shape, (channels,), what)


def layer_norm(x, weight, bias=None, *, eps=1e-5, backend=None):
    """Layer normalization of ``x`` (N, C) over its last axis: returns ``(y, mean, rstd)``.

    ``y = (x - mean) * rstd * weight + bias`` with ``rstd = 1 / sqrt(var + eps)`` of the
    biased variance, as ``torch.nn.functional.layer_norm(x, (C,), weight, bias, eps)``.
    ``weight`` and ``bias`` (None: no bias) are (C,); ``mean`` and ``rstd`` (N,) are
    what ``layer_norm_backward`` needs.
    """
    name, kernels = _kernels(backend, "normalization")
    x, weight, bias = as_array("x", x, name), as_array("weight", weight, name), as_array("bias", bias, name)
    (_, channels), _ = check_array("x", x, 2, name)
    _row_vector("weight", weight, channels, name, "one per column of x")
    if bias is not None:
        _row_vector("bias", bias, channels, name, "one per column of x")
    check_same_dtype(x=x, weight=weight, bias=bias)
    eps = check_scalar("eps", eps, 0.0)
    return kernels.layer_norm_forward(x, weight, bias, eps)


def layer_norm_backward(x, weight, mean, rstd, dy, has_bias=True, *, backend=None):
    """Gradients of ``layer_norm``: returns ``(dx (N, C), dweight (C,), dbias (C,))``.

    ``mean`` and ``rstd`` are the forward's; ``dbias`` is None when ``has_bias`` is false.
    """
    name, kernels = _kernels(backend, "normalization")
    x, weight, dy = as_array("x", x, name), as_array("weight", weight, name), as_array("dy", dy, name)
    mean, rstd = as_array("mean", mean, name), as_array("rstd", rstd, name)
    (rows, channels), _ = check_array("x", x, 2, name)
    _row_vector("weight", weight, channels, name, "one per column of x")
    for stat_name, stat in (("mean", mean), ("rstd", rstd)):
        _row_vector(stat_name, stat, rows, name, "one per row of x")
    dy_shape, _ = check_array("dy", dy, 2, name)
    check_shape("dy", dy_shape, (rows, channels), "the shape of x")
    check_same_dtype(x=x, weight=weight, mean=mean, rstd=rstd, dy=dy)
    return kernels.layer_norm_backward(x, weight, mean, rstd, dy, bool(has_bias))


# --- attention family ----------------------------------------------------------------


def _attention_operands(name, q, k, v, scale):
    """Check q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv); returns the scale."""
    (batch, heads, _, depth), _ = check_array("q", q, 4, name)
    k_shape, _ = check_array("k", k, 4, name)
    v_shape, _ = check_array("v", v, 4, name)
    keys = k_shape[2]
    check_shape("k", k_shape, (batch, heads, keys, depth), "(B, H, Lk, D) with q's B, H and D")
    if tuple(v_shape[:3]) != (batch, heads, keys):
        raise ValueError(f"v must have shape ({batch}, {heads}, {keys}, Dv) (k's B, H and Lk), "
                         f"got {tuple(v_shape)}")
    check_same_dtype(q=q, k=k, v=v)
    if scale is None:
        return 1.0 / float(np.sqrt(depth))
    return check_scalar("scale", scale)


def attention(q, k, v, *, causal=False, scale=None, precision=None, backend=None):
    """Fused scaled dot-product attention: returns ``(out, lse)``.

    ``q`` (B, H, Lq, D), ``k`` (B, H, Lk, D), ``v`` (B, H, Lk, Dv) -> ``out`` (B, H, Lq,
    Dv), as ``torch.nn.functional.scaled_dot_product_attention(q, k, v,
    is_causal=causal, scale=scale)`` (default scale ``1 / sqrt(D)``); ``lse`` (B, H, Lq)
    is each row's log-sum-exp of the scaled, masked scores, for the backward.  ``causal``
    masks key ``j > i`` for query ``i``, aligned top-left as PyTorch does (so every
    query sees key 0 and no row is fully masked).  One pass over blocks of keys with an
    online softmax (FlashAttention-2): no (Lq, Lk) score matrix is held, stable for
    scores of +-1e4.  ``precision`` is that of the products, as in ``matmul``.
    """
    name, kernels = _kernels(backend, "attention")
    q, k, v = as_array("q", q, name), as_array("k", k, name), as_array("v", v, name)
    scale = _attention_operands(name, q, k, v, scale)
    return kernels.attention_forward(q, k, v, bool(causal), scale, _resolve_precision(precision, q.dtype))


def attention_backward(q, k, v, out, lse, dout, *, causal=False, scale=None, precision=None, backend=None):
    """Gradients of ``attention``: returns ``(dq, dk, dv)`` shaped as ``q``, ``k``, ``v``.

    ``out`` and ``lse`` are the forward's; the probabilities are recomputed from
    ``lse`` block by block, as FlashAttention's backward does.  ``causal`` and ``scale``
    must be the forward's.
    """
    name, kernels = _kernels(backend, "attention")
    q, k, v = as_array("q", q, name), as_array("k", k, name), as_array("v", v, name)
    out, lse, dout = as_array("out", out, name), as_array("lse", lse, name), as_array("dout", dout, name)
    scale = _attention_operands(name, q, k, v, scale)
    q_shape, _ = shape_and_dtype(q)
    v_shape, _ = shape_and_dtype(v)
    out_shape = (*q_shape[:3], v_shape[3])
    for array_name, array in (("out", out), ("dout", dout)):
        shape, _ = check_array(array_name, array, 4, name)
        check_shape(array_name, shape, out_shape, "(B, H, Lq, Dv) of q and v")
    lse_shape, _ = check_array("lse", lse, 3, name)
    check_shape("lse", lse_shape, q_shape[:3], "(B, H, Lq) of q")
    check_same_dtype(q=q, k=k, v=v, out=out, lse=lse, dout=dout)
    return kernels.attention_backward(
        q, k, v, out, lse, dout, bool(causal), scale, _resolve_precision(precision, q.dtype)
    )


# --- embedding family ----------------------------------------------------------------


def _embedding_ids(ids, num_embeddings):
    """ids: a host integer array of any shape, each in [0, num_embeddings); as int64."""
    if is_device_array(ids):
        raise TypeError("ids must be a host numpy.ndarray of integers (the ids are checked on the host), "
                        "got a CUDA device array")
    if not isinstance(ids, np.ndarray):
        hint = "; call np.asarray(ids) first" if isinstance(ids, (list, tuple)) else ""
        raise TypeError(f"ids must be a numpy.ndarray of integers, got {type(ids).__name__}{hint}")
    if ids.size == 0:
        raise ValueError(f"ids must not be empty, got shape {ids.shape}")
    return check_label_values("ids", ids, num_embeddings, None)


def embedding(ids, table, *, backend=None):
    """Rows of ``table`` (V, C) at ``ids`` (integers, any shape) -> ``ids.shape + (C,)``.

    As ``torch.nn.functional.embedding``.  An id outside ``[0, V)`` is a ValueError
    naming the first bad position.
    """
    name, kernels = _kernels(backend, "embedding")
    ids, table = as_array("ids", ids, name), as_array("table", table, name)
    (vocabulary, _), _ = check_array("table", table, 2, name)
    ids = _embedding_ids(ids, vocabulary)
    return kernels.embedding_forward(ids, table)


def embedding_backward(ids, dy, num_embeddings, *, backend=None):
    """Gradient of ``embedding`` with respect to the table: (num_embeddings, C).

    ``dy`` is ``ids.shape + (C,)``; the rows of repeated ids are summed in the order of
    their positions, so the result is the same bits at any thread count.
    """
    name, kernels = _kernels(backend, "embedding")
    ids, dy = as_array("ids", ids, name), as_array("dy", dy, name)
    num_embeddings = check_int("num_embeddings", num_embeddings, 1)
    ids = _embedding_ids(ids, num_embeddings)
    dy_shape, _ = check_array("dy", dy, ids.ndim + 1, name)
    check_shape("dy", dy_shape, (*ids.shape, dy_shape[-1]), "ids.shape + (C,)")
    return kernels.embedding_backward(ids, dy, num_embeddings)


# --- optimizers family ---------------------------------------------------------------


def _optimizer_state(name, param, **state):
    """param and its gradient/state arrays: one shape, one dtype, C-contiguous, writable
    (they are updated in place, so a hidden copy would silently drop the update), and
    no two sharing memory (the backends read and write them in different orders)."""
    shape, _ = check_array("param", param, None, name)
    for state_name, array in {"param": param, **state}.items():
        if array is None:
            if state_name == "velocity":  # SGD without momentum keeps none
                continue
            raise TypeError(f"{state_name} must be a numpy.ndarray, got None")
        array_shape, _ = check_array(state_name, array, None, name)
        check_shape(state_name, array_shape, shape, "the shape of param")
        if isinstance(array, np.ndarray) and not array.flags.c_contiguous:
            raise ValueError(f"{state_name} must be C-contiguous (it is updated in place)")
        if isinstance(array, np.ndarray) and state_name != "grad" and not array.flags.writeable:
            raise ValueError(f"{state_name} must be writable (it is updated in place)")
    check_same_dtype(param=param, **state)
    check_no_alias(param=param, **state)


def sgd_step(
    param, grad, velocity=None, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
    backend=None,
):
    """One SGD update of ``param`` in place, as ``torch.optim.SGD`` (dampening 0).

    ``g = grad + weight_decay * param``; with momentum, ``velocity = momentum * velocity
    + g`` (in place; start it at zeros) and the step uses ``velocity`` (or ``g +
    momentum * velocity`` with ``nesterov``); ``param -= lr * step``.
    """
    name, kernels = _kernels(backend, "optimizers")
    # DLPack views share the tensors' memory, so the in-place update reaches them.
    param, grad, velocity = as_array("param", param, name), as_array("grad", grad, name), \
        as_array("velocity", velocity, name)
    lr = check_scalar("lr", lr, 0.0)
    momentum = check_scalar("momentum", momentum, 0.0, 1.0)
    weight_decay = check_scalar("weight_decay", weight_decay, 0.0)
    if momentum and velocity is None:
        raise ValueError("velocity is required when momentum > 0 (an array of zeros to start)")
    if nesterov and not momentum:
        raise ValueError("nesterov requires momentum > 0")
    _optimizer_state(name, param, grad=grad, velocity=velocity if momentum else None)
    if momentum and param.dtype.type(momentum) == 0:
        # The kernels compute in the parameters' dtype, where this momentum is 0 (no
        # velocity update) while the reference keeps it: refuse rather than differ.
        raise ValueError(f"momentum must be 0 or at least {np.finfo(param.dtype).smallest_subnormal} "
                         f"for {param.dtype} parameters (it rounds to 0), got {momentum}")
    kernels.sgd_step(param, grad, velocity if momentum else None, lr, momentum, bool(nesterov), weight_decay)


def adam_step(
    param, grad, exp_avg, exp_avg_sq, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0.0, decoupled=False, backend=None,
):
    """One Adam update of ``param``, ``exp_avg`` and ``exp_avg_sq`` in place, as
    ``torch.optim.Adam`` (``decoupled=True``: ``torch.optim.AdamW``).

    ``step`` is the 1-based count of this update (for the bias corrections).
    """
    name, kernels = _kernels(backend, "optimizers")
    param, grad = as_array("param", param, name), as_array("grad", grad, name)
    exp_avg, exp_avg_sq = as_array("exp_avg", exp_avg, name), as_array("exp_avg_sq", exp_avg_sq, name)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an int >= 1 (the count of this update), got {step!r}")
    step = check_int("step", step, 1)
    lr = check_scalar("lr", lr, 0.0)
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    beta1 = check_scalar("betas[0]", beta1, 0.0, 1.0, high_open=True)
    beta2 = check_scalar("betas[1]", beta2, 0.0, 1.0, high_open=True)
    eps = check_scalar("eps", eps, 0.0)
    weight_decay = check_scalar("weight_decay", weight_decay, 0.0)
    _optimizer_state(name, param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    kernels.adam_step(
        param, grad, exp_avg, exp_avg_sq, int(step), lr, beta1, beta2, eps, weight_decay, bool(decoupled)
    )
