"""optimizers family: one SGD-with-momentum and one Adam update of a parameter array,
in place.  torch runs ``torch.optim.SGD`` / ``torch.optim.Adam`` with ``fused=True``
(its one-kernel CPU path) on the same array.

Memory-bound: per element SGD with momentum reads param, grad, velocity and writes
param, velocity (20 bytes); Adam reads param, grad, both moments and writes three
(28 bytes).  The check compares the parameter and state after the first step.
"""

import numpy as np
import pytest

import kernprop
from benchlib import DTYPE, Device, Shape, assert_close, backend_params, inputs, reference, shape_params

SHAPES = shape_params(Shape("small", (64, 32)), Shape("mlp", (784, 512)), Shape("large", (4096, 1000)))
LR, MOMENTUM, BETAS, EPS = 1e-2, 0.9, (0.9, 0.999), 1e-8
# op -> (kernprop update of (param, grad, state...), number of state arrays, bytes, flops per element)
OPS = {
    "sgd_step": (lambda p, g, v, backend: kernprop.sgd_step(p, g, v, lr=LR, momentum=MOMENTUM, backend=backend),
                 1, 20, 4),
    "adam_step": (lambda p, g, m, v, backend: kernprop.adam_step(p, g, m, v, 1, lr=LR, betas=BETAS, eps=EPS,
                                                                 backend=backend), 2, 28, 12),
}


def _data(shape):
    def make(rng):
        return rng.uniform(-1, 1, shape.dims).astype(DTYPE), rng.uniform(-1, 1, shape.dims).astype(DTYPE)

    return inputs(("optim", shape), make)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", list(OPS))
def test_optimizer_step(harness, op, shape, backend):
    # param, grad, state (all the shape of param) -> param, state updated in place
    update, num_state, bytes_per, flops_per = OPS[op]
    param0, grad0 = _data(shape)
    dev = Device(backend)
    param, grad = dev.put(param0, copy=True), dev.put(grad0)
    state = [dev.put(np.zeros_like(param0), copy=True) for _ in range(num_state)]

    def after_one_step():  # the reference: one update from the same start, on NumPy
        p, s = param0.copy(), [np.zeros_like(param0) for _ in range(num_state)]
        update(p, grad0, *s, backend="numpy")
        return (p, *s)

    if backend == "torch":
        t = dev.torch
        param.requires_grad_(False)
        param.grad = grad
        if op == "sgd_step":
            opt = t.optim.SGD([param], lr=LR, momentum=MOMENTUM, fused=True)
        else:
            opt = t.optim.Adam([param], lr=LR, betas=BETAS, eps=EPS, fused=True)
        fn = opt.step

        def current():
            st = opt.state[param]
            names = ["momentum_buffer"] if op == "sgd_step" else ["exp_avg", "exp_avg_sq"]
            return (param.numpy(), *(st[name].numpy() for name in names))
    else:
        fn = lambda: update(param, grad, *state, backend=backend)  # noqa: E731

        def current():
            return tuple(dev.host(a) for a in (param, *state))

    def check(_):
        assert_close(current(), reference((op, shape), after_one_step), f"{op} {shape} on {backend}")

    size = int(np.prod(shape.dims))
    harness.run(op, shape, backend, fn, check=check, device=dev, family="optimizers",
                flops=flops_per * size, bytes=bytes_per * size)
