"""Cython-specific checks: the OpenMP build, results independent of the thread count,
read-only inputs, and the GEMM's edge tiles and strided operands."""

import os

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
    """Each fp32 GEMM micro-kernel this CPU can run, forced in turn for "fp32" (which
    float64 products use too); the others skipped with the reason."""
    from kernprop.kernels.cython import matmul

    if request.param not in matmul.available_kernels():
        pytest.skip(f"this CPU has no {request.param} (has {matmul.available_kernels()})")
    matmul.select_kernel("fp32", request.param)
    yield request.param
    matmul.select_kernel("fp32", None)


def test_gemm_kernel_reported():
    from kernprop._cy import matmul as cy
    from kernprop.kernels.cython import matmul

    assert cy.gemm_kernels()[0] == "generic"
    # the kernels the build and CPU run, as far as the instruction-set row allows
    assert set(matmul.available_kernels()) <= set(cy.gemm_kernels() + cy.bf16_kernels())
    assert matmul.available_kernels()[-1 - len(matmul._bf16_kernels())] == matmul.ROW.cython_kernel \
        or matmul.ROW.cython_kernel not in cy.gemm_kernels()
    info = matmul.kernel_info()
    assert set(info) == {"fp32", "bf16x3", "bf16"}
    best = matmul._float_kernels()[-1]
    assert info["fp32"].startswith(f"fp32_{best}_{cy.KERNEL_TILES[cy.KERNEL_NAMES.index(best)]}")
    # the full name is accepted wherever a name is
    assert matmul.select_kernel("fp32", matmul.full_name("generic")) == best
    assert matmul.kernel_info()["fp32"].startswith("fp32_generic_4x8")
    matmul.select_kernel("fp32", None)
    with pytest.raises(ValueError):
        matmul.select_kernel("fp32", "no-such-kernel")
    with pytest.raises(ValueError):
        cy.kernel_code("no-such-kernel")


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


# --- matmul precision: every kernel allowed for a precision, forced in turn -----------

# Relative bound per precision, in units of |a| @ |b|, on top of float32 accumulation:
# a kernel computing more accurately than asked differs from the reference by the
# operands' rounding (bf16: 2^-9 each; bf16x3: the residual's 2^-17 each).
ROUNDING = {"fp32": 0.0, "bf16x3": 2.0**-15, "bf16": 2.0**-7}
ALL_KERNELS = ["generic", "avx2", "avx512", "avx512_bf16"]


def _kernel_cases():
    from kernprop.kernels.cython import matmul

    for precision in ROUNDING:
        for name in ALL_KERNELS:
            if name.endswith("bf16") and precision != "bf16":
                continue  # less accurate than asked: refused (test_bf16_kernel_refused_...)
            yield precision, name


@pytest.fixture(params=list(_kernel_cases()), ids=lambda case: f"{case[0]}-{case[1]}")
def precision_kernel(request):
    """(precision, kernel name) with the kernel forced for that precision."""
    from kernprop.kernels.cython import matmul

    precision, name = request.param
    if name not in matmul.available_kernels():
        pytest.skip(f"this CPU has no {name} (has {matmul.available_kernels()})")
    matmul.select_kernel(precision, name)
    yield request.param
    matmul.select_kernel(precision, None)


def _assert_within(got, a, b, precision, native, name="result"):
    # |got - reference(precision)| <= (4 K 2^-24 + rounding) |a| @ |b|, rounding 0 when
    # the kernel computes the precision natively (then only the accumulation differs)
    want = ref_matmul.product(a, b, precision).astype(np.float64)
    k = a.shape[1]
    rel = 4 * k * 2.0**-24 + (0.0 if native else ROUNDING[precision]) + 1e-30
    bound = rel * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)) + 1e-30
    error = np.abs(np.asarray(got, np.float64) - want)
    worst = np.unravel_index(np.argmax(error / bound), error.shape)
    assert np.all(error <= bound), (
        f"{name} at {precision}: worst at {worst}: got {got[worst]!r}, want {want[worst]!r}, "
        f"|diff| {error[worst]:.3g} > {bound[worst]:.3g}")


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (7, 3, 33), (97, 257, 101), (13, 600, 40)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_matmul_at_each_precision(precision_kernel, rng, m, k, n, layout):
    precision, name = precision_kernel
    a = make_array(rng, (m, k), np.float32, layout)
    b = make_array(rng, (k, n), np.float32, layout)
    got = kernprop.matmul(a, b, precision=precision, backend="cython")
    _assert_within(got, a, b, precision, native=name.endswith("bf16") or precision == "fp32")


