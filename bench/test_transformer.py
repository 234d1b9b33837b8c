"""Transformer ops, each timed forward + backward as a training step runs them: GELU
(GPT-2's tanh form), layer norm, causal attention, and the embedding's backward.

torch runs the same work through autograd (``gelu``, ``layer_norm``,
``scaled_dot_product_attention``: its fused CPU flash-attention kernel) with the
gradients cleared before each call, and aten's ``embedding_dense_backward`` for the
table gradient alone.  The large shapes are issue 26's targets: layer norm 8192x768,
GELU 4096x3072, attention B=4 H=8 L=512 D=64, a GPT-2 token embedding's gradient
(16x128 ids into 50257x768).
"""

import numpy as np
import pytest

import kernprop
from benchlib import DTYPE, Device, Shape, backend_params, inputs, reference, shape_params

GELU_SHAPES = shape_params(Shape("small", (64, 256)), Shape("large", (4096, 3072)))
NORM_SHAPES = shape_params(Shape("small", (64, 128)), Shape("mlp", (2048, 768)), Shape("large", (8192, 768)))
# (B, H, L, D), causal
ATTENTION_SHAPES = shape_params(Shape("small", (1, 2, 64, 16)), Shape("mlp", (4, 4, 128, 32)),
                                Shape("large", (4, 8, 512, 64)))
# (ids rows, ids columns, V, C)
EMBEDDING_SHAPES = shape_params(Shape("small", (4, 32, 1000, 64)), Shape("large", (16, 128, 50257, 768)))


def _arrays(key, *shapes):
    def make(rng):
        return tuple(rng.standard_normal(shape).astype(DTYPE) for shape in shapes)

    return inputs(key, make)


def _torch_step(dev, forward, leaves, grad_out):
    """forward(*leaf tensors) then backward(grad_out), gradients cleared first."""
    tensors = [dev.torch.from_numpy(a).requires_grad_(True) for a in leaves]
    grad_tensor = dev.torch.from_numpy(grad_out)

    def step():
        for t in tensors:
            t.grad = None
        out = forward(*tensors)
        out.backward(grad_tensor)
        return (out.detach(), *[t.grad for t in tensors])

    return step


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", GELU_SHAPES)
@pytest.mark.parametrize("op", ["gelu_fwd_bwd"])
def test_gelu(harness, op, shape, backend):
    # x (N, C) -> y = gelu(x), dx = gelu_backward(x, dy)
    x, dy = _arrays(("gelu", shape), shape.dims, shape.dims)
    dev = Device(backend)
    if backend == "torch":
        fn = _torch_step(dev, lambda t: dev.torch.nn.functional.gelu(t, approximate="tanh"), (x,), dy)
    else:
        dx_, ddy = dev.put(x), dev.put(dy)

        def fn():
            return (kernprop.gelu(dx_, "tanh", backend=backend),
                    kernprop.gelu_backward(dx_, ddy, "tanh", backend=backend))

    def want():
        return reference((op, shape), lambda: (kernprop.gelu(x, "tanh", backend="numpy"),
                                               kernprop.gelu_backward(x, dy, "tanh", backend="numpy")))

    size = x.size
    harness.run(op, shape, backend, fn, want=want, device=dev, family="activations",
                flops=30 * size, bytes=4 * 4 * size)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", NORM_SHAPES)
@pytest.mark.parametrize("op", ["layer_norm_fwd_bwd"])
def test_layer_norm(harness, op, shape, backend):
    # x (N, C), weight, bias (C,) -> y; then dx, dweight, dbias
    rows, channels = shape.dims
    x, weight, bias, dy = _arrays(("layer_norm", shape), shape.dims, (channels,), (channels,), shape.dims)
    dev = Device(backend)
    if backend == "torch":
        functional = dev.torch.nn.functional
        fn = _torch_step(dev, lambda a, w, b: functional.layer_norm(a, (channels,), w, b), (x, weight, bias), dy)
    else:
        args = [dev.put(a) for a in (x, weight, bias, dy)]

        def fn():
            y, mean, rstd = kernprop.layer_norm(*args[:3], backend=backend)
            return (y, *kernprop.layer_norm_backward(args[0], args[1], mean, rstd, args[3], backend=backend))

    def compute():
        y, mean, rstd = kernprop.layer_norm(x, weight, bias, backend="numpy")
        return (y, *kernprop.layer_norm_backward(x, weight, mean, rstd, dy, backend="numpy"))

    harness.run(op, shape, backend, fn, want=lambda: reference((op, shape), compute), device=dev,
                family="normalization", flops=16 * rows * channels, bytes=4 * 5 * rows * channels)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
@pytest.mark.parametrize("op", ["attention_fwd_bwd"])
def test_attention(harness, op, shape, backend):
    # q, k, v (B, H, L, D), causal -> out; then dq, dk, dv
    batch, heads, length, depth = shape.dims
    q, k, v, dout = _arrays(("attention", shape), *[shape.dims] * 4)
    dev = Device(backend)
    if backend == "torch":
        sdpa = dev.torch.nn.functional.scaled_dot_product_attention
        fn = _torch_step(dev, lambda a, b, c: sdpa(a, b, c, is_causal=True), (q, k, v), dout)
    else:
        args = [dev.put(a) for a in (q, k, v, dout)]

        def fn():
            out, lse = kernprop.attention(*args[:3], causal=True, backend=backend)
            return (out, *kernprop.attention_backward(*args[:3], out, lse, args[3], causal=True, backend=backend))

    def compute():
        out, lse = kernprop.attention(q, k, v, causal=True, backend="numpy")
        return (out, *kernprop.attention_backward(q, k, v, out, lse, dout, causal=True, backend="numpy"))

    # the causal half of the products: 2 forward (S, PV) and 5 backward, 2 L^2 D / 2 each
    flops = 7 * batch * heads * length * length * depth
    harness.run(op, shape, backend, fn, want=lambda: reference((op, shape), compute), device=dev,
                family="attention", flops=flops, bytes=4 * 8 * q.size)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", EMBEDDING_SHAPES)
@pytest.mark.parametrize("op", ["embedding_backward"])
def test_embedding_backward(harness, op, shape, backend):
    # ids (R, T) into a (V, C) table: dtable (V, C) from dy (R, T, C)
    rows, columns, vocabulary, channels = shape.dims

    def make(rng):
        return rng.integers(0, vocabulary, (rows, columns)), rng.standard_normal((rows, columns, channels)).astype(DTYPE)

    ids, dy = inputs(("embedding", shape), make)
    dev = Device(backend)
    if backend == "torch":
        tids, tdy = dev.torch.from_numpy(ids), dev.torch.from_numpy(dy)
        dense_backward = dev.torch.ops.aten.embedding_dense_backward
        fn = lambda: dense_backward(tdy, tids, vocabulary, -1, False)  # noqa: E731
    else:
        ddy = dev.put(dy)
        fn = lambda: kernprop.embedding_backward(ids, ddy, vocabulary, backend=backend)  # noqa: E731
    want = lambda: reference((op, shape), lambda: kernprop.embedding_backward(ids, dy, vocabulary, backend="numpy"))  # noqa: E731
    harness.run(op, shape, backend, fn, want=want, device=dev, family="embedding",
                flops=dy.size, bytes=4 * 2 * dy.size)
