"""``kernprop.warmup``: compile (or load from the cache) every kernel a training run needs.

Numba compiles a kernel on its first call for each signature (dtype, layout, read-only
flag); with ``cache=True`` the machine code is written to ``__pycache__`` and a later
process only loads it.  ``warmup`` calls each op on small arrays, so that the first
step of a training run is not the one that pays.  It covers: matmul and linear (serial,
parallel and one-thread GEMM paths, contiguous and transposed operands), linear_backward, every
activation forward and backward, log-softmax / softmax and backward, cross-entropy with
and without gradient (with and without class weights), MSE, the fused linear
cross-entropy, and the SGD (plain and momentum) and Adam steps.

``compiling(before)`` tells a cold start from a cached one: it calls ``before`` just
before Numba's first compilation inside its block.  Numba raises its ``numba:compile``
event only for a kernel that is neither in memory nor in its on-disk cache (beside the
module in ``__pycache__``, or in ``NUMBA_CACHE_DIR``), after the cache lookup and
before the compiler runs; a kernel loaded from the cache raises nothing.  So the answer
is exact for the kernels the block calls, wherever the cache lives, at no cost.
``Trainer.warmup`` compiles (or loads) exactly the kernels one ``Trainer.fit`` calls;
``kernprop train`` runs it inside ``compiling`` before the first epoch.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from . import ops
from .backends import get_num_threads, set_num_threads

__all__ = ["warmup", "compiling", "Compiles"]


class Compiles:
    """What Numba compiled inside a ``compiling`` block: ``kernels`` (top-level
    compilations, each a kernel and signature missing from the cache) and ``seconds``
    (their time; the kernels and helpers they pull in are counted inside them)."""

    def __init__(self, before):
        self.kernels = 0
        self.seconds = 0.0
        self._before = before
        self._depth = 0  # compiling a kernel compiles its callees: only the outermost counts
        self._start = 0.0

    def _started(self):
        self._depth += 1  # first: Numba ends the event even when ``before`` raises
        if self._depth == 1:
            self.kernels += 1
            self._start = time.perf_counter()
            if self.kernels == 1 and self._before is not None:
                self._before()  # may raise to stop at the first compilation (kernprop.first_run)

    def _ended(self):
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._start


@contextlib.contextmanager
def compiling(before=None):
    """Within the block, call ``before()`` once, just before Numba compiles its first
    kernel (one missing from its on-disk cache); yields a ``Compiles`` that counts the
    compilations.  Kernels loaded from the cache call nothing.  Without Numba, nothing
    compiles and nothing is called.

    Example::

        with compiling(lambda: print("compiling kernels ...")) as compiles:
            trainer.warmup(X, y)
        print(f"{compiles.kernels} kernels compiled in {compiles.seconds:.1f} s")
    """
    compiles = Compiles(before)
    try:
        from numba.core import event
    except ImportError:
        yield compiles
        return

    class Listener(event.Listener):  # compilations hold Numba's global compiler lock: one at a time
        def on_start(self, _):
            compiles._started()

        def on_end(self, _):
            compiles._ended()

    with event.install_listener("numba:compile", Listener()):
        yield compiles


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

        # GEMM: a tiny product takes the serial path, a larger one the parallel one, and
        # at one thread (the busy-core guard's choice, kernprop.threadpolicy) the blocked
        # loops compiled without threads.
        threads = get_num_threads()
        for m, k, n, one_thread in ((3, 5, 7, False), (64, 96, 384, False), (64, 96, 384, True)):
            if one_thread and threads == 1:
                continue
            if one_thread:
                set_num_threads(1)
            try:
                x, w, b, dy = array(m, k), array(k, n), array(n), array(m, n)
                ops.matmul(x, w, backend=backend)
                for activation in (None, "relu", "sigmoid", "tanh"):
                    ops.linear(x, w, b, activation=activation, backend=backend)
                ops.linear_backward(x, w, dy, True, backend=backend)
            finally:
                if one_thread:
                    set_num_threads(threads)
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
