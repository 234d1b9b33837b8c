"""``kernprop.warmup``: compile (or load from the cache) every kernel a training run needs.

Numba compiles a kernel on its first call for each signature (dtype, layout, read-only
flag); with ``cache=True`` the machine code is written to ``__pycache__`` and a later
process only loads it.  ``warmup`` calls each op on small arrays, so that the first
step of a training run is not the one that pays.  It covers: matmul and linear (serial
and parallel GEMM paths, contiguous and transposed operands), linear_backward, every
activation forward and backward, log-softmax / softmax and backward, cross-entropy with
and without gradient (with and without class weights), MSE, the fused linear
cross-entropy, and the SGD (plain and momentum) and Adam steps.
"""

from __future__ import annotations

import time

import numpy as np

from . import ops

__all__ = ["warmup"]


def _to_backend(backend, array):
    if backend == "cuda":
        from numba import cuda

        return cuda.to_device(array)
    return array


def warmup(backend="numba", dtypes=("float32",)) -> float:
    """Call every op on small arrays of each dtype in ``dtypes`` on ``backend``, so
    that its kernels are compiled (first run) or loaded from Numba's cache (later runs).

    Returns the seconds it took.  Example: ``kernprop.warmup("numba", ("float32",))``.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        dtype = np.dtype(dtype)

        def array(*shape):
            return _to_backend(backend, rng.standard_normal(shape).astype(dtype))

        # GEMM: a tiny product takes the serial path, a larger one the parallel one.
        for m, k, n in ((3, 5, 7), (64, 96, 384)):
            x, w, b, dy = array(m, k), array(k, n), array(n), array(m, n)
            ops.matmul(x, w, backend=backend)
            for activation in (None, "relu", "sigmoid", "tanh"):
                ops.linear(x, w, b, activation=activation, backend=backend)
            ops.linear_backward(x, w, dy, True, backend=backend)
        # Elementwise and row kernels: a small input runs their serial build, a larger
        # one (above numba_cpu._jit.SERIAL_ELEMENTS) the parallel one.
        for rows, cols in ((4, 6), (64, 300)):
            x, dy = array(rows, cols), array(rows, cols)
            for forward, backward, saved in (
                (ops.relu, ops.relu_backward, "x"),
                (ops.sigmoid, ops.sigmoid_backward, "y"),
                (ops.tanh, ops.tanh_backward, "y"),
            ):
                y = forward(x, backend=backend)
                backward(x if saved == "x" else y, dy, backend=backend)
            y = ops.log_softmax(x, backend=backend)
            ops.log_softmax_backward(y, dy, backend=backend)
            ops.softmax(x, backend=backend)
            labels = rng.integers(0, cols, rows)
            class_weight = _to_backend(backend, np.ones(cols, dtype=dtype))
            for weight in (None, class_weight):
                ops.cross_entropy(x, labels, weight=weight, backend=backend)
                ops.cross_entropy_with_grad(x, labels, weight=weight, backend=backend)
            ops.mse(x, dy, backend=backend)
            ops.mse_backward(x, dy, backend=backend)
            size = rows * cols
            param, grad = array(size), array(size)
            ops.sgd_step(param, grad, lr=0.1, backend=backend)
            ops.sgd_step(param, grad, array(size), lr=0.1, momentum=0.9, backend=backend)
            ops.adam_step(param, grad, array(size), _to_backend(backend, np.ones(size, dtype=dtype)), 1,
                          backend=backend)
        labels = np.array([0, 1, 5, 2], dtype=np.int64)
        features, w, b = array(4, 3), array(3, 6), array(6)
        ops.linear_cross_entropy(features, w, b, labels, chunk_size=2, backend=backend)
    return time.perf_counter() - start
