"""log_softmax, its backward and softmax on every backend against the reference."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kernprop
from kernprop.kernels.reference import softmax as ref

from conftest import LAYOUTS, assert_close, make_array, readonly

SHAPES = [(1, 1), (1, 7), (9, 1), (13, 17), (64, 1000), (300, 10)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_matches_reference(backend, dtype, rng, shape, layout):
    x = make_array(rng, shape, dtype, layout, low=-10, high=10)
    assert_close(kernprop.log_softmax(x, backend=backend), ref.log_softmax_forward(x), dtype)
    probabilities = kernprop.softmax(x, backend=backend)
    assert_close(probabilities, ref.softmax_forward(x), dtype)
    assert_close(probabilities.sum(axis=1), np.ones(shape[0]), dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_matches_reference(backend, dtype, rng, shape, layout):
    y = ref.log_softmax_forward(make_array(rng, shape, dtype, layout))
    dy = make_array(rng, shape, dtype, layout)
    got = kernprop.log_softmax_backward(y, dy, backend=backend)
    assert_close(got, ref.log_softmax_backward(y, dy), dtype, scale=float(np.abs(dy).sum(axis=1).max()))


def test_extreme_logits_stay_finite(backend, dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, 1e4 - 1]], dtype=dtype)
    got = kernprop.log_softmax(x, backend=backend)
    want = ref.log_softmax_forward(x)
    assert np.all(np.isfinite(want))
    assert_close(got, want, dtype, scale=1.0)
    assert_close(kernprop.softmax(x, backend=backend), ref.softmax_forward(x), dtype, scale=1.0)


def test_minus_infinity(backend, dtype):
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [-np.inf, 5.0, -np.inf]], dtype=dtype)
    got = kernprop.log_softmax(x, backend=backend)
    want = ref.log_softmax_forward(x)
    assert np.isneginf(want[0, 1]) and np.all(np.isnan(want[1])), "documented: all -inf row -> NaN"
    assert_close(got, want, dtype, scale=1.0)
    assert_close(kernprop.softmax(x, backend=backend), ref.softmax_forward(x), dtype, scale=1.0)


def test_inputs_are_not_written(backend, dtype, rng):
    x, dy = readonly(make_array(rng, (4, 9), dtype), make_array(rng, (4, 9), dtype))
    y = ref.log_softmax_forward(x)
    y.flags.writeable = False
    kernprop.log_softmax(x, backend=backend)
    kernprop.softmax(x, backend=backend)
    kernprop.log_softmax_backward(y, dy, backend=backend)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                 elements=st.floats(-1e4, 1e4)),
)
def test_any_logits(backend, x):
    assert_close(kernprop.log_softmax(x, backend=backend), ref.log_softmax_forward(x), scale=1.0)
