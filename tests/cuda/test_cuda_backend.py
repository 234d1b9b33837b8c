"""Every op of the ``cuda`` backend against the NumPy reference, on small shapes.

Run on the Numba CUDA simulator (slow: shapes stay tiny) with
``NUMBA_ENABLE_CUDASIM=1 pytest tests/cuda -q``, or as is on a machine with a GPU.
Without either, the module is skipped with the backend's reason.  Shapes are chosen for
the kernels' edges: 1x1, sizes that don't divide the 64x64 GEMM tile or its depth of 16,
rows wider than one warp (several warps reduce through shared memory), rows of -inf.
"""

import numpy as np
import pytest

import kernprop
from kernprop import ops
import kernprop.kernels.reference.losses  # noqa: F401  (kernprop.kernels.reference.* below)
import kernprop.kernels.reference.optimizers  # noqa: F401

STATUS = kernprop.backends()["cuda"]
if not STATUS.available:
    pytest.skip(f"cuda backend unavailable: {STATUS.reason}", allow_module_level=True)

from numba import cuda  # noqa: E402  (after the skip: numba-cuda may be missing)

from kernprop.kernels.numba_cuda import (  # noqa: E402
    activations as cuda_activations,
    losses as cuda_losses,
    matmul as cuda_matmul,
    softmax as cuda_softmax,
)

pytestmark = [
    pytest.mark.cudasim,
    # The simulator does the arithmetic with NumPy scalars, which warn on inf - inf and
    # 0 * inf where the device silently gives the nan the reference expects.
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
# Tolerances, in one place: |got - want| <= RTOL * (|want| + largest finite |want|).
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-11}


def host(x):
    return x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x)


