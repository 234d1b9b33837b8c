"""Shared fixtures: every backend parametrised against the NumPy reference.

Tolerances live here, in one place; ``assert_close`` shows the worst element.
"""

import os

import numpy as np
import pytest

import kernprop
from kernprop.backends import NAMES, status

DTYPES = (np.float32, np.float64)

# Relative tolerance per dtype; the absolute one is this times the scale of the values
# compared (sums of many terms lose precision relative to their largest term).
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}

LAYOUTS = ("contiguous", "transposed", "strided")


def _backend_params():
    params = []
    for name in NAMES:
        marks = []
        if name == "cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            # The simulator runs the small-shape suite in tests/cuda, not this one.
            marks.append(pytest.mark.skip(reason="cuda on the simulator runs tests/cuda only"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(params=_backend_params())
def backend(request):
    """Each backend in turn; an unavailable one is skipped with its reason."""
    state = status(request.param)
    if not state.available:
        pytest.skip(f"backend {request.param} unavailable: {state.reason}")
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


def to_host(x):
    """A backend's result as a NumPy value (device arrays are copied back)."""
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    if hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray):
        from numba import cuda

        return cuda.as_cuda_array(x).copy_to_host()
    return np.asarray(x)


def assert_close(got, want, dtype=None, scale=None, rtol=None, name="result"):
    """Elementwise ``|got - want| <= rtol * (|want| + scale)``, NaN and inf where the
    reference has them; ``scale`` defaults to the largest finite magnitude of ``want``."""
    got = to_host(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != expected {want.shape}"
    dtype = np.dtype(dtype or want.dtype)
    assert got.dtype == dtype, f"{name}: dtype {got.dtype} != expected {dtype}"
    rtol = RTOL[dtype] if rtol is None else rtol
    got64 = got.astype(np.float64)
    want64 = want.astype(np.float64)
    same_nonfinite = (np.isnan(got64) & np.isnan(want64)) | (
        np.isinf(want64) & (got64 == want64)
    )
    finite_want = want64[np.isfinite(want64)]
    if scale is None:
        scale = float(np.abs(finite_want).max()) if finite_want.size else 1.0
    with np.errstate(invalid="ignore"):
        error = np.abs(got64 - want64)
        limit = rtol * (np.abs(want64) + max(scale, 1e-30))
        bad = ~(same_nonfinite | (error <= limit))
    if bad.any():
        with np.errstate(invalid="ignore"):
            ratio = np.where(bad, np.nan_to_num(error / limit, nan=np.inf), 0)
        worst = np.unravel_index(np.argmax(ratio), got.shape) if got.ndim else ()
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {got.size} elements differ; worst at {worst}: "
            f"got {got64[worst]!r}, expected {want64[worst]!r} "
            f"(|diff| {error[worst]:.3g} > allowed {limit[worst]:.3g}, rtol {rtol:g})"
        )


def make_array(rng, shape, dtype, layout="contiguous", low=-2.0, high=2.0):
    """Random values of ``shape`` laid out in memory as asked: C-contiguous, a
    transposed view of a contiguous array, or a strided slice of a larger one."""
    shape = tuple(shape)
    if layout == "contiguous":
        return rng.uniform(low, high, shape).astype(dtype)
    if layout == "transposed":
        return rng.uniform(low, high, shape[::-1]).astype(dtype).T
    if layout == "strided":
        big = rng.uniform(low, high, tuple(2 * s + 1 for s in shape)).astype(dtype)
        view = big[tuple(slice(1, None, 2) for _ in shape)]
        assert view.shape == shape and not view.flags.c_contiguous or view.size == 1
        return view
    raise ValueError(layout)


def readonly(*arrays):
    """Copies that raise if anything writes to them."""
    copies = []
    for array in arrays:
        copy = np.array(array)
        copy.flags.writeable = False
        copies.append(copy)
    return copies if len(copies) > 1 else copies[0]


@pytest.fixture(autouse=True)
def _restore_default_backend():
    before = kernprop.get_backend()
    yield
    kernprop.set_backend(before)
