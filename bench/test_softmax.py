"""softmax family: log-softmax forward and backward, softmax, over the last axis.

Shapes (N, C) from 32 short rows to vocabulary-wide rows (1024 x 32000) and many short
rows (65536 x 10).  torch runs ``log_softmax``, ``softmax`` and aten's
``_log_softmax_backward_data``.
"""

import numpy as np
import pytest

import kernprop
from benchlib import DTYPE, Device, Shape, backend_params, inputs, reference, shape_params

SHAPES = shape_params(
    Shape("small", (32, 64)), Shape("mlp", (256, 512)), Shape("large", (4096, 1000)),
    Shape("large", (65536, 10)), Shape("large", (1024, 32000)),
)


def _data(shape):
    def make(rng):
        x = rng.standard_normal(shape.dims, dtype=np.float32) * 3
        y = kernprop.log_softmax(x, backend="numpy")
        dy = rng.uniform(-1, 1, shape.dims).astype(DTYPE)
        return x, y, dy

    return inputs(("softmax", shape), make)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", ["log_softmax", "log_softmax_backward", "softmax"])
def test_softmax(harness, op, shape, backend):
    # x (N, C) -> (N, C); backward: (y (N, C), dy (N, C)) -> dx (N, C)
    x, y, dy = _data(shape)
    size = int(np.prod(shape.dims))
    dev = Device(backend)
    if op == "log_softmax_backward":
        args, arrays = (y, dy), 3
        fn_torch = lambda t, a, b: t.ops.aten._log_softmax_backward_data(b, a, 1, t.float32)  # noqa: E731
    else:
        args, arrays = (x,), 2
        fn_torch = (lambda t, a: t.log_softmax(a, 1)) if op == "log_softmax" else (lambda t, a: t.softmax(a, 1))
    function = getattr(kernprop, op)
    dargs = [dev.put(a) for a in args]
    if backend == "torch":
        fn = lambda: fn_torch(dev.torch, *dargs)  # noqa: E731
    else:
        fn = lambda: function(*dargs, backend=backend)  # noqa: E731
    want = lambda: reference((op, shape), lambda: function(*args, backend="numpy"))  # noqa: E731
    harness.run(op, shape, backend, fn, want=want, device=dev, family="softmax",
                flops=4 * size, bytes=4 * arrays * size)