def assert_close(got, want, dtype, name="result", on_device=False, scale=None):
    """Same shape, dtype, NaN/inf pattern and values within RTOL; shows the worst element.
    ``scale`` (default: the largest finite |want|) is added to |want| in the tolerance."""
    if on_device:
        assert not isinstance(got, np.ndarray) and hasattr(got, "copy_to_host"), (
            f"{name}: expected a device array back, got {type(got).__name__}"
        )
    got = host(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {dtype}"
    g, w = got.astype(np.float64), want.astype(np.float64)
    finite = w[np.isfinite(w)]
    if scale is None:
        scale = float(np.abs(finite).max()) if finite.size else 1.0
    with np.errstate(invalid="ignore"):
        error = np.abs(g - w)
        limit = RTOL[dtype] * (np.abs(w) + max(scale, 1e-30))
        ok = (np.isnan(g) & np.isnan(w)) | (np.isinf(w) & (g == w)) | (error <= limit)
    if not ok.all():
        worst = np.unravel_index(np.argmax(np.where(ok, -np.inf, np.nan_to_num(error, nan=np.inf))), got.shape)
        raise AssertionError(
            f"{name}: {int((~ok).sum())} of {got.size} differ; worst at {worst}: got {g[worst]!r}, "
            f"expected {w[worst]!r} (allowed {limit[worst]:.3g})"
        )


@pytest.fixture
def rng():
    return np.random.default_rng(6)


def rand(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def both(op, *args, **kwargs):
    """(cuda result, reference result) of ``ops.<op>``."""
    return getattr(ops, op)(*args, backend="cuda", **kwargs), getattr(ops, op)(*args, backend="numpy", **kwargs)


# --- matmul ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,k,n", [(5, 7, 3), (1, 1, 1), (3, 20, 13), (17, 9, 2)])
def test_matmul(rng, dtype, m, k, n):
    a, b = rand(rng, (m, k), dtype), rand(rng, (k, n), dtype)
    got, want = both("matmul", a, b)
    assert_close(got, want, dtype, "matmul")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matmul_several_tiles(rng, dtype):
    # 130 x 134 output: 3 x 3 blocks of the 64 x 64 tile (2 x 2 of a 128 x 128 one), with
    # ragged edges; K = 21: two depth stages of 16 (three of 8), the last one ragged
    a, b = rand(rng, (130, 21), dtype), rand(rng, (21, 134), dtype)
    assert_close(ops.matmul(a, b, backend="cuda"), a @ b, dtype, "matmul")
    # the transposed operands of linear_backward, over the same tiles
    dy = rand(rng, (130, 134), dtype)
    dx, dw, _ = ops.linear_backward(a, b, dy, has_bias=False, backend="cuda")
    assert_close(dx, dy @ b.T, dtype, "dx")
    assert_close(dw, a.T @ dy, dtype, "dw")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matmul_transposed_and_strided_inputs(rng, dtype):
    a = rand(rng, (7, 5), dtype).T  # (5, 7), F-ordered view
    b = rand(rng, (14, 6), dtype)[::2, ::2]  # (7, 3), strided view
    got, want = both("matmul", a, b)
    assert_close(got, want, dtype, "matmul")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh"])
def test_linear_forward(rng, dtype, activation):
    x, w, b = rand(rng, (5, 7), dtype), rand(rng, (7, 3), dtype), rand(rng, (3,), dtype)
    got, want = both("linear", x, w, b, activation=activation)
    assert_close(got, want, dtype, f"linear {activation}")


def test_linear_forward_without_bias(rng):
    dtype = np.dtype(np.float64)
    x, w = rand(rng, (3, 13), dtype), rand(rng, (13, 4), dtype)
    got, want = both("linear", x, w, None, activation="relu")
    assert_close(got, want, dtype, "linear")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("has_bias", [True, False])
def test_linear_backward(rng, dtype, has_bias):
    # w transposed: dx = dy @ w.T reads w through the kernel's transposed indexing of a view
    x, w, dy = rand(rng, (17, 9), dtype), rand(rng, (5, 9), dtype).T, rand(rng, (17, 5), dtype)
    (dx, dw, db), (rx, rw, rb) = both("linear_backward", x, w, dy, has_bias)
    assert_close(dx, rx, dtype, "dx")
    assert_close(dw, rw, dtype, "dw")
    if has_bias:
        assert_close(db, rb, dtype, "db")
    else:
        assert db is None
    (dx, dw, db), _ = both("linear_backward", x, w, dy, has_bias, need_dx=False)
    assert dx is None
    assert_close(dw, rw, dtype, "dw without dx")


# --- activations ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(5, 7), (1, 1), (3, 2, 4)])
@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
def test_activation(rng, dtype, shape, name):
    x = rand(rng, shape, dtype, scale=3.0)
    x.flat[0] = 0.0  # relu's gradient is 0 at 0
    if x.size > 2:
        x.flat[1], x.flat[2] = 60.0, -60.0  # sigmoid must not overflow either way
    got, want = both(name, x)
    assert_close(got, want, dtype, name)
    y = getattr(ops, name)(x, backend="numpy")
    saved = x if name == "relu" else y
    dy = rand(rng, shape, dtype)
    got, want = both(f"{name}_backward", saved, dy)
    assert_close(got, want, dtype, f"{name}_backward")


def test_activation_transposed_input(rng):
    dtype = np.dtype(np.float32)
    x = rand(rng, (4, 6), dtype).T
    got, want = both("tanh", x)
    assert_close(got, want, dtype, "tanh")


# --- softmax --------------------------------------------------------------------------


def logits_with_edges(rng, shape, dtype):
    x = rand(rng, shape, dtype, scale=3.0)
    x[0, 0] = -np.inf
    if shape[0] > 1:
        x[1, :] = -np.inf  # a row of all -inf: nan, as PyTorch
    if shape[0] > 2:
        x[2, 0], x[2, -1] = 1e4, -1e4
    if shape[0] > 3:
        x[3, :] = 1e4  # ties at a huge value
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(5, 7), (1, 1), (3, 13), (4, 70)])
def test_softmax_family(rng, dtype, shape):
    # (4, 70): 96 threads per row, 3 warps reduced through shared memory
    x = logits_with_edges(rng, shape, dtype)
    with np.errstate(invalid="ignore"):
        for name in ("log_softmax", "softmax"):
            got, want = both(name, x)
            assert_close(got, want, dtype, name)
    y = ops.log_softmax(rand(rng, shape, dtype), backend="numpy")
    got, want = both("log_softmax_backward", y, rand(rng, shape, dtype))
    assert_close(got, want, dtype, "log_softmax_backward")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_past_four_loads_per_thread(rng, dtype):
    # 1100 columns, 256 threads: each thread's first four columns go through the
    # four-loads-per-trip loop, the rest one at a time; the max sits in each part in
    # turn, and -inf entries fall in both
    x = logits_with_edges(rng, (4, 1100), dtype)
    x[0, 1099] = 30.0  # max in the one-at-a-time tail
    x[1, 5] = 30.0  # max in the first trip
    x[1, 300:1100:7] = -np.inf
    labels = np.array([1099, 5, 0, 17])
    with np.errstate(invalid="ignore"):
        for name in ("log_softmax", "softmax"):
            got, want = both(name, x)
            assert_close(got, want, dtype, name)
        (loss, grad), (want_loss, want_grad) = both(
            "cross_entropy_with_grad", x, labels, reduction="none", label_smoothing=0.1)
    assert_close(loss, want_loss, dtype, "loss")
    assert_close(grad, want_grad, dtype, "dlogits")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_logits_keep_their_precision(dtype):
    # log_softmax = (x - max) - log(sum): x - max is exact near the max, where max + log(sum)
    # would round to the float32 spacing at 1e4 (1e-3).  Tolerance relative to O(1) values.
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, 1e4 - 1]], dtype=dtype)
    got, want = both("log_softmax", x)
    assert_close(got, want, dtype, "log_softmax", scale=1.0)
    labels = np.array([0, 1, 2])
    (loss, grad), (want_loss, want_grad) = both("cross_entropy_with_grad", x, labels, reduction="none")
    assert_close(loss, want_loss, dtype, "row losses", scale=1.0)
    assert_close(grad, want_grad, dtype, "dlogits", scale=1.0)