def test_linear_ops_at_each_precision(precision_kernel, rng):
    precision, name = precision_kernel
    native = name.endswith("bf16") or precision == "fp32"
    x = rng.uniform(-2, 2, (45, 70)).astype(np.float32)
    w = rng.uniform(-1, 1, (70, 23)).astype(np.float32)
    dy = rng.uniform(-1, 1, (45, 23)).astype(np.float32)
    y = kernprop.linear(x, w, None, precision=precision, backend="cython")
    _assert_within(y, x, w, precision, native, "linear")
    dx, dw, _ = kernprop.linear_backward(x, w, dy, False, precision=precision, backend="cython")
    _assert_within(dx, dy, w.T, precision, native, "dx")
    _assert_within(dw, x.T, dy, precision, native, "dw")
    labels = rng.integers(0, 23, 45)
    loss, *grads = kernprop.linear_cross_entropy(
        x, w, None, labels, chunk_size=16, precision=precision, backend="cython")
    want = ref_losses.linear_cross_entropy(x, w, None, labels, "mean", -100, 0.0, None, 16, precision)
    # the logits differ by the bound above (|x| @ |w| <= 70 here); loss and gradients
    # follow smoothly
    tol = 70 * (4 * 70 * 2.0**-24 + (0.0 if native else ROUNDING[precision])) * 4 + 1e-6
    np.testing.assert_allclose(loss, want[0], atol=tol)
    for got, expected in zip(grads, want[1:]):
        if expected is not None:
            np.testing.assert_allclose(got, expected, atol=tol)


def test_float64_ignores_precision(rng):
    a, b = rng.standard_normal((20, 30)), rng.standard_normal((30, 10))
    exact = kernprop.matmul(a, b, precision="fp32", backend="cython")
    for precision in ("bf16x3", "bf16"):
        np.testing.assert_array_equal(kernprop.matmul(a, b, precision=precision, backend="cython"), exact)


def test_bf16_kernel_rounds_to_nearest_even(rng):
    # Operands chosen on bf16 rounding edges (ties both ways, just below and above a
    # tie, subnormals, NaN): with one-hot B each output is exactly bf16(a) as rounded by
    # the kernel's packing, so any departure from integer round-to-nearest-even shows.
    # (No infinities: inf times B's zeros is NaN in any product.)
    from kernprop.kernels.cython import matmul

    if "avx512_bf16" not in matmul.available_kernels():
        pytest.skip(f"no bf16 kernel here (have {matmul.available_kernels()})")
    bits = np.array([0x3F808000, 0x3F818000, 0x3F80C000, 0x3F807FFF, 0xBF808001, 0x7F7F7FFF,
                     0x00018000, 0x80028000, 0x00000001, 0x3F800000, 0x40490FDB, 0xC2F6E979],
                    dtype=np.uint32)
    a = bits.view(np.float32).reshape(1, -1).repeat(3, axis=0)
    b = np.eye(a.shape[1], dtype=np.float32)
    previous = matmul.select_kernel("bf16", "avx512_bf16")
    try:
        got = kernprop.matmul(a, b, precision="bf16", backend="cython")
        nan_row = np.full((1, a.shape[1]), np.nan, np.float32)
        with np.errstate(invalid="ignore"):
            got_nan = kernprop.matmul(np.vstack([nan_row, a]), b, precision="bf16", backend="cython")
    finally:
        matmul.select_kernel("bf16", None if previous is None else previous)
    want = ref_matmul.round_bf16(a)
    # vdpbf16ps reads bf16 subnormals as zero: the one documented departure
    subnormal = (np.abs(want) < np.finfo(np.float32).tiny) & (want != 0)
    np.testing.assert_array_equal(got[~subnormal], want[~subnormal])
    assert np.all(got[subnormal] == 0)
    assert np.all(np.isnan(got_nan[0])), "a NaN operand must make its row NaN"


