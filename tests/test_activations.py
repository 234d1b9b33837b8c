"""relu, sigmoid, tanh and their backward on every backend against the reference."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kernprop
from kernprop.kernels.reference import activations as ref

from conftest import assert_close, make_array, readonly

OPS = {
    "relu": (kernprop.relu, kernprop.relu_backward, ref.relu_forward, ref.relu_backward),
    "sigmoid": (kernprop.sigmoid, kernprop.sigmoid_backward, ref.sigmoid_forward, ref.sigmoid_backward),
    "tanh": (kernprop.tanh, kernprop.tanh_backward, ref.tanh_forward, ref.tanh_backward),
}
SHAPES = [(1,), (1, 1), (7, 13), (3, 5, 11), (40000,)]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_forward_and_backward_match_reference(backend, dtype, rng, op, shape, layout):
    forward, backward, ref_forward, ref_backward = OPS[op]
    x = make_array(rng, shape, dtype, layout, low=-6, high=6)
    dy = make_array(rng, shape, dtype, layout)
    y = forward(x, backend=backend)
    assert_close(y, ref_forward(x), dtype, name=f"{op}")
    saved = x if op == "relu" else ref_forward(x)
    # in units of |dy|: the reference's own float32 1 - y*y cancels near |y| = 1 (up to
    # 1e-4 relative), so a kernel closer to the exact value can be farther from it
    dy_scale = float(np.abs(dy).max())
    assert_close(backward(saved, dy, backend=backend), ref_backward(saved, dy), dtype, scale=dy_scale,
                 name=f"{op}_backward")


@pytest.mark.parametrize("op", OPS)
def test_extreme_values(backend, dtype, op):
    forward, backward, ref_forward, ref_backward = OPS[op]
    x = np.array([-1e4, -50.0, -0.0, 0.0, 1e-30, 50.0, 1e4, -np.inf, np.inf], dtype=dtype)
    with np.errstate(over="ignore"):
        want = ref_forward(x)
    assert np.all(np.isfinite(want[np.isfinite(x)]))
    assert_close(forward(x, backend=backend), want, dtype)


def test_relu_gradient_is_zero_at_zero(backend, dtype):
    x = np.array([-1.0, 0.0, 2.0], dtype=dtype)
    got = kernprop.relu_backward(x, np.ones(3, dtype=dtype), backend=backend)
    assert_close(got, [0.0, 0.0, 1.0], dtype)


def test_inputs_are_not_written(backend, dtype, rng):
    x, dy = readonly(make_array(rng, (5, 6), dtype), make_array(rng, (5, 6), dtype))
    for forward, backward, *_ in OPS.values():
        forward(x, backend=backend)
        backward(x, dy, backend=backend)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                 elements=st.floats(-1e3, 1e3)),
    op=st.sampled_from(sorted(OPS)),
)
def test_any_values(backend, x, op):
    forward, _, ref_forward, _ = OPS[op]
    assert_close(forward(x, backend=backend), ref_forward(x), scale=1.0)