def test_log_softmax_transposed_input(rng):
    dtype = np.dtype(np.float64)
    x = rand(rng, (9, 17), dtype).T
    got, want = both("log_softmax", x)
    assert_close(got, want, dtype, "log_softmax")


# --- cross-entropy --------------------------------------------------------------------

CE_CASES = {
    "plain": {},
    "ignore": {"ignore_index": 2},
    "smoothing": {"label_smoothing": 0.1},
    "weight": {"weight": True},
    "all": {"ignore_index": -100, "label_smoothing": 0.25, "weight": True, "ignored_rows": True},
}


def ce_inputs(rng, dtype, case, n=5, c=7):
    options = dict(CE_CASES[case])
    logits = rand(rng, (n, c), dtype, scale=2.0)
    logits[0, 1] = -np.inf  # a -inf logit that is not the label: finite loss
    logits[1, 3] = 1e4
    labels = rng.integers(0, c, n)
    labels[0] = 2
    if options.pop("ignored_rows", False):
        labels[[1, 3]] = -100
    if options.get("weight"):
        options["weight"] = rng.uniform(0.2, 2.0, c).astype(dtype)
    else:
        options.pop("weight", None)
    return logits, labels, options


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CE_CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_with_grad(rng, dtype, case, reduction):
    logits, labels, options = ce_inputs(rng, dtype, case)
    (loss, grad), (want_loss, want_grad) = both(
        "cross_entropy_with_grad", logits, labels, reduction=reduction, **options
    )
    if reduction != "none":
        assert isinstance(loss, np.generic) or (isinstance(loss, np.ndarray) and loss.ndim == 0)
    assert_close(np.asarray(loss), np.asarray(want_loss), dtype, "loss")
    assert_close(grad, want_grad, dtype, "dlogits")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_entropy_forward(rng, dtype):
    logits, labels, options = ce_inputs(rng, dtype, "all")
    got, want = both("cross_entropy", logits, labels, label_smoothing=0.1)
    assert_close(np.asarray(got), np.asarray(want), dtype, "loss")
    got, want = both("cross_entropy", logits, labels, reduction="none", **options)
    assert_close(got, want, dtype, "row losses")


