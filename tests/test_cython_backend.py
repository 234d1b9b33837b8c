"""Cython-specific checks: the OpenMP build, results independent of the thread count,
read-only inputs, and the GEMM's edge tiles and strided operands."""

import numpy as np
import pytest

import kernprop
from kernprop.backends import status
from kernprop.kernels.reference import losses as ref_losses
from kernprop.kernels.reference import matmul as ref_matmul

from conftest import assert_close, make_array, readonly

pytestmark = pytest.mark.skipif(
    not status("cython").available, reason=f"cython backend unavailable: {status('cython').reason}"
)


@pytest.fixture
def threads():
    """Set the thread count inside a test; the count before is restored after it."""
    before = kernprop.get_num_threads()
    yield kernprop.set_num_threads
    kernprop.set_num_threads(before)


def test_openmp_reported():
    from kernprop._cy import parallel

    enabled = parallel.openmp_enabled()
    assert isinstance(enabled, bool)
    if not enabled:
        pytest.skip("extensions built without OpenMP: the cython backend runs serial")
    # Importing the backend syncs the OpenMP count with Numba's.
    import kernprop.kernels.cython  # noqa: F401

    assert parallel.get_num_threads() == kernprop.get_num_threads()


def test_set_num_threads_reaches_openmp(threads):
    from kernprop._cy import parallel

    if not parallel.openmp_enabled():
        pytest.skip("extensions built without OpenMP")
    threads(1)
    assert parallel.get_num_threads() == 1
    threads(2)
    assert parallel.get_num_threads() == 2


def _every_op(x, w, b, dy, labels, weight):
    """Each op of each family once on the cython backend."""
    run = dict(backend="cython")
    out = {
        "matmul": kernprop.matmul(x, w, **run),
        "linear": kernprop.linear(x, w, b, activation="tanh", **run),
        "linear_backward": kernprop.linear_backward(x, w, dy, **run),
        "relu": kernprop.relu(x, **run),
        "sigmoid": kernprop.sigmoid(x, **run),
        "tanh": kernprop.tanh(x, **run),
        "log_softmax_backward": kernprop.log_softmax_backward(
            kernprop.log_softmax(dy, **run), dy, **run
        ),
        "log_softmax": kernprop.log_softmax(dy, **run),
        "softmax": kernprop.softmax(dy, **run),
        "cross_entropy": kernprop.cross_entropy_with_grad(
            dy, labels, label_smoothing=0.1, weight=weight, **run
        ),
        "mse": kernprop.mse(x, x[::-1], **run),
        "mse_backward": kernprop.mse_backward(x, x[::-1], **run),
        "linear_cross_entropy": kernprop.linear_cross_entropy(
            x, w, b, labels, weight=weight, chunk_size=37, **run
        ),
    }
    flat = []
    for value in out.values():
        flat.extend(v for v in (value if isinstance(value, tuple) else (value,)) if v is not None)
    return flat


def _inputs(rng, dtype):
    # Big enough that every kernel takes its parallel path (over 32k elements, over
    # 2**17 multiply-adds for the GEMM).
    n, fan_in, c = 300, 130, 257
    x = rng.uniform(-2, 2, (n, fan_in)).astype(dtype)
    w = rng.uniform(-1, 1, (fan_in, c)).astype(dtype)
    b = rng.uniform(-1, 1, c).astype(dtype)
    dy = rng.uniform(-3, 3, (n, c)).astype(dtype)
    labels = rng.integers(0, c, n)
    labels[::5] = -100
    weight = rng.uniform(0.5, 2, c).astype(dtype)
    return x, w, b, dy, labels, weight


def test_results_do_not_depend_on_thread_count(threads, dtype, rng):
    # Every kernel gives each output element (and each partial sum) to one thread in an
    # order fixed by the data, not the threads: 1 and 2 threads agree bit for bit.
    inputs = _inputs(rng, dtype)
    threads(1)
    one = _every_op(*inputs)
    threads(2)
    two = _every_op(*inputs)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_optimizers_do_not_depend_on_thread_count(threads, dtype, rng):
    shape = (300, 257)
    grad = rng.standard_normal(shape).astype(dtype)
    start = [rng.standard_normal(shape).astype(dtype) for _ in range(3)]
    start[2] = np.abs(start[2])
    results = []
    for count in (1, 2):
        threads(count)
        param, exp_avg, exp_avg_sq = (a.copy() for a in start)
        kernprop.adam_step(param, grad, exp_avg, exp_avg_sq, 3, weight_decay=0.01, backend="cython")
        velocity = np.zeros_like(param)
        kernprop.sgd_step(param, grad, velocity, lr=0.1, momentum=0.9, nesterov=True, backend="cython")
        results.append((param, exp_avg, exp_avg_sq, velocity))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_read_only_inputs(dtype, rng):
    # const memoryviews accept arrays that may not be written; nothing writes to them.
    x, w, b, dy, labels, weight = readonly(*_inputs(rng, dtype))
    _every_op(x, w, b, dy, labels, weight)
    param = rng.standard_normal(10).astype(dtype)
    kernprop.sgd_step(param, readonly(np.ones(10, dtype)), lr=0.1, backend="cython")