def test_bf16_kernel_refused_for_more_accurate_precisions():
    from kernprop.kernels.cython import matmul

    if "avx512_bf16" not in matmul.available_kernels():
        pytest.skip("no bf16 kernel here")
    for precision in ("fp32", "bf16x3"):
        with pytest.raises(ValueError, match="less accurate"):
            matmul.select_kernel(precision, "avx512_bf16")


def test_self_check_refuses_a_broken_kernel():
    from kernprop.kernels.cython import matmul

    good = lambda a, b: ref_matmul.product(a, b, "fp32")  # noqa: E731
    assert matmul.self_check(good, "fp32") is None
    assert "failed" in matmul.self_check(lambda a, b: good(a, b) * (1 + 2.0**-9), "fp32")
    # an fp32 product passed off as a bf16 kernel: off by the bf16 rounding
    assert "failed" in matmul.self_check(good, "bf16")
    # a kernel that drops the last row of each tile, and one that raises
    broken = lambda a, b: np.vstack([good(a, b)[:-1], np.zeros((1, b.shape[1]), np.float32)])  # noqa: E731
    assert "failed" in matmul.self_check(broken, "fp32")
    assert "raised" in matmul.self_check(lambda a, b: 1 / 0, "fp32")


def test_kernel_forced_by_environment():
    import subprocess
    import sys

    from kernprop.kernels.cython import matmul

    code = ("from kernprop.kernels.cython import matmul; info = matmul.kernel_info(); "
            "print(info['fp32']); print(info['bf16'])")
    env = dict(os.environ, KERNPROP_CYTHON_GEMM_KERNEL="generic")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("fp32_generic_4x8") and "forced by" in out[0]
    assert out[1].startswith("fp32_generic_4x8")
    if "avx512_bf16" in matmul.available_kernels():
        env["KERNPROP_CYTHON_GEMM_KERNEL"] = "bf16=avx512_bf16"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.splitlines()
        assert out[1].startswith("bf16_avx512_6x32")


def test_bf16_does_not_depend_on_thread_count(threads, rng):
    a = rng.uniform(-2, 2, (301, 530)).astype(np.float32)
    b = rng.uniform(-2, 2, (530, 77)).astype(np.float32)
    threads(1)
    one = kernprop.matmul(a, b, precision="bf16", backend="cython")
    threads(2)
    two = kernprop.matmul(a, b, precision="bf16", backend="cython")
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_small_blocking_many_blocks(threads, rng, precision):
    # K blocks of 16 words and A blocks of 12 rows: many K blocks (the accumulate
    # branch), many A blocks per thread; 1 and 2 threads agree bit for bit.
    from kernprop._cy import matmul as cy
    from kernprop.kernels.cython import matmul

    before = cy.blocking()
    a = rng.uniform(-2, 2, (77, 301)).astype(np.float32)
    b = rng.uniform(-2, 2, (301, 45)).astype(np.float32)
    cy.set_blocking(16, 12)
    try:
        results = []
        for count in (1, 2):
            threads(count)
            results.append(kernprop.linear(a, b, None, activation="relu", precision=precision,
                                           backend="cython"))
    finally:
        cy.set_blocking(*before)
    np.testing.assert_array_equal(results[0], results[1])
    native = precision == "fp32" or matmul.kernel_info()["bf16"].startswith("bf16")
    # relu is monotone and 1-Lipschitz: the product's bound holds after it
    _assert_within(results[0] + np.minimum(ref_matmul.product(a, b, precision), 0), a, b,
                   precision, native)
    with pytest.raises(ValueError):
        cy.set_blocking(8, 12)


