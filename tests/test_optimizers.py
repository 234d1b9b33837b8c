"""SGD and Adam update steps on every backend against the reference (and PyTorch)."""

import numpy as np
import pytest

import kernprop
from kernprop.kernels.reference import optimizers as ref

from conftest import assert_close, make_array

SGD_CASES = [
    dict(momentum=0.0),
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.5, weight_decay=0.01),
    dict(momentum=0.0, weight_decay=0.1),
]
ADAM_CASES = [dict(), dict(weight_decay=0.01), dict(weight_decay=0.01, decoupled=True), dict(betas=(0.5, 0.9), eps=1e-6)]
SHAPES = [(1,), (3, 7), (40000,), (2, 3, 5)]


@pytest.mark.parametrize("case", SGD_CASES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_sgd_matches_reference(backend, dtype, rng, case, shape):
    param = make_array(rng, shape, dtype)
    velocity = np.zeros_like(param)
    want_param, want_velocity = param.copy(), velocity.copy()
    for _ in range(3):
        grad = make_array(rng, shape, dtype)
        kernprop.sgd_step(param, grad, velocity, lr=0.1, **case, backend=backend)
        ref.sgd_step(want_param, grad, want_velocity if case["momentum"] else None, 0.1,
                     case["momentum"], case.get("nesterov", False), case.get("weight_decay", 0.0))
    assert_close(param, want_param, dtype, name="param")
    if case["momentum"]:
        assert_close(velocity, want_velocity, dtype, name="velocity")


@pytest.mark.parametrize("case", ADAM_CASES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_adam_matches_reference(backend, dtype, rng, case, shape):
    param = make_array(rng, shape, dtype)
    m, v = np.zeros_like(param), np.zeros_like(param)
    want = [param.copy(), m.copy(), v.copy()]
    beta1, beta2 = case.get("betas", (0.9, 0.999))
    for step in range(1, 4):
        grad = make_array(rng, shape, dtype)
        kernprop.adam_step(param, grad, m, v, step, lr=0.01, **case, backend=backend)
        ref.adam_step(*want[:1], grad, *want[1:], step, 0.01, beta1, beta2, case.get("eps", 1e-8),
                      case.get("weight_decay", 0.0), case.get("decoupled", False))
    for name, got, expected in zip(("param", "exp_avg", "exp_avg_sq"), (param, m, v), want):
        assert_close(got, expected, dtype, name=name)


def test_reference_matches_torch(dtype, rng):
    torch = pytest.importorskip("torch")
    param = make_array(rng, (4, 5), dtype)
    grads = [make_array(rng, (4, 5), dtype) for _ in range(3)]
    for optimizer, case in [("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
                            ("adam", dict(weight_decay=0.01)), ("adamw", dict(weight_decay=0.01))]:
        t_param = torch.nn.Parameter(torch.from_numpy(param.copy()))
        if optimizer == "sgd":
            t_opt = torch.optim.SGD([t_param], lr=0.1, **case)
        else:
            t_opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW)([t_param], lr=0.01, **case)
        ours = param.copy()
        state = [np.zeros_like(param), np.zeros_like(param)]
        for step, grad in enumerate(grads, start=1):
            t_param.grad = torch.from_numpy(grad.copy())
            t_opt.step()
            if optimizer == "sgd":
                ref.sgd_step(ours, grad, state[0], 0.1, 0.9, True, 0.01)
            else:
                ref.adam_step(ours, grad, *state, step, 0.01, 0.9, 0.999, 1e-8, 0.01, optimizer == "adamw")
        assert_close(ours, t_param.detach().numpy(), dtype, name=optimizer)


def test_grad_is_not_written(backend, dtype, rng):
    param = make_array(rng, (6,), dtype)
    grad = make_array(rng, (6,), dtype)
    grad.flags.writeable = False
    kernprop.adam_step(param, grad, np.zeros_like(param), np.zeros_like(param), 1, backend=backend)
    kernprop.sgd_step(param, grad, lr=0.1, backend=backend)