@pytest.fixture(params=["generic", "avx2", "avx512"])
def gemm_kernel(request):
    """Each GEMM micro-kernel this CPU can run, forced in turn (others skipped)."""
    from kernprop._cy import matmul

    if request.param not in matmul.gemm_kernels():
        pytest.skip(f"this CPU has no {request.param} (has {matmul.gemm_kernels()})")
    matmul.set_gemm_kernel(request.param)
    yield request.param
    matmul.set_gemm_kernel(None)


def test_gemm_kernel_reported():
    from kernprop._cy import matmul

    assert matmul.gemm_kernels()[0] == "generic"
    assert matmul.gemm_kernel() == matmul.gemm_kernels()[-1]
    with pytest.raises(ValueError):
        matmul.set_gemm_kernel("no-such-kernel")


@pytest.mark.parametrize(
    "m, k, n",
    [(1, 1, 1), (1, 300, 1), (5, 3, 9), (4, 256, 8), (6, 257, 16), (7, 5, 33), (97, 257, 101),
     (300, 513, 17)],
)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_gemm_edge_tiles_and_strides(gemm_kernel, dtype, rng, m, k, n, layout):
    # Sizes around the micro-tiles (4 x 32 bytes generic, 6 x 64 or 128 bytes SIMD) and
    # the 256-deep K slice, operands of every layout (the packing reads any strides).
    a = make_array(rng, (m, k), dtype, layout)
    b = make_array(rng, (k, n), dtype, layout)
    got = kernprop.matmul(a, b, backend="cython")
    assert_close(got, ref_matmul.matmul(a, b), dtype, scale=float(np.sqrt(k)) * 4)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh"])
def test_linear_epilogue_both_kernels(gemm_kernel, dtype, rng, activation):
    x, w = rng.uniform(-2, 2, (45, 70)).astype(dtype), rng.uniform(-1, 1, (70, 23)).astype(dtype)
    b = rng.uniform(-1, 1, 23).astype(dtype)
    got = kernprop.linear(x, w, b, activation=activation, backend="cython")
    assert_close(got, ref_matmul.linear_forward(x, w, b, activation), dtype, scale=10.0)


def test_gemm_wider_than_one_b_panel(gemm_kernel, dtype, rng):
    # N > NC = 4096: B is packed one (KC, NC) panel at a time, and bias and activation
    # are applied per panel after its last K slice.
    x = rng.uniform(-1, 1, (7, 300)).astype(dtype)
    w = rng.uniform(-1, 1, (300, 4100)).astype(dtype)[:, ::-1]
    b = rng.uniform(-1, 1, 4100).astype(dtype)
    got = kernprop.linear(x, w, b, activation="relu", backend="cython")
    assert_close(got, ref_matmul.linear_forward(x, w, b, "relu"), dtype, scale=20.0)


def test_strided_bias(dtype, rng):
    # A bias view with a stride is copied for the kernel, which reads it contiguous.
    x, w, b, _, labels, _ = _inputs(rng, dtype)
    b_strided = np.repeat(b, 2)[::2]
    assert not b_strided.flags.c_contiguous
    got = kernprop.linear(x, w, b_strided, backend="cython")
    assert_close(got, ref_matmul.linear_forward(x, w, b, None), dtype, scale=20.0)
    loss = kernprop.linear_cross_entropy(x, w, b_strided, labels, backend="cython")[0]
    want = ref_losses.linear_cross_entropy(x, w, b, labels, "mean", -100, 0.0, None, 64)[0]
    assert_close(loss, want, dtype, scale=10.0)


def test_gemm_negative_strides(dtype, rng):
    a = rng.standard_normal((33, 21)).astype(dtype)[::-1, ::-1]
    b = rng.standard_normal((21, 19)).astype(dtype)[::-1]
    assert_close(kernprop.matmul(a, b, backend="cython"), a @ b, dtype, scale=20.0)


