"""A full training step: forward, cross-entropy loss and gradient, backward, Adam update.

Two models: the 784-512-256-10 ReLU MLP at batch 256 (MNIST-sized), and the digits
MLP 64-32-10 at batch 32 (what ``kernprop train`` runs; overhead-bound).  The kernprop
backends step the way ``Trainer.fit`` does (``nn.bind_kernels``: the backend's kernels
without per-call checks); torch steps an ``nn.Sequential`` of the same weights with
``Adam(fused=True)``.  The check compares the loss and every gradient of the first step
against the NumPy backend's.
"""

import contextlib

import numpy as np
import pytest

from benchlib import DTYPE, Shape, assert_close, backend_params, inputs, reference, shape_params
from kernprop import nn, optim

# dims: (batch, layer sizes...)
MODELS = shape_params(Shape("small", (32, 64, 32, 10)), Shape("mlp", (256, 784, 512, 256, 10)))
LR = 1e-3


def _data(shape):
    batch, *sizes = shape.dims

    def make(rng):
        return rng.uniform(0, 1, (batch, sizes[0])).astype(DTYPE), rng.integers(0, sizes[-1], batch)

    return inputs(("train", shape), make)


def _kernprop_step(backend, sizes, x, y, stack):
    model = nn.MLP(sizes, activation="relu", rng=0)
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.Adam(LR)
    kernels = stack.enter_context(nn.bind_kernels(model, backend))
    params = model.parameters()
    result = {}

    def step():
        out = model.forward(x)
        loss, dout = loss_fn.with_grad(out, y, kernels)
        model.backward(dout, need_input_grad=False)  # as fit: no gradient for the data
        opt.step(params, model.gradients(), kernels)
        result["loss"] = loss
        return loss

    def first_step():  # loss and gradients of the step just taken
        return (np.asarray(result["loss"]), *[np.asarray(g) for g in model.gradients()])

    return step, first_step


def _torch_step(sizes, x, y):
    import torch

    ref = nn.MLP(sizes, activation="relu", rng=0)  # the same initial weights
    layers = []
    for i, linear in enumerate(ref.parameters()[::2]):
        layer = torch.nn.Linear(*linear.shape)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(linear.T.copy()))
            layer.bias.zero_()
        layers.append(layer)
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    result = {}

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        result["loss"] = loss
        return loss

    def first_step():
        grads = []
        for layer in layers[::2]:
            grads += [layer.weight.grad.numpy().T, layer.bias.grad.numpy()]
        return (result["loss"].detach().numpy(), *grads)

    return step, first_step


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", MODELS)
@pytest.mark.parametrize("op", ["train_step"])
def test_train_step(harness, op, shape, backend):
    # x (B, sizes[0]), labels (B,) -> one Adam step of every weight and bias
    batch, *sizes = shape.dims
    x, y = _data(shape)

    def numpy_first_step():
        with contextlib.ExitStack() as stack:
            step, first = _kernprop_step("numpy", sizes, x, y, stack)
            step()
            return first()

    with contextlib.ExitStack() as stack:
        if backend == "torch":
            step, first = _torch_step(sizes, x, y)
        else:
            if backend == "cuda":
                pytest.skip("the trainer's CUDA path keeps arrays on the host; not benchmarked here")
            step, first = _kernprop_step(backend, sizes, x, y, stack)

        def check(_):
            assert_close(first(), reference((op, shape), numpy_first_step), f"{op} {shape} on {backend}")

        weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
        harness.run(op, shape, backend, step, check=check, family="train",
                    flops=6 * batch * weights, bytes=0)


# --- a whole epoch through Trainer.fit, as `kernprop train` runs it --------------------
#
# dims: (steps, batch, layer sizes...).  Trainer.fit may take paths a layer-by-layer step
# does not (on numba, small MLPs run each step as one fused kernel), so this is the
# training speed a user sees: one epoch of `steps` batches, unshuffled (so that torch
# sees the same batches), Adam, no validation.  torch runs the same loop by hand.
FIT_SHAPES = shape_params(Shape("small", (16, 32, 64, 32, 10)), Shape("mlp", (8, 256, 784, 512, 256, 10)))


def _fit_data(shape):
    steps, batch, *sizes = shape.dims

    def make(rng):
        n = steps * batch
        return rng.uniform(0, 1, (n, sizes[0])).astype(DTYPE), rng.integers(0, sizes[-1], n)

    return inputs(("fit", shape), make)


def _kernprop_fit(backend, sizes, batch, x, y):
    from kernprop.train import Trainer

    trainer = Trainer(nn.MLP(sizes, activation="relu", rng=0), "cross_entropy", optim.Adam(LR),
                      backend=backend, batch_size=batch, seed=0)
    return lambda: trainer.fit(x, y, 1, shuffle=False, verbose=0)["loss"][0]


def _torch_fit(sizes, batch, x, y):
    import torch

    ref = nn.MLP(sizes, activation="relu", rng=0)
    layers = []
    for i, linear in enumerate(ref.parameters()[::2]):
        layer = torch.nn.Linear(*linear.shape)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(linear.T.copy()))
            layer.bias.zero_()
        layers.append(layer)
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    starts = range(0, x.shape[0], batch)

    def epoch():
        total = 0.0
        for start in starts:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[start:start + batch]), yt[start:start + batch])
            loss.backward()
            opt.step()
            total += loss.item()
        return total / len(starts)

    return epoch


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", FIT_SHAPES)
@pytest.mark.parametrize("op", ["fit_epoch"])
def test_fit_epoch(harness, op, shape, backend):
    # X (steps * batch, sizes[0]), labels -> one epoch of Adam steps; returns its mean loss
    steps, batch, *sizes = shape.dims
    x, y = _fit_data(shape)
    if backend == "cuda":
        pytest.skip("fit on cuda keeps the data on the host; not benchmarked here")
    fn = _torch_fit(sizes, batch, x, y) if backend == "torch" else _kernprop_fit(backend, sizes, batch, x, y)

    def check(loss):
        want = reference((op, shape), lambda: _kernprop_fit("numpy", sizes, batch, x, y)())
        np.testing.assert_allclose(float(loss), float(want), rtol=1e-4, err_msg=f"{op} {shape} on {backend}")

    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    harness.run(op, shape, backend, fn, check=check, family="train",
                flops=6 * steps * batch * weights, bytes=0)
