"""matmul family: GEMM, linear forward (bias + ReLU in the same pass), linear backward.

Shapes are (M, K, N): x (M, K) @ w (K, N).  torch runs ``mm``, ``relu(addmm)`` and the
three products of the backward; GFLOP/s in the report count 2*M*K*N per product.
"""

import numpy as np
import pytest

import kernprop
from benchlib import DTYPE, Device, Shape, backend_params, inputs, reference, shape_params

SMALL = Shape("small", (32, 64, 64))
MLP = Shape("mlp", (256, 784, 512))
GEMM_SHAPES = shape_params(SMALL, MLP, Shape("large", (1024, 1024, 1024)), Shape("large", (2048, 2048, 2048)))
LINEAR_SHAPES = shape_params(SMALL, MLP, Shape("large", (4096, 1000, 1000)))


def _data(shape):
    m, k, n = shape.dims

    def make(rng):
        x = rng.uniform(-1, 1, (m, k)).astype(DTYPE)
        w = (rng.uniform(-1, 1, (k, n)) / np.sqrt(k)).astype(DTYPE)
        b = rng.uniform(-0.1, 0.1, n).astype(DTYPE)
        dy = rng.uniform(-1, 1, (m, n)).astype(DTYPE)
        return x, w, b, dy

    return inputs(("matmul", shape), make)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", GEMM_SHAPES)
@pytest.mark.parametrize("op", ["matmul"])
def test_matmul(harness, op, shape, backend):
    # a (M, K) @ b (K, N) -> (M, N)
    m, k, n = shape.dims
    x, w, _, _ = _data(shape)
    dev = Device(backend)
    a, b = dev.put(x), dev.put(w)
    if backend == "torch":
        fn = lambda: dev.torch.mm(a, b)  # noqa: E731
    else:
        fn = lambda: kernprop.matmul(a, b, backend=backend)  # noqa: E731
    want = lambda: reference((op, shape), lambda: kernprop.matmul(x, w, backend="numpy"))  # noqa: E731
    harness.run(op, shape, backend, fn, want=want, device=dev, family="matmul",
                flops=2 * m * k * n, bytes=4 * (m * k + k * n + m * n))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("op", ["linear"])
def test_linear_relu(harness, op, shape, backend):
    # relu(x (M, K) @ w (K, N) + b (N,)) -> (M, N)
    m, k, n = shape.dims
    x, w, b, _ = _data(shape)
    dev = Device(backend)
    xd, wd, bd = dev.put(x), dev.put(w), dev.put(b)
    if backend == "torch":
        t = dev.torch
        fn = lambda: t.relu(t.addmm(bd, xd, wd))  # noqa: E731
    else:
        fn = lambda: kernprop.linear(xd, wd, bd, activation="relu", backend=backend)  # noqa: E731
    want = lambda: reference((op, shape), lambda: kernprop.linear(x, w, b, activation="relu", backend="numpy"))  # noqa: E731
    harness.run(op, shape, backend, fn, want=want, device=dev, family="matmul",
                flops=2 * m * k * n + 2 * m * n, bytes=4 * (m * k + k * n + n + m * n))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("op", ["linear_backward"])
def test_linear_backward(harness, op, shape, backend):
    # dy (M, N) -> dx = dy @ w.T (M, K), dw = x.T @ dy (K, N), db = dy.sum(0) (N,)
    m, k, n = shape.dims
    x, w, _, dy = _data(shape)
    dev = Device(backend)
    xd, wd, dyd = dev.put(x), dev.put(w), dev.put(dy)
    if backend == "torch":
        fn = lambda: (dyd @ wd.T, xd.T @ dyd, dyd.sum(0))  # noqa: E731
    else:
        fn = lambda: kernprop.linear_backward(xd, wd, dyd, True, backend=backend)  # noqa: E731
    want = lambda: reference((op, shape), lambda: kernprop.linear_backward(x, w, dy, True, backend="numpy"))  # noqa: E731
    harness.run(op, shape, backend, fn, want=want, device=dev, family="matmul",
                flops=4 * m * k * n + m * n, bytes=4 * 2 * (m * k + k * n + m * n) + 4 * n)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", GEMM_SHAPES)
@pytest.mark.parametrize("op", ["matmul_bf16"])
def test_matmul_bf16(harness, op, shape, backend):
    # a (M, K) @ b (K, N) -> (M, N) with bf16 operands and float32 accumulation:
    # kernprop's precision="bf16" (float32 in and out, rounded while packing), torch on
    # bf16 tensors (converted once, outside the timing: its best case), and NumPy's
    # float32 product as the yardstick a NumPy user has.
    m, k, n = shape.dims
    x, w, _, _ = _data(shape)
    dev = Device(backend)
    if backend == "torch":
        a, b = dev.put(x).bfloat16(), dev.put(w).bfloat16()
        fn = lambda: dev.torch.mm(a, b)  # noqa: E731
    elif backend == "numpy":
        fn = lambda: x @ w  # noqa: E731
    else:
        a, b = dev.put(x), dev.put(w)
        fn = lambda: kernprop.matmul(a, b, precision="bf16", backend=backend)  # noqa: E731

    def check(result):
        got = result.float().numpy() if backend == "torch" else np.asarray(dev.host(result))
        want = reference((op, shape), lambda: kernprop.matmul(x, w, precision="bf16", backend="numpy"))
        scale = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64)
        # torch rounds its bf16 output too: one more bf16 rounding of the result
        assert np.all(np.abs(got - want) <= 2.0**-7 * scale + 2.0**-8 * np.abs(want)), f"{op} {shape} on {backend}"

    harness.run(op, shape, backend, fn, check=check, device=dev, family="matmul",
                flops=2 * m * k * n, bytes=4 * (m * k + k * n + m * n))
