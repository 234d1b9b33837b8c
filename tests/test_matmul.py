"""matmul, linear and linear_backward on every backend against the reference."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernprop
from kernprop.kernels.reference import matmul as ref

from conftest import LAYOUTS, assert_close, make_array, readonly, to_host

SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 4), (13, 17, 19), (31, 64, 257), (67, 300, 33)]
ACTIVATIONS = [None, "relu", "sigmoid", "tanh"]


def gemm_scale(a, b):
    # Rounding error of a dot product grows with the sum of |a_ik b_kj|.
    return float((np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)).max())


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("layout_a", LAYOUTS)
@pytest.mark.parametrize("layout_b", LAYOUTS)
def test_matmul_matches_reference(backend, dtype, rng, m, k, n, layout_a, layout_b):
    a = make_array(rng, (m, k), dtype, layout_a)
    b = make_array(rng, (k, n), dtype, layout_b)
    got = kernprop.matmul(a, b, backend=backend)
    assert_close(got, ref.matmul(a, b), dtype, scale=gemm_scale(a, b))


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 5, 3), (64, 129, 300)])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_forward_matches_reference(backend, dtype, rng, m, k, n, activation, with_bias):
    x = make_array(rng, (m, k), dtype)
    w = make_array(rng, (k, n), dtype, "transposed")
    b = make_array(rng, (n,), dtype) if with_bias else None
    got = kernprop.linear(x, w, b, activation=activation, backend=backend)
    want = ref.linear_forward(x, w, b, activation)
    assert_close(got, want, dtype, scale=gemm_scale(x, w) + 2)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 9, 4), (37, 53, 29), (128, 65, 257)])
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_linear_backward_matches_reference(backend, dtype, rng, m, k, n, has_bias, layout):
    x = make_array(rng, (m, k), dtype, layout)
    w = make_array(rng, (k, n), dtype, layout)
    dy = make_array(rng, (m, n), dtype, layout)
    dx, dw, db = kernprop.linear_backward(x, w, dy, has_bias, backend=backend)
    want_dx, want_dw, want_db = ref.linear_backward(x, w, dy, has_bias)
    assert_close(dx, want_dx, dtype, scale=gemm_scale(dy, w.T), name="dx")
    assert_close(dw, want_dw, dtype, scale=gemm_scale(x.T, dy), name="dw")
    if has_bias:
        assert_close(db, want_db, dtype, scale=float(np.abs(dy).sum(axis=0).max()), name="db")
    else:
        assert db is None


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (37, 53, 29)])
@pytest.mark.parametrize("has_bias", [True, False])
def test_linear_backward_without_dx(backend, dtype, rng, m, k, n, has_bias):
    # a first layer's input needs no gradient: dx is None, dw and db as with dx
    x = make_array(rng, (m, k), dtype, "transposed")
    w = make_array(rng, (k, n), dtype)
    dy = make_array(rng, (m, n), dtype, "strided")
    dx, dw, db = kernprop.linear_backward(x, w, dy, has_bias, need_dx=False, backend=backend)
    _, want_dw, want_db = ref.linear_backward(x, w, dy, has_bias)
    assert dx is None
    assert_close(dw, want_dw, dtype, scale=gemm_scale(x.T, dy), name="dw")
    if has_bias:
        assert_close(db, want_db, dtype, scale=float(np.abs(dy).sum(axis=0).max()), name="db")
    else:
        assert db is None


def test_inputs_are_not_written(backend, dtype, rng):
    x, w, b, dy = readonly(
        make_array(rng, (9, 4), dtype), make_array(rng, (4, 6), dtype),
        make_array(rng, (6,), dtype), make_array(rng, (9, 6), dtype),
    )
    kernprop.matmul(x, w, backend=backend)
    kernprop.linear(x, w, b, activation="relu", backend=backend)
    kernprop.linear_backward(x, w, dy, backend=backend)


def test_extreme_values_saturate_activations(backend, dtype):
    x = np.array([[1.0], [-1.0]], dtype=dtype)
    w = np.array([[1e4, -1e4, 0.0]], dtype=dtype)
    got = kernprop.linear(x, w, activation="sigmoid", backend=backend)
    assert_close(got, [[1, 0, 0.5], [0, 1, 0.5]], dtype)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 70),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_any_shape(backend, m, k, n, seed):
    rng = np.random.default_rng(seed)
    a = make_array(rng, (m, k), np.float64)
    b = make_array(rng, (k, n), np.float64, "transposed")
    assert_close(kernprop.matmul(a, b, backend=backend), a @ b, scale=gemm_scale(a, b))


@pytest.mark.parametrize("precision,bound", [("fp32", 0.0), ("bf16x3", 2.0**-14), ("bf16", 2.0**-7)])
@pytest.mark.parametrize("m,k,n", [(1, 3, 1), (13, 301, 45), (64, 700, 130)])
def test_matmul_precision_within_its_bound(backend, rng, precision, bound, m, k, n):
    # Every backend runs every precision at least as accurately as asked: within the
    # operand rounding of that precision (plus float32 accumulation) of the exact product.
    a = make_array(rng, (m, k), np.float32, "transposed")
    b = make_array(rng, (k, n), np.float32)
    got = to_host(kernprop.matmul(a, b, precision=precision, backend=backend))
    assert got.dtype == np.float32
    got = got.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    tol = (bound * 1.01 + 4 * (k + 2) * np.finfo(np.float32).eps) * scale
    assert np.all(np.abs(got - exact) <= tol), np.max(np.abs(got - exact) / tol)
