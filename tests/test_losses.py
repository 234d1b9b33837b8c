"""cross_entropy (every option), MSE and the fused linear cross-entropy against the
reference on every backend."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernprop
from kernprop.kernels.reference import losses as ref

from conftest import LAYOUTS, assert_close, make_array, readonly

CE_SHAPES = [(1, 1), (1, 5), (7, 1), (13, 17), (64, 1000), (257, 10)]
OPTIONS = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(label_smoothing=0.1),
    dict(weighted=True),
    dict(weighted=True, label_smoothing=0.25),
    dict(weighted=True, label_smoothing=0.3, reduction="sum", ignore=True),
    dict(ignore=True),
    dict(ignore=True, label_smoothing=0.2, reduction="none"),
    dict(ignore=True, ignore_index=0),
]


def ce_case(rng, shape, dtype, option, layout="contiguous", scale=5.0):
    n, c = shape
    logits = make_array(rng, shape, dtype, layout, low=-scale, high=scale)
    labels = rng.integers(0, c, n)
    ignore_index = option.get("ignore_index", -100)
    if option.get("ignore"):
        labels[:: 3] = ignore_index
    kwargs = dict(
        reduction=option.get("reduction", "mean"),
        ignore_index=ignore_index,
        label_smoothing=option.get("label_smoothing", 0.0),
        weight=rng.uniform(0.1, 2.0, c).astype(dtype) if option.get("weighted") else None,
    )
    return logits, labels, kwargs


def ref_ce(logits, labels, kwargs):
    return ref.cross_entropy_with_grad(
        logits, labels, kwargs["reduction"], kwargs["ignore_index"], kwargs["label_smoothing"], kwargs["weight"]
    )


@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_cross_entropy_matches_reference(backend, dtype, rng, shape, option):
    logits, labels, kwargs = ce_case(rng, shape, dtype, option)
    want_loss, want_grad = ref_ce(logits, labels, kwargs)
    loss, grad = kernprop.cross_entropy_with_grad(logits, labels, **kwargs, backend=backend)
    loss_scale = float(np.abs(logits).max())
    assert_close(loss, want_loss, dtype, scale=loss_scale, name="loss")
    assert_close(grad, want_grad, dtype, name="dlogits")
    loss_only = kernprop.cross_entropy(logits, labels, **kwargs, backend=backend)
    assert_close(loss_only, want_loss, dtype, scale=loss_scale, name="loss only")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cross_entropy_strided_logits(backend, dtype, rng, layout):
    logits, labels, kwargs = ce_case(rng, (11, 7), dtype, dict(label_smoothing=0.1), layout)
    want_loss, want_grad = ref_ce(logits, labels, kwargs)
    loss, grad = kernprop.cross_entropy_with_grad(logits, labels, **kwargs, backend=backend)
    assert_close(loss, want_loss, dtype)
    assert_close(grad, want_grad, dtype)


def test_gradient_without_options_is_softmax_minus_onehot_over_n(backend, dtype, rng):
    logits, labels, _ = ce_case(rng, (6, 4), dtype, {})
    _, grad = kernprop.cross_entropy_with_grad(logits, labels, backend=backend)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert_close(grad, (p - np.eye(4, dtype=dtype)[labels]) / 6, dtype)


@pytest.mark.parametrize("option", [dict(), dict(label_smoothing=0.2, weighted=True)])
def test_cross_entropy_extreme_logits(backend, dtype, rng, option):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4 - 1, -1e4]], dtype=dtype)
    labels = np.array([1, 2, 0])
    _, _, kwargs = ce_case(rng, (3, 3), dtype, option)
    want_loss, want_grad = ref_ce(logits, labels, kwargs)
    assert np.isfinite(want_loss)
    loss, grad = kernprop.cross_entropy_with_grad(logits, labels, **kwargs, backend=backend)
    assert_close(loss, want_loss, dtype, name="loss")
    assert_close(grad, want_grad, dtype, scale=1.0, name="dlogits")


def test_cross_entropy_minus_infinity(backend, dtype):
    logits = np.array([[0.0, -np.inf, 2.0], [-np.inf, 1.0, -np.inf], [0.0, -np.inf, 0.0]], dtype=dtype)
    labels = np.array([2, 1, 1])
    for smoothing in (0.0, 0.1):
        kwargs = dict(reduction="none", ignore_index=-100, label_smoothing=smoothing, weight=None)
        want_loss, want_grad = ref_ce(logits, labels, kwargs)
        # The target of row 2 is impossible: infinite loss, as in PyTorch.  With
        # smoothing, every -inf logit is a target of the uniform part: infinite too.
        assert np.isinf(want_loss[2]) and np.isfinite(want_loss[0]) == (smoothing == 0)
        loss, grad = kernprop.cross_entropy_with_grad(logits, labels, **kwargs, backend=backend)
        assert_close(loss, want_loss, dtype, scale=1.0, name=f"loss (smoothing {smoothing})")
        assert_close(grad, want_grad, dtype, scale=1.0, name=f"dlogits (smoothing {smoothing})")


def test_all_rows_ignored_mean_is_nan(backend, dtype, rng):
    logits = make_array(rng, (3, 4), dtype)
    labels = np.full(3, -100)
    loss, grad = kernprop.cross_entropy_with_grad(logits, labels, backend=backend)
    assert np.isnan(loss)
    assert np.isnan(ref_ce(logits, labels, dict(reduction="mean", ignore_index=-100, label_smoothing=0.0, weight=None))[0])
    loss_sum, grad_sum = kernprop.cross_entropy_with_grad(logits, labels, reduction="sum", backend=backend)
    assert loss_sum == 0 and not np.any(kernprop_host(grad_sum))


def kernprop_host(x):
    from conftest import to_host

    return to_host(x)


def test_int32_labels(backend, dtype, rng):
    logits, labels, kwargs = ce_case(rng, (5, 3), dtype, {})
    want = kernprop.cross_entropy(logits, labels, backend="numpy")
    assert_close(kernprop.cross_entropy(logits, labels.astype(np.int32), backend=backend), want, dtype)


def test_inputs_are_not_written(backend, dtype, rng):
    logits, labels, kwargs = ce_case(rng, (6, 5), dtype, dict(weighted=True, label_smoothing=0.1))
    logits, labels, weight = readonly(logits, labels, kwargs["weight"])
    kwargs["weight"] = weight
    kernprop.cross_entropy_with_grad(logits, labels, **kwargs, backend=backend)
    kernprop.cross_entropy(logits, labels, **kwargs, backend=backend)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 30), c=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
    smoothing=st.sampled_from([0.0, 0.1, 0.9]), weighted=st.booleans(), ignore=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_cross_entropy_any_case(backend, n, c, seed, smoothing, weighted, ignore, reduction):
    rng = np.random.default_rng(seed)
    option = dict(label_smoothing=smoothing, weighted=weighted, ignore=ignore, reduction=reduction)
    logits, labels, kwargs = ce_case(rng, (n, c), np.float64, option, scale=50.0)
    want_loss, want_grad = ref_ce(logits, labels, kwargs)
    loss, grad = kernprop.cross_entropy_with_grad(logits, labels, **kwargs, backend=backend)
    # a row's -log p carries the rounding of log-sum-exp, which is of the logits' size
    assert_close(loss, want_loss, np.float64, scale=float(np.abs(logits).max()))
    assert_close(grad, want_grad, np.float64, scale=1.0)


# --- MSE ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (1, 1), (7, 3), (50000,), (4, 5, 6)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mse_matches_reference(backend, dtype, rng, shape, reduction, layout):
    pred = make_array(rng, shape, dtype, layout)
    target = make_array(rng, shape, dtype)
    assert_close(kernprop.mse(pred, target, reduction, backend=backend), ref.mse_forward(pred, target, reduction), dtype)
    assert_close(
        kernprop.mse_backward(pred, target, reduction, backend=backend), ref.mse_backward(pred, target, reduction), dtype
    )


def test_mse_inputs_are_not_written(backend, dtype, rng):
    pred, target = readonly(make_array(rng, (4, 3), dtype), make_array(rng, (4, 3), dtype))
    kernprop.mse(pred, target, backend=backend)
    kernprop.mse_backward(pred, target, backend=backend)


# --- fused linear cross-entropy -----------------------------------------------------


@pytest.mark.parametrize("n,features,classes", [(1, 1, 1), (1, 5, 3), (13, 7, 11), (100, 33, 257)])
@pytest.mark.parametrize("chunk_size", [1, 4, 64, None])
@pytest.mark.parametrize("option", [dict(), dict(weighted=True, label_smoothing=0.1, ignore=True), dict(reduction="sum", ignore=True)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_cross_entropy_matches_reference(backend, dtype, rng, n, features, classes, chunk_size, option, with_bias):
    x = make_array(rng, (n, features), dtype)
    w = make_array(rng, (features, classes), dtype, "transposed")
    b = make_array(rng, (classes,), dtype) if with_bias else None
    _, labels, kwargs = ce_case(rng, (n, classes), dtype, option)
    want = ref.linear_cross_entropy(x, w, b, labels, kwargs["reduction"], kwargs["ignore_index"],
                                    kwargs["label_smoothing"], kwargs["weight"], chunk_size)
    got = kernprop.linear_cross_entropy(x, w, b, labels, **kwargs, chunk_size=chunk_size, backend=backend)
    for name, g, expected in zip(("loss", "dx", "dw", "db"), got, want):
        if expected is None:
            assert g is None, f"{name} should be None"
        else:
            assert_close(g, expected, dtype, scale=float(np.abs(expected).max()) + 1e-3, name=name)


def test_linear_cross_entropy_never_holds_all_logits(backend, rng):
    if backend in ("numpy", "cuda"):
        pytest.skip("the reference materialises the logits; cuda memory is not traced")
    n, features, classes = 2048, 16, 2000
    x = make_array(rng, (n, features), np.float32)
    w = make_array(rng, (features, classes), np.float32)
    labels = rng.integers(0, classes, n)
    kernprop.linear_cross_entropy(x, w, None, labels, chunk_size=64, backend=backend)  # compile first
    # the same thread count for the measured call: the busy-core guard (kernprop.threadpolicy)
    # may have sent calls to one thread, whose kernels a first call would compile here
    kernprop.set_num_threads(kernprop.get_num_threads())
    peaks = []
    for _ in range(2):  # the lower of two: a call that still compiled something (seen once
        # in CI, 20 MB of Numba's) cannot compile it again
        tracemalloc.start()
        try:
            kernprop.linear_cross_entropy(x, w, None, labels, chunk_size=64, backend=backend)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    peak = min(peaks)
    all_logits = n * classes * 4
    assert peak < all_logits / 4, f"peak {peak} bytes vs {all_logits} bytes for all logits"