def test_linear_cross_entropy_chunks_in_place(dtype, rng):
    # One chunk buffer serves every chunk, the gradient overwriting the logits: chunk
    # sizes of 1, a non-divisor and more than N rows all give the reference's answer.
    x, w, b, _, labels, weight = _inputs(rng, dtype)
    want = ref_losses.linear_cross_entropy(x, w, b, labels, "mean", -100, 0.1, weight, 1)
    for chunk in (1, 37, 1000):
        got = kernprop.linear_cross_entropy(
            x, w, b, labels, label_smoothing=0.1, weight=weight, chunk_size=chunk, backend="cython"
        )
        for g, r, name in zip(got, want, ("loss", "dx", "dw", "db")):
            assert_close(g, r, dtype, rtol=1e-4 if dtype == np.float32 else 1e-11, name=name)


# Short rows (C < 128) go through the row-blocked float32 kernels (pyx/_short_rows.pxi):
# blocks of rows, a partial last block, and enough elements for the parallel path.
SHORT_SHAPES = [(5000, 10), (4099, 3), (3001, 31), (2000, 1), (700, 127), (513, 2)]


@pytest.mark.parametrize("shape", SHORT_SHAPES)
def test_short_rows_match_reference(rng, shape):
    from kernprop.kernels.reference import softmax as ref_softmax

    x = rng.uniform(-8, 8, shape).astype(np.float32)
    x[3, 0] = -np.inf
    dy = rng.uniform(-1, 1, shape).astype(np.float32)
    run = dict(backend="cython")
    assert_close(kernprop.log_softmax(x, **run), ref_softmax.log_softmax_forward(x), np.float32)
    assert_close(kernprop.softmax(x, **run), ref_softmax.softmax_forward(x), np.float32)
    y = ref_softmax.log_softmax_forward(x)
    assert_close(kernprop.log_softmax_backward(y, dy, **run), ref_softmax.log_softmax_backward(y, dy),
                 np.float32, scale=float(np.abs(dy).sum(axis=1).max()))


@pytest.mark.parametrize("shape", SHORT_SHAPES)
@pytest.mark.parametrize("smoothing, weighted, reduction", [
    (0.0, False, "mean"), (0.2, False, "sum"), (0.0, True, "none"), (0.3, True, "mean")])
def test_short_rows_cross_entropy(rng, shape, smoothing, weighted, reduction):
    n, c = shape
    x = rng.uniform(-8, 8, shape).astype(np.float32)
    labels = rng.integers(0, c, n)
    labels[::7] = -100
    weight = rng.uniform(0.5, 2, c).astype(np.float32) if weighted else None
    args = (reduction, -100, smoothing, weight)
    want_loss, want_grad = ref_losses.cross_entropy_with_grad(x, labels, *args)
    loss, grad = kernprop.cross_entropy_with_grad(
        x, labels, reduction=reduction, label_smoothing=smoothing, weight=weight, backend="cython")
    scale = 8.0 * (1 if reduction == "none" else n)
    assert_close(loss, want_loss, np.float32, scale=scale, name="loss")
    assert_close(grad, want_grad, np.float32, scale=float(np.abs(want_grad).max()), name="grad")
    loss_only = kernprop.cross_entropy(
        x, labels, reduction=reduction, label_smoothing=smoothing, weight=weight, backend="cython")
    np.testing.assert_array_equal(loss_only, loss)


def test_short_rows_do_not_depend_on_thread_count(threads, rng):
    n, fan_in, c = 5000, 40, 10
    x = rng.uniform(-2, 2, (n, fan_in)).astype(np.float32)
    w = rng.uniform(-1, 1, (fan_in, c)).astype(np.float32)
    b = rng.uniform(-1, 1, c).astype(np.float32)
    logits = rng.uniform(-5, 5, (n, c)).astype(np.float32)
    labels = rng.integers(0, c, n)
    labels[::5] = -100
    weight = rng.uniform(0.5, 2, c).astype(np.float32)
    run = dict(backend="cython")

    def every():
        return [
            kernprop.log_softmax(logits, **run), kernprop.softmax(logits, **run),
            kernprop.log_softmax_backward(logits, logits[::-1], **run),
            *kernprop.cross_entropy_with_grad(logits, labels, label_smoothing=0.1, weight=weight, **run),
            *kernprop.linear_cross_entropy(x, w, b, labels, weight=weight, chunk_size=999, **run),
        ]

    threads(1)
    one = every()
    threads(2)
    two = every()
    for a, b in zip(one, two):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