def test_cross_entropy_edge_rows(rng):
    dtype = np.dtype(np.float32)
    logits = rand(rng, (3, 13), dtype)
    logits[0, :] = -np.inf  # all -inf: nan row, as the reference
    logits[1, 4] = -np.inf  # the label's logit is -inf: infinite loss
    labels = np.array([1, 4, 0])
    with np.errstate(invalid="ignore"):
        for reduction in ("none", "sum"):
            (loss, grad), (want_loss, want_grad) = both(
                "cross_entropy_with_grad", logits, labels, reduction=reduction
            )
            assert_close(np.asarray(loss), np.asarray(want_loss), dtype, "loss")
            assert_close(grad, want_grad, dtype, "dlogits")


def test_cross_entropy_every_row_ignored(rng):
    dtype = np.dtype(np.float64)
    logits = rand(rng, (3, 4), dtype)
    labels = np.full(3, -100)
    loss, grad = ops.cross_entropy_with_grad(logits, labels, backend="cuda")
    # the loss is 0 / 0, the gradient of every (ignored) row 0, as PyTorch and the reference
    assert np.isnan(loss) and (host(grad) == 0).all()
    _, dx, dw, db = ops.linear_cross_entropy(logits, np.ones((4, 2)), np.zeros(2), labels, backend="cuda")
    assert (host(dx) == 0).all() and (host(dw) == 0).all() and (host(db) == 0).all()


def test_cross_entropy_wide_rows(rng):
    # 300 classes: 256 threads (8 warps) per row, two classes per thread, the smoothing
    # sum reduced through shared memory too
    dtype = np.dtype(np.float32)
    logits = rand(rng, (2, 300), dtype, scale=4.0)
    labels = np.array([7, 299])
    weight = rng.uniform(0.5, 1.5, 300).astype(dtype)
    (loss, grad), (want_loss, want_grad) = both(
        "cross_entropy_with_grad", logits, labels, label_smoothing=0.2, weight=weight
    )
    assert_close(np.asarray(loss), np.asarray(want_loss), dtype, "loss")
    assert_close(grad, want_grad, dtype, "dlogits")


# --- MSE ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 13), (1, 1), (20, 30)])  # 600: 3 partial blocks
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse(rng, dtype, shape, reduction):
    pred, target = rand(rng, shape, dtype), rand(rng, shape, dtype)
    got, want = both("mse", pred, target, reduction=reduction)
    assert_close(np.asarray(got), np.asarray(want), dtype, "mse")
    got, want = both("mse_backward", pred, target, reduction=reduction)
    assert_close(got, want, dtype, "mse_backward")


# --- fused linear cross-entropy -------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "chunk_size,bias,case,reduction",
    [
        (4, True, "plain", "mean"),
        (2, False, "all", "mean"),
        (3, True, "all", "sum"),
        (None, True, "smoothing", "mean"),
    ],
)
def test_linear_cross_entropy(rng, dtype, chunk_size, bias, case, reduction):
    n, fan_in, c = 5, 4, 6  # chunks of 4, 2, 3: the last one ragged
    _, labels, options = ce_inputs(rng, dtype, case, n=n, c=c)
    x, w = rand(rng, (n, fan_in), dtype), rand(rng, (fan_in, c), dtype)
    b = rand(rng, (c,), dtype) if bias else None
    got, want = both(
        "linear_cross_entropy", x, w, b, labels, reduction=reduction, chunk_size=chunk_size, **options
    )
    for name, g, r in zip(("loss", "dx", "dw", "db"), got, want):
        if r is None:
            assert g is None, name
        else:
            assert_close(np.asarray(g) if name == "loss" else g, np.asarray(r), dtype, name)


