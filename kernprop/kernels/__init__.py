"""Kernel backends of kernprop, one sub-package per backend.

Every backend package (``reference``, ``numba_cpu``, ``numba_cuda``, ``cython``) holds
the same family modules with the same function names, so that ``kernprop.ops`` can
dispatch by name alone.  This docstring is the contract every backend fulfils.

Inputs reaching a backend have been validated by ``kernprop.ops``: floating arrays are
float32 or float64, all of one dtype, of the documented shapes, with at least one row
and one column; they may be non-contiguous views (a backend copies to contiguous memory
when it needs to, never writing into a caller's array).  Labels are an int64 array whose
entries are in ``[0, C)`` or equal ``ignore_index``.  Class weights, when given, are a
1-D array of the logits' dtype and length ``C``.  Every function returns new arrays of
the input dtype; only the optimizer steps update their arguments in place.

``matmul``
    Every product takes a trailing ``precision``, one of "fp32", "bf16x3", "bf16"
    (``kernprop.precision``; always "fp32", meaning the dtype's full precision, for
    float64).  A backend computes at least as accurately as asked (a "bf16" request may
    run float32 where no faster bf16 kernel exists) and may report which kernel each
    precision runs through ``kernel_info() -> {precision: description}``, each
    description beginning with what the kernel computes ("fp32 ..." or "bf16 ..."):
    ``Trainer.precision_in_effect`` reads that word to tell a fallback from the real thing.
    A backend whose kernel choice can be refused (a bad ``KERNPROP_*GEMM_KERNEL``) also
    has ``check_kernel(precision)``: it makes the choice now and raises that
    ``ValueError``, so that a ``Trainer`` says so before anything is compiled or run.
    ``matmul(a, b, precision)``: a (M, K) @ b (K, N) -> (M, N).
    ``linear_forward(x, w, b, activation, precision)``: x (N, IN) @ w (IN, OUT) + b (OUT,) with
    ``b`` possibly ``None`` and ``activation`` one of ``None, "relu", "sigmoid", "tanh"``
    applied to the result -> (N, OUT).
    ``linear_backward(x, w, dy, has_bias, need_dx, precision)``: -> ``(dx (N, IN), dw (IN,
    OUT), db (OUT,))`` with ``db`` ``None`` when ``has_bias`` is false and ``dx`` ``None``
    (not computed: a network's first layer) when ``need_dx`` is false.

``activations``
    ``relu_forward(x)``, ``relu_backward(x, dy)`` (gradient 0 at x == 0, as PyTorch);
    ``sigmoid_forward(x)``, ``sigmoid_backward(y, dy)``; ``tanh_forward(x)``,
    ``tanh_backward(y, dy)``, where ``y`` is the forward output.  Any shape.
    ``gelu_forward(x, approximate)``, ``gelu_backward(x, dy, approximate)`` with
    ``approximate`` "none" (``x * Phi(x)`` through erf) or "tanh" (GPT-2's
    approximation), as ``torch.nn.functional.gelu``; the backward takes the input ``x``.

``softmax``
    ``log_softmax_forward(x)``, ``softmax_forward(x)``: x (N, C) -> (N, C) over the last
    axis; ``log_softmax_backward(y, dy)`` with y the forward output -> (N, C).

``losses``
    ``cross_entropy_forward(logits, labels, reduction, ignore_index, label_smoothing,
    weight)`` -> loss, and ``cross_entropy_with_grad(...)`` with the same arguments ->
    ``(loss, dlogits)`` from one fused pass.  ``loss`` is a 0-d value of the logits'
    dtype (reduction "mean" or "sum") or a (N,) array ("none").  ``dlogits`` is the
    gradient of the reduced loss; for "none" it is the gradient of the sum of the rows.
    ``mse_forward(pred, target, reduction)``, ``mse_backward(pred, target, reduction)``.
    ``linear_cross_entropy(x, w, b, labels, reduction, ignore_index, label_smoothing,
    weight, chunk_size, precision)`` -> ``(loss, dx, dw, db)``; ``b`` may be ``None`` (then ``db``
    is ``None``); ``chunk_size`` is a positive int (rows per chunk).  ``reduction`` is
    "mean" or "sum" here.

``normalization``
    ``layer_norm_forward(x, weight, bias, eps)``: x (N, C) normalised over its last axis,
    weight (C,), bias (C,) or ``None``, ``eps`` a float -> ``(y (N, C), mean (N,), rstd
    (N,))`` with ``rstd = 1 / sqrt(var + eps)`` of the biased variance.
    ``layer_norm_backward(x, weight, mean, rstd, dy, has_bias)`` -> ``(dx, dweight,
    dbias)``, ``dbias`` ``None`` when ``has_bias`` is false.

``attention``
    ``attention_forward(q, k, v, causal, scale, precision)``: q (B, H, Lq, D), k (B, H, Lk,
    D), v (B, H, Lk, Dv), ``scale`` a float -> ``(out (B, H, Lq, Dv), lse (B, H, Lq))``,
    ``lse`` each row's log-sum-exp of the scaled, masked scores.  ``causal`` masks key
    ``j > i`` for query ``i`` (top-left aligned, as PyTorch, also when Lq != Lk).
    ``attention_backward(q, k, v, out, lse, dout, causal, scale, precision)`` -> ``(dq,
    dk, dv)``, recomputing the probabilities from ``lse``.  No backend holds a (Lq, Lk)
    score matrix per head: extra memory is at most copies of the inputs (laid out for
    the kernels) and a tile per thread.  ``precision``
    is that of the products, as for ``matmul``.

``embedding``
    ``embedding_forward(ids, table)``: ids an int64 array of any shape with entries in
    ``[0, V)`` (host memory), table (V, C) -> ``ids.shape + (C,)``.
    ``embedding_backward(ids, dy, num_embeddings)``: dy ``ids.shape + (C,)`` -> dtable
    (num_embeddings, C), the rows of repeated ids summed in the order of their
    positions, so the result is the same bits at any thread count.

``optimizers`` (update in place, return ``None``)
    ``sgd_step(param, grad, velocity, lr, momentum, nesterov, weight_decay)``;
    ``velocity`` is ``None`` when momentum is 0.
    ``adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps,
    weight_decay, decoupled)``; ``step`` is the 1-based step count after this update.
    Arrays are C-contiguous and of one shape and dtype.
"""

# The contract's functions per family: what every backend module defines.
FUNCTIONS = {
    "matmul": ("matmul", "linear_forward", "linear_backward"),
    "activations": ("relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward",
                    "tanh_forward", "tanh_backward", "gelu_forward", "gelu_backward"),
    "softmax": ("log_softmax_forward", "softmax_forward", "log_softmax_backward"),
    "losses": ("cross_entropy_forward", "cross_entropy_with_grad", "mse_forward", "mse_backward",
               "linear_cross_entropy"),
    "optimizers": ("sgd_step", "adam_step"),
    "normalization": ("layer_norm_forward", "layer_norm_backward"),
    "attention": ("attention_forward", "attention_backward"),
    "embedding": ("embedding_forward", "embedding_backward"),
}
