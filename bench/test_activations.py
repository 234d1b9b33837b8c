"""activations family: ReLU, sigmoid, tanh, forward and backward, elementwise.

Memory-bound: the report gives GB/s from the bytes read and written (4 per float32).
torch runs ``relu``/``sigmoid``/``tanh`` and the aten backward ops autograd calls
(``threshold_backward``, ``sigmoid_backward``, ``tanh_backward``).
"""

import numpy as np
import pytest

import kernprop
from benchlib import DTYPE, Device, Shape, backend_params, inputs, reference, shape_params

SHAPES = shape_params(Shape("small", (32, 64)), Shape("mlp", (256, 512)), Shape("large", (4096, 1000)))

# op -> (kernprop function, torch function of (saved, dy), arrays read and written)
OPS = {
    "relu": (kernprop.relu, lambda t, x, dy: t.relu(x), 2),
    "relu_backward": (kernprop.relu_backward, lambda t, x, dy: t.ops.aten.threshold_backward(dy, x, 0), 3),
    "sigmoid": (kernprop.sigmoid, lambda t, x, dy: t.sigmoid(x), 2),
    "sigmoid_backward": (kernprop.sigmoid_backward, lambda t, y, dy: t.ops.aten.sigmoid_backward(dy, y), 3),
    "tanh": (kernprop.tanh, lambda t, x, dy: t.tanh(x), 2),
    "tanh_backward": (kernprop.tanh_backward, lambda t, y, dy: t.ops.aten.tanh_backward(dy, y), 3),
}


def _data(shape):
    def make(rng):
        x = rng.uniform(-3, 3, shape.dims).astype(DTYPE)
        y = rng.uniform(0.01, 0.99, shape.dims).astype(DTYPE)  # a forward output of sigmoid/tanh
        dy = rng.uniform(-1, 1, shape.dims).astype(DTYPE)
        return x, y, dy

    return inputs(("activations", shape), make)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", list(OPS))
def test_activation(harness, op, shape, backend):
    # x (N, C) -> (N, C); backward: (saved (N, C), dy (N, C)) -> dx (N, C)
    function, torch_function, arrays = OPS[op]
    x, y, dy = _data(shape)
    saved = x if op in ("relu", "relu_backward", "sigmoid", "tanh") else y
    args = (saved,) if op in ("relu", "sigmoid", "tanh") else (saved, dy)
    dev = Device(backend)
    dargs = [dev.put(a) for a in args]
    if backend == "torch":
        fn = lambda: torch_function(dev.torch, dargs[0], dargs[-1])  # noqa: E731
    else:
        fn = lambda: function(*dargs, backend=backend)  # noqa: E731
    want = lambda: reference((op, shape), lambda: function(*args, backend="numpy"))  # noqa: E731
    harness.run(op, shape, backend, fn, want=want, device=dev, family="activations",
                flops=int(np.prod(shape.dims)), bytes=4 * arrays * int(np.prod(shape.dims)))