def test_blocking_from_caches():
    from kernprop.kernels.cython import matmul

    assert matmul.blocking_for(48 * 1024, 1 << 20) == (256, 252)
    assert matmul.blocking_for(32 * 1024, 2 << 20) == (160, 504)
    kc, mc = matmul.blocking_for(1024, 1024)  # absurd caches: clamped, still valid
    assert kc >= 16 and mc % 12 == 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("m, k, n", [(7, 300, 700), (13, 40, 4200), (301, 530, 77)])
def test_gemm_tasks_do_not_depend_on_thread_count(threads, rng, precision, m, k, n):
    # A short matrix is split over column groups of B slivers, a tall one over row
    # blocks: each tile is computed the same way whichever task holds it.
    a = rng.uniform(-2, 2, (m, k)).astype(np.float32)
    b = rng.uniform(-2, 2, (k, n)).astype(np.float32)
    bias = rng.uniform(-1, 1, n).astype(np.float32)
    results = []
    for count in (1, 2):
        threads(count)
        results.append(kernprop.linear(a, b, bias, activation="tanh", precision=precision,
                                       backend="cython"))
    np.testing.assert_array_equal(results[0], results[1])
    want = ref_matmul.linear_forward(a, b, bias, "tanh", precision)
    # tanh is 1-Lipschitz: the product's error, about sqrt(K) |a||b| rounding, bounds it
    assert_close(results[1], want, np.float32, scale=4 * float(np.sqrt(k)),
                 rtol=2e-5 if precision == "fp32" else 1e-2)


def test_narrow_tile_gives_the_wide_tiles_bits(gemm_kernel, dtype, rng):
    # N <= one vector takes the 12 x 1-vector tile; each element sums the same products
    # in the same order as in the wide tile, so the columns agree bit for bit.
    a = rng.uniform(-2, 2, (53, 700)).astype(dtype)
    b = rng.uniform(-2, 2, (700, 48)).astype(dtype)
    wide = kernprop.matmul(a, b, backend="cython")
    for n in (1, 5, 8, 16):
        narrow = kernprop.matmul(a, np.ascontiguousarray(b[:, :n]), backend="cython")
        np.testing.assert_array_equal(narrow, wide[:, :n])
        assert_close(narrow, ref_matmul.matmul(a, b[:, :n]), dtype, scale=4 * float(np.sqrt(700)))


AMX_CHECK = """
import numpy as np, kernprop
from kernprop.kernels.cython import matmul
from kernprop.kernels.reference.matmul import product
matmul.select_kernel("bf16", "amx_bf16")  # runs its self-check first
rng = np.random.default_rng(0)
for m, k, n in [(1, 1, 1), (33, 65, 31), (97, 1030, 101), (300, 513, 17)]:
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    for threads in (1, 2):
        kernprop.set_num_threads(threads)
        got = kernprop.matmul(a, b, precision="bf16", backend="cython")
        bound = 4 * np.sqrt(k) * 2.0**-24 * (np.abs(a).astype(np.float64) @ np.abs(b))
        assert np.all(np.abs(got - product(a, b, "bf16")) <= bound + 1e-30), (m, k, n, threads)
print("amx ok")
"""


@pytest.mark.xfail(reason="the AMX kernel was written on a CPU without AMX and never run; "
                          "an XPASS here is its first evidence", strict=False)