def test_linear_cross_entropy_holds_one_chunk_of_logits(rng, monkeypatch):
    # every device allocation is recorded: the (N, C) logits must never be one of them
    n, fan_in, c, chunk = 5, 3, 4, 3
    shapes = []
    allocate = cuda.device_array

    def recording(shape, *args, **kwargs):
        shapes.append(tuple(np.atleast_1d(shape)))
        return allocate(shape, *args, **kwargs)

    monkeypatch.setattr(cuda, "device_array", recording)
    dtype = np.dtype(np.float32)
    x, w, b = rand(rng, (n, fan_in), dtype), rand(rng, (fan_in, c), dtype), rand(rng, (c,), dtype)
    labels = rng.integers(0, c, n)
    got = ops.linear_cross_entropy(x, w, b, labels, chunk_size=chunk, backend="cuda")
    want = ops.linear_cross_entropy(x, w, b, labels, backend="numpy")
    assert (chunk, c) in shapes and (n, c) not in shapes, shapes
    for name, g, r in zip(("loss", "dx", "dw", "db"), got, want):
        assert_close(np.asarray(g), np.asarray(r), dtype, name)


# --- optimizers -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    ],
    ids=["plain", "momentum", "nesterov_decay"],
)
def test_sgd_step(rng, dtype, options):
    param, grad = rand(rng, (5, 7), dtype), rand(rng, (5, 7), dtype)
    velocity = rand(rng, (5, 7), dtype) if options.get("momentum") else None
    ref_param, ref_velocity = param.copy(), None if velocity is None else velocity.copy()
    for _ in range(2):  # a second step reads the velocity the first one wrote back
        ops.sgd_step(param, grad, velocity, lr=0.1, backend="cuda", **options)
        ops.sgd_step(ref_param, grad, ref_velocity, lr=0.1, backend="numpy", **options)
    assert_close(param, ref_param, dtype, "param")
    if velocity is not None:
        assert_close(velocity, ref_velocity, dtype, "velocity")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "options", [{}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "decoupled": True}],
    ids=["adam", "adam_l2", "adamw"],
)
def test_adam_step(rng, dtype, options):
    shape = (3, 2, 4)
    param, grad = rand(rng, shape, dtype), rand(rng, shape, dtype)
    state = [np.zeros(shape, dtype), np.zeros(shape, dtype)]
    ref = [param.copy(), state[0].copy(), state[1].copy()]
    for step in (1, 2):
        ops.adam_step(param, grad, *state, step, lr=0.01, backend="cuda", **options)
        ops.adam_step(ref[0], grad, ref[1], ref[2], step, lr=0.01, backend="numpy", **options)
    for name, got, want in zip(("param", "exp_avg", "exp_avg_sq"), [param, *state], ref):
        assert_close(got, want, dtype, name)


