"""losses family: cross-entropy (loss, and loss + gradient from one fused pass), MSE
forward and backward, and the fused linear cross-entropy.

Cross-entropy shapes are (N, C) logits with integer labels, from the digits MLP's
32 x 10 to a vocabulary of 32000 classes.  torch runs ``F.cross_entropy`` and, for the
gradient, ``torch.autograd.grad`` of it; its linear cross-entropy is the unfused
``addmm`` + ``cross_entropy`` + autograd (the full (N, C) logits held at once).  The
peak memory of fused against unfused sits in the report (``bench/benchreport``).
"""

import numpy as np
import pytest

import kernprop
from benchlib import DTYPE, Device, Shape, backend_params, inputs, reference, shape_params

CE_SHAPES = shape_params(
    Shape("small", (32, 10)), Shape("mlp", (256, 10)), Shape("large", (4096, 1000)),
    Shape("large", (65536, 10)), Shape("large", (1024, 32000)),
)
MSE_SHAPES = shape_params(Shape("small", (32, 64)), Shape("mlp", (256, 512)), Shape("large", (4096, 1000)))
# (N, IN, C): rows, features, classes
LCE_SHAPES = shape_params(Shape("small", (32, 64, 10)), Shape("mlp", (256, 256, 10)), Shape("large", (1024, 256, 8192)))


def _ce_data(shape):
    n, c = shape.dims

    def make(rng):
        logits = rng.standard_normal((n, c), dtype=np.float32) * 2
        labels = rng.integers(0, c, n)
        return logits, labels

    return inputs(("ce", shape), make)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("op", ["cross_entropy", "cross_entropy_with_grad"])
def test_cross_entropy(harness, op, shape, backend):
    # logits (N, C), labels (N,) -> mean loss (), and dlogits (N, C) with the gradient
    n, c = shape.dims
    logits, labels = _ce_data(shape)
    dev = Device(backend)
    z = dev.put(logits)
    if backend == "torch":
        t = dev.torch
        tl = t.from_numpy(labels)
        F = t.nn.functional
        if op == "cross_entropy":
            fn = lambda: F.cross_entropy(z, tl)  # noqa: E731
        else:
            def fn():
                zr = z.detach().requires_grad_()
                loss = F.cross_entropy(zr, tl)
                return loss, t.autograd.grad(loss, zr)[0]
    else:
        function = getattr(kernprop, op)
        fn = lambda: function(z, labels, backend=backend)  # noqa: E731
    want = lambda: reference((op, shape), lambda: getattr(kernprop, op)(logits, labels, backend="numpy"))  # noqa: E731
    arrays = 1 if op == "cross_entropy" else 2
    harness.run(op, shape, backend, fn, want=want, device=dev, family="losses",
                flops=4 * n * c, bytes=4 * arrays * n * c + 8 * n)


def _mse_data(shape):
    def make(rng):
        return (rng.uniform(-1, 1, shape.dims).astype(DTYPE), rng.uniform(-1, 1, shape.dims).astype(DTYPE))

    return inputs(("mse", shape), make)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", MSE_SHAPES)
@pytest.mark.parametrize("op", ["mse", "mse_backward"])
def test_mse(harness, op, shape, backend):
    # pred (N, C), target (N, C) -> mean loss (), or dpred (N, C)
    pred, target = _mse_data(shape)
    size = int(np.prod(shape.dims))
    dev = Device(backend)
    p, q = dev.put(pred), dev.put(target)
    if backend == "torch":
        t = dev.torch
        if op == "mse":
            fn = lambda: t.nn.functional.mse_loss(p, q)  # noqa: E731
        else:
            one = t.tensor(1.0)
            fn = lambda: t.ops.aten.mse_loss_backward(one, p, q, 1)  # noqa: E731 (1: mean)
    else:
        function = getattr(kernprop, op)
        fn = lambda: function(p, q, backend=backend)  # noqa: E731
    want = lambda: reference((op, shape), lambda: getattr(kernprop, op)(pred, target, backend="numpy"))  # noqa: E731
    arrays = 2 if op == "mse" else 3
    harness.run(op, shape, backend, fn, want=want, device=dev, family="losses",
                flops=3 * size, bytes=4 * arrays * size)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", LCE_SHAPES)
@pytest.mark.parametrize("op", ["linear_cross_entropy"])
def test_linear_cross_entropy(harness, op, shape, backend):
    # x (N, IN), w (IN, C), b (C,), labels (N,) -> (loss, dx (N, IN), dw (IN, C), db (C,))
    n, fan_in, c = shape.dims

    def make(rng):
        x = rng.uniform(-1, 1, (n, fan_in)).astype(DTYPE)
        w = (rng.uniform(-1, 1, (fan_in, c)) / np.sqrt(fan_in)).astype(DTYPE)
        b = rng.uniform(-0.1, 0.1, c).astype(DTYPE)
        return x, w, b, rng.integers(0, c, n)

    x, w, b, labels = inputs(("lce", shape), make)
    dev = Device(backend)
    xd, wd, bd = dev.put(x), dev.put(w), dev.put(b)
    if backend == "torch":
        t = dev.torch
        tl = t.from_numpy(labels)

        def fn():
            xr, wr, br = (v.detach().requires_grad_() for v in (xd, wd, bd))
            loss = t.nn.functional.cross_entropy(t.addmm(br, xr, wr), tl)
            return (loss, *t.autograd.grad(loss, (xr, wr, br)))
    else:
        fn = lambda: kernprop.linear_cross_entropy(xd, wd, bd, labels, backend=backend)  # noqa: E731
    want = lambda: reference((op, shape), lambda: kernprop.linear_cross_entropy(x, w, b, labels, backend="numpy"))  # noqa: E731
    harness.run(op, shape, backend, fn, want=want, device=dev, family="losses",
                flops=6 * n * fan_in * c + 5 * n * c,
                bytes=4 * 2 * (n * fan_in + fan_in * c + c) + 8 * n)