def test_amx_kernel_in_a_subprocess():
    # In a child process, so a broken tile configuration (SIGILL, SIGSEGV) cannot take
    # the test run with it; skipped where the CPU has no AMX.
    import subprocess
    import sys

    from kernprop.kernels.cython import matmul

    if "amx_bf16" not in matmul.available_kernels():
        pytest.skip(f"no AMX here (have {matmul.available_kernels()})")
    done = subprocess.run([sys.executable, "-c", AMX_CHECK], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "amx ok" in done.stdout, done.stderr[-2000:]


def test_amx_is_never_chosen_by_the_rule():
    from kernprop.kernels.cython import matmul

    assert "amx_bf16" not in matmul.kernel_info()["bf16"] or "forced" in matmul.kernel_info()["bf16"]


@pytest.mark.parametrize("shape", [(3, 2049), (5, 5000), (2, 40000)])
def test_rows_longer_than_a_short_block(rng, dtype, shape):
    # Rows longer than the short-row block (2048 elements) take the per-row path; the
    # block count computed for them once divided by zero (SIGFPE).
    from kernprop.kernels.reference import softmax as ref_softmax

    x = rng.uniform(-8, 8, shape).astype(dtype)
    dy = rng.uniform(-1, 1, shape).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0])
    run = dict(backend="cython")
    assert_close(kernprop.log_softmax(x, **run), ref_softmax.log_softmax_forward(x), dtype, scale=8.0)
    assert_close(kernprop.softmax(x, **run), ref_softmax.softmax_forward(x), dtype, scale=1e-3)
    y = ref_softmax.log_softmax_forward(x)
    assert_close(kernprop.log_softmax_backward(y, dy, **run), ref_softmax.log_softmax_backward(y, dy),
                 dtype, scale=float(np.abs(dy).sum(axis=1).max()))
    loss, grad = kernprop.cross_entropy_with_grad(x, labels, label_smoothing=0.1, **run)
    want_loss, want_grad = ref_losses.cross_entropy_with_grad(x, labels, "mean", -100, 0.1, None)
    assert_close(loss, want_loss, dtype, scale=8.0, name="loss")
    assert_close(grad, want_grad, dtype, scale=float(np.abs(want_grad).max()), name="grad")


# --- the transformer ops ----------------------------------------------------------------


def _transformer_ops(rng, dtype, heads):
    """gelu, layer_norm, attention and embedding with their backward, on shapes that take
    the parallel paths; ``heads`` picks the attention backward's schedule (one task per
    head from 4 heads a thread, else key blocks then query blocks)."""
    run = dict(backend="cython")
    x = rng.uniform(-3, 3, (300, 257)).astype(dtype)
    dy = rng.uniform(-1, 1, (300, 257)).astype(dtype)
    weight, bias = (rng.uniform(0.5, 1.5, 257).astype(dtype) for _ in range(2))
    out = [kernprop.gelu(x, "tanh", **run), kernprop.gelu_backward(x, dy, "none", **run)]
    y, mean, rstd = kernprop.layer_norm(x, weight, bias, **run)
    out += [y, mean, rstd, *kernprop.layer_norm_backward(x, weight, mean, rstd, dy, **run)]
    q, k = (rng.standard_normal((1, heads, 150, 40)).astype(dtype) for _ in range(2))
    v, dout = (rng.standard_normal((1, heads, 150, 24)).astype(dtype) for _ in range(2))
    for causal in (False, True):
        o, lse = kernprop.attention(q, k, v, causal=causal, **run)
        out += [o, lse, *kernprop.attention_backward(q, k, v, o, lse, dout, causal=causal, **run)]
    ids = rng.integers(0, 7, (40, 33))
    dy_rows = rng.uniform(-1, 1, (40, 33, 300)).astype(dtype)
    out += [kernprop.embedding(ids, x, **run), kernprop.embedding_backward(ids, dy_rows, 9, **run)]
    return out