# --- device arrays in, device arrays out ----------------------------------------------
# Called on the backend modules: kernprop.ops validates device arrays through
# __cuda_array_interface__, which the simulator's arrays do not have.


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_device_arrays_stay_on_device(rng, dtype):
    x, w, b = rand(rng, (5, 7), dtype), rand(rng, (7, 3), dtype), rand(rng, (3,), dtype)
    labels = np.array([0, 2, 1, -100, 2])
    d_x, d_w, d_b = cuda.to_device(x), cuda.to_device(w), cuda.to_device(b)
    ref = kernprop.kernels.reference

    assert_close(cuda_matmul.matmul(d_x, d_w), x @ w, dtype, "matmul", on_device=True)
    assert_close(
        cuda_matmul.linear_forward(d_x, d_w, d_b, "tanh"), np.tanh(x @ w + b), dtype, "linear", on_device=True
    )
    assert_close(cuda_activations.relu_forward(d_x), np.maximum(x, 0), dtype, "relu", on_device=True)
    assert_close(
        cuda_softmax.log_softmax_forward(d_x), ref.softmax.log_softmax_forward(x), dtype, "log_softmax",
        on_device=True,
    )
    loss, grad = cuda_losses.cross_entropy_with_grad(d_x, labels, "mean", -100, 0.1, None)
    want_loss, want_grad = ref.losses.cross_entropy_with_grad(x, labels, "mean", -100, 0.1, None)
    assert isinstance(loss, np.generic) and loss.dtype == dtype
    assert_close(np.asarray(loss), np.asarray(want_loss), dtype, "loss")
    assert_close(grad, want_grad, dtype, "dlogits", on_device=True)
    rows = cuda_losses.cross_entropy_forward(d_x, labels, "none", -100, 0.0, None)
    want_rows = ref.losses.cross_entropy_forward(x, labels, "none", -100, 0.0, None)
    assert_close(rows, want_rows, dtype, "row losses", on_device=True)
    assert_close(
        cuda_losses.mse_backward(d_x, d_x, "mean"), np.zeros_like(x), dtype, "mse_backward", on_device=True
    )
    got = cuda_losses.linear_cross_entropy(d_x, d_w, d_b, labels, "sum", -100, 0.0, None, 3)
    want = ref.losses.linear_cross_entropy(x, w, b, labels, "sum", -100, 0.0, None, 3)
    assert_close(np.asarray(got[0]), np.asarray(want[0]), dtype, "loss")
    for name, g, r in zip(("dx", "dw", "db"), got[1:], want[1:]):
        assert_close(g, r, dtype, name, on_device=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_device_transposed_view(rng, dtype):
    # a strided device array is read with its strides, no copy
    a, b = rand(rng, (7, 5), dtype), rand(rng, (7, 3), dtype)
    d_a_t = cuda.to_device(a).T
    assert_close(cuda_matmul.matmul(d_a_t, cuda.to_device(b)), a.T @ b, dtype, "matmul", on_device=True)
    assert_close(
        cuda_activations.sigmoid_forward(d_a_t), 1 / (1 + np.exp(-a.T)), dtype, "sigmoid", on_device=True
    )


def test_device_optimizer_updates_in_place(rng):
    from kernprop.kernels.numba_cuda import optimizers as cuda_optimizers

    dtype = np.dtype(np.float32)
    param, grad, velocity = rand(rng, (17, 9), dtype), rand(rng, (17, 9), dtype), np.zeros((17, 9), dtype)
    d_param, d_velocity = cuda.to_device(param), cuda.to_device(velocity)
    cuda_optimizers.sgd_step(d_param, cuda.to_device(grad), d_velocity, 0.1, 0.9, False, 0.0)
    kernprop.kernels.reference.optimizers.sgd_step(param, grad, velocity, 0.1, 0.9, False, 0.0)
    assert_close(d_param, param, dtype, "param", on_device=True)
    assert_close(d_velocity, velocity, dtype, "velocity", on_device=True)


def test_ops_accept_device_arrays(rng):
    from kernprop._validate import is_device_array

    x = rand(rng, (3, 4), np.float32)
    d_x = cuda.to_device(x)
    assert is_device_array(d_x)
    out = ops.relu(d_x, backend="cuda")
    assert hasattr(out, "copy_to_host")
    assert_close(out, np.maximum(x, 0), np.dtype(np.float32), "relu")

    labels = np.array([0, 3, 1])
    loss, d_grad = ops.cross_entropy_with_grad(d_x, cuda.to_device(labels), backend="cuda")
    want_loss, want_grad = kernprop.kernels.reference.losses.cross_entropy_with_grad(
        x, labels, "mean", -100, 0.0, None
    )
    assert hasattr(d_grad, "copy_to_host")
    assert_close(d_grad, want_grad, np.dtype(np.float32), "dlogits")
    assert abs(float(loss) - float(want_loss)) < 1e-5
    with pytest.raises(ValueError, match=r"labels\[1\] = 7 is out of range"):
        ops.cross_entropy(d_x, cuda.to_device(np.array([0, 7, 1])), backend="cuda")