@pytest.mark.parametrize("heads", [2, 8])
def test_transformer_ops_do_not_depend_on_thread_count(threads, dtype, rng, heads):
    # with 2 heads the attention backward runs per head on 1 thread but by key blocks
    # then query blocks on 2: the two schedules give the same bits
    threads(1)
    one = _transformer_ops(np.random.default_rng(5), dtype, heads)
    threads(2)
    two = _transformer_ops(np.random.default_rng(5), dtype, heads)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_attention_backward_schedules_agree_with_the_reference(threads, dtype, rng):
    # the key-block schedule (few heads, 2 threads) against the float64 reference
    from kernprop.kernels.reference import attention as ref_attention

    threads(2)
    q, k = (rng.standard_normal((1, 2, 200, 16)).astype(dtype) for _ in range(2))
    v, dout = (rng.standard_normal((1, 2, 200, 16)).astype(dtype) for _ in range(2))
    q64, k64, v64, dout64 = (a.astype(np.float64) for a in (q, k, v, dout))
    for causal in (False, True):
        out, lse = kernprop.attention(q, k, v, causal=causal, backend="cython")
        want_out, want_lse = ref_attention.attention_forward(q64, k64, v64, causal, 0.25, "fp32")
        want = ref_attention.attention_backward(q64, k64, v64, want_out, want_lse, dout64, causal, 0.25, "fp32")
        got = kernprop.attention_backward(q, k, v, out, lse, dout, causal=causal, backend="cython")
        for name, g, w in zip(("dq", "dk", "dv"), got, want):
            assert_close(g, w.astype(dtype), dtype, rtol=1e-4 if dtype == np.float32 else 1e-11, name=name)


@pytest.mark.parametrize("depth, depth_v", [(72, 40), (19, 75), (130, 8)])
def test_attention_tile_edges(dtype, rng, depth, depth_v):
    # head sizes through the 16-column panels, the 8-column one and single columns of
    # the float32 product, with query and key blocks cut short (67 = 64 + 3)
    from kernprop.kernels.reference import attention as ref_attention

    q, k = rng.standard_normal((1, 1, 67, depth)).astype(dtype), rng.standard_normal((1, 1, 70, depth)).astype(dtype)
    v, dout = rng.standard_normal((1, 1, 70, depth_v)).astype(dtype), rng.standard_normal((1, 1, 67, depth_v)).astype(dtype)
    scale = 1 / np.sqrt(depth)
    q64, k64, v64, dout64 = (a.astype(np.float64) for a in (q, k, v, dout))
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    for causal in (False, True):
        out, lse = kernprop.attention(q, k, v, causal=causal, backend="cython")
        want_out, want_lse = ref_attention.attention_forward(q64, k64, v64, causal, scale, "fp32")
        assert_close(out, want_out.astype(dtype), dtype, rtol=rtol, name="out")
        assert_close(lse, want_lse.astype(dtype), dtype, rtol=rtol, name="lse")
        got = kernprop.attention_backward(q, k, v, out, lse, dout, causal=causal, backend="cython")
        want = ref_attention.attention_backward(q64, k64, v64, want_out, want_lse, dout64, causal, scale, "fp32")
        for name, g, w in zip(("dq", "dk", "dv"), got, want):
            assert_close(g, w.astype(dtype), dtype, rtol=rtol, name=name)


def test_layer_norm_column_sums_over_many_blocks(threads, rng):
    # 8192 float32 rows: the weight and bias gradients summed in blocks of rows, the
    # blocks in double, stay within float32's rounding of the float64 sums
    from kernprop.kernels.reference import normalization as ref_normalization

    threads(2)
    x = rng.standard_normal((8192, 96)).astype(np.float32) + 3
    dy = rng.standard_normal((8192, 96)).astype(np.float32)
    weight, bias = np.ones(96, np.float32), np.zeros(96, np.float32)
    _, mean, rstd = kernprop.layer_norm(x, weight, bias, backend="cython")
    _, dweight, dbias = kernprop.layer_norm_backward(x, weight, mean, rstd, dy, backend="cython")
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    _, want_dw, want_db = ref_normalization.layer_norm_backward(
        x64, np.ones(96), mean.astype(np.float64), rstd.astype(np.float64), dy64, True)
    # against the size of the terms summed: |dy| summed over the rows
    scale = float(np.abs(dy64).sum(axis=0).max())
    assert_close(dweight, want_dw.astype(np.float32), np.float32, rtol=1e-6, scale=scale, name="dweight")
    assert_close(dbias, want_db.astype(np.float32), np.float32, rtol=1e-6, scale=scale, name="dbias")


def test_transformer_ops_read_only_inputs(dtype, rng):
    # const memoryviews accept arrays that may not be written; nothing writes to them
    x, dy = readonly(rng.uniform(-2, 2, (40, 33)).astype(dtype), rng.uniform(-1, 1, (40, 33)).astype(dtype))
    weight = readonly(np.ones(33, dtype))
    run = dict(backend="cython")
    kernprop.gelu_backward(x, dy, "tanh", **run)
    y, mean, rstd = kernprop.layer_norm(x, weight, weight, **run)
    kernprop.layer_norm_backward(x, weight, readonly(mean), readonly(rstd), dy, **run)
    q = readonly(rng.standard_normal((1, 2, 40, 33)).astype(dtype))
    out, lse = kernprop.attention(q, q, q, causal=True, **run)
    kernprop.attention_backward(q, q, q, readonly(out), readonly(lse), q, causal=True, **run)
    ids = readonly(rng.integers(0, 40, (5, 3)))
    kernprop.embedding(ids, x, **run)
    kernprop.embedding_backward(ids, readonly(np.ones((5, 3, 33), dtype)), 40, **run)


def test_embedding_backward_into_a_large_table(dtype, rng):
    # from 4 MiB the table is zero pages mapped on first write: the rows of the ids
    # that occur are the reference's bits (a -0.0 gradient gives +0.0, as np.add.at's
    # 0 + -0.0), every other row is 0, and the result is an ordinary writable array
    from kernprop.kernels.reference import embedding as ref_embedding

    vocabulary, channels = 5000, 300
    ids = rng.integers(0, vocabulary, (8, 16))
    ids[0, :3] = ids[1, 5]  # repeats
    dy = rng.uniform(-1, 1, (8, 16, channels)).astype(dtype)
    dy[2, 7] = -0.0
    got = kernprop.embedding_backward(ids, dy, vocabulary, backend="cython")
    want = ref_embedding.embedding_backward(ids, dy, vocabulary)
    assert got.nbytes >= 4 << 20 and got.shape == (vocabulary, channels) and got.dtype == dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    got[0] += 1  # writable


def test_gelu_float32_keeps_relative_accuracy_in_the_tail():
    # float32 gelu "none" runs its own vectorised erfc: within a few ulp of x Phi(x)
    # relative to the value itself, down the tail where Phi(x) is 1e-37 (a 1 + erf form,
    # or x^2 rounded before its exp, would lose the tail's digits)
    import math

    x = np.linspace(-13, 13, 100_001).astype(np.float32)
    x64 = x.astype(np.float64)
    cdf = 0.5 * np.vectorize(math.erfc)(-x64 / math.sqrt(2))
    want = x64 * cdf
    want_grad = cdf + x64 * np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    got = kernprop.gelu(x, "none", backend="cython").astype(np.float64)
    got_grad = kernprop.gelu_backward(x, np.ones_like(x), "none", backend="cython").astype(np.float64)
    tiny = np.abs(want) < 1e-35
    assert np.all(np.abs(got[tiny]) < 1e-35)
    rel = np.abs(got - want)[~tiny] / np.abs(want[~tiny])
    assert rel.max() < 2e-6, f"gelu: relative error {rel.max():.2e} at x = {x[~tiny][rel.argmax()]}"
    # the gradient Phi(x) + x phi(x) cancels for x << 0: in units of its terms
    terms = cdf + np.abs(x64) * np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    err = np.abs(got_grad - want_grad) / np.maximum(terms, 1e-30)
    assert err.max() < 2e-6, f"gelu_backward: error {err.max():.2e} of its terms at x = {x[err.argmax()]}"
