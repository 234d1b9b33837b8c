"""The Numba GEMM engine: every micro-kernel this CPU runs, forced in turn, against the
reference of the precision it computes; the precisions' API; the self-check.

A kernel forced for a precision must match that precision's reference (the NumPy
oracle rounds operands with the same integer round-to-nearest-even) up to float32
accumulation; whatever runs a precision must also stay within that precision's own
error bound of the exact product ("more accurate than asked" is allowed, less is not).
"""

import numpy as np
import pytest

import kernprop
from kernprop.kernels.reference import losses as ref_losses
from kernprop.kernels.reference import matmul as ref

from conftest import LAYOUTS, make_array

gemm = pytest.importorskip("kernprop.kernels.numba_cpu.gemm")
from kernprop.kernels.numba_cpu.gemm import selection  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
# error of the requested precision relative to |a| @ |b| (operand rounding only)
PRECISION_BOUND = {"fp32": 0.0, "bf16x3": 2.0**-14, "bf16": 2.0**-7}
# (kernel, precision) pairs: every kernel for every precision it serves
CASES = [(name, precision) for name, kernel in selection.KERNELS.items() for precision in kernel.serves]
# K longer than several K blocks (the deepest block is 512 for float32, 1024 for bf16),
# odd, and small shapes; the larger ones exceed the serial cut-off and run the parallel
# driver, (5, 2100, 9) runs two bf16 K blocks through the serial one
SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 33), (13, 17, 19), (12, 64, 32), (67, 301, 45), (40, 1301, 70),
          (130, 1100, 97), (5, 2100, 9), (30, 2600, 40)]


def magnitude(a, b):
    return np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)


def computed_precision(name, precision):
    """The precision a kernel really computes when it serves ``precision``."""
    return selection.KERNELS[name].computes(precision)


@pytest.fixture(params=CASES, ids=[f"{name}-{precision}" for name, precision in CASES])
def forced(request):
    name, precision = request.param
    reason = selection.unavailable_reason(selection.KERNELS[name])
    if reason:
        pytest.skip(f"kernel {name} cannot run here: {reason}")
    previous = gemm.select_kernel(precision, name)
    yield name, precision
    gemm.select_kernel(precision, None if previous == name else previous)
    gemm.select_kernel(precision, None)


def assert_product(got, a, b, name, precision, extra_scale=0.0, what="result"):
    k = a.shape[1]
    scale = magnitude(a, b) + extra_scale
    want = ref.product(a, b, computed_precision(name, precision)).astype(np.float64)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    tight = 4 * (k + 2) * EPS32 * scale + 1e-30
    loose = (PRECISION_BOUND[precision] * 1.01 + 4 * (k + 2) * EPS32) * scale + 1e-30
    err = np.abs(got - want)
    assert np.all(err <= tight), f"{what}: {name}/{precision} off its reference by {np.max(err / tight):.3g} x the bound"
    assert np.all(np.abs(got - exact) <= loose), f"{what}: {name}/{precision} outside {precision}'s error bound"


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("layout_a", LAYOUTS)
@pytest.mark.parametrize("layout_b", LAYOUTS)
def test_matmul_each_kernel(forced, rng, m, k, n, layout_a, layout_b):
    name, precision = forced
    a = make_array(rng, (m, k), np.float32, layout_a)
    b = make_array(rng, (k, n), np.float32, layout_b)
    got = kernprop.matmul(a, b, precision=precision, backend="numba")
    assert got.dtype == np.float32
    assert_product(got, a, b, name, precision)


@pytest.mark.parametrize("m,k,n", [(1, 9, 4), (37, 600, 29), (64, 1030, 300)])
@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
def test_linear_each_kernel(forced, rng, m, k, n, activation):
    name, precision = forced
    x = make_array(rng, (m, k), np.float32)
    w = make_array(rng, (k, n), np.float32, "transposed")
    b = make_array(rng, (n,), np.float32)
    got = kernprop.linear(x, w, b, activation=activation, precision=precision, backend="numba")
    pre = ref.product(x, w, computed_precision(name, precision)).astype(np.float64) + b
    want = ref.linear_forward(x, w, b, activation, computed_precision(name, precision))
    # the activation is 1-Lipschitz: the product's bound carries over
    tol = 4 * (k + 2) * EPS32 * (magnitude(x, w) + np.abs(b)) + 1e-6
    assert np.all(np.abs(got - want) <= tol), f"{name}/{precision}: {np.max(np.abs(got - want) - tol)}"
    assert np.isfinite(pre).all()


@pytest.mark.parametrize("m,k,n", [(1, 9, 4), (37, 53, 29), (150, 700, 257)])
@pytest.mark.parametrize("need_dx", [True, False])
def test_linear_backward_each_kernel(forced, rng, m, k, n, need_dx):
    name, precision = forced
    x = make_array(rng, (m, k), np.float32, "strided")
    w = make_array(rng, (k, n), np.float32)
    dy = make_array(rng, (m, n), np.float32, "transposed")
    dx, dw, db = kernprop.linear_backward(x, w, dy, True, need_dx=need_dx, precision=precision, backend="numba")
    if need_dx:
        assert_product(dx, dy, w.T, name, precision, what="dx")
    else:
        assert dx is None
    assert_product(dw, x.T, dy, name, precision, what="dw")
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_linear_cross_entropy_each_kernel(forced, rng, chunk_size):
    name, precision = forced
    n, fan_in, c = 45, 530, 37
    x = make_array(rng, (n, fan_in), np.float32)
    w = make_array(rng, (fan_in, c), np.float32) * np.float32(0.1)
    b = make_array(rng, (c,), np.float32)
    labels = rng.integers(0, c, n)
    got = kernprop.linear_cross_entropy(x, w, b, labels, chunk_size=chunk_size, precision=precision,
                                        backend="numba")
    want = ref_losses.linear_cross_entropy(x, w, b, labels, "mean", -100, 0.0, None, n,
                                           computed_precision(name, precision))
    # the gradient products round dlogits again: compare against the magnitude of the terms
    for label, g, r in zip(("loss", "dx", "dw", "db"), got, want):
        scale = np.max(np.abs(r)) + 1e-12
        tol = (2.0**-6 if computed_precision(name, precision) == "bf16" else 1e-4) * scale
        assert np.max(np.abs(np.asarray(g, np.float64) - r)) <= tol, f"{label}: {name}/{precision}"


def test_float64_ignores_precision(rng):
    a = make_array(rng, (31, 600), np.float64)
    b = make_array(rng, (600, 20), np.float64)
    for precision in ("fp32", "bf16x3", "bf16"):
        got = kernprop.matmul(a, b, precision=precision, backend="numba")
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, a @ b, rtol=1e-12, atol=1e-12 * magnitude(a, b).max())


def test_inputs_untouched_and_readonly_ok(rng):
    a = make_array(rng, (50, 300), np.float32)
    b = make_array(rng, (300, 40), np.float32)
    a_copy, b_copy = a.copy(), b.copy()
    a.flags.writeable = b.flags.writeable = False
    for precision in ("fp32", "bf16x3", "bf16"):
        kernprop.matmul(a, b, precision=precision, backend="numba")
    assert np.array_equal(a, a_copy) and np.array_equal(b, b_copy)


def test_extreme_values_and_nan(rng):
    a = make_array(rng, (20, 40), np.float32) * np.float32(1e4)
    b = make_array(rng, (40, 33), np.float32)
    b[3, 5] = np.nan
    for precision in ("fp32", "bf16x3", "bf16"):
        got = kernprop.matmul(a, b, precision=precision, backend="numba")
        assert np.isnan(got[:, 5]).all() and np.isfinite(np.delete(got, 5, axis=1)).all()


# --- selection ---------------------------------------------------------------------------


def test_kernel_info_names_every_precision():
    info = gemm.kernel_info()
    assert set(info) == {"fp32", "bf16x3", "bf16"}
    assert info["fp32"].startswith("fp32")


def test_self_check_accepts_the_engine_and_refuses_a_broken_kernel():
    exact = lambda a, b: ref.product(a, b, "bf16")  # noqa: E731
    assert selection.self_check(exact, "bf16", ref.product) is None
    # a kernel that drops the last step of K (a classic edge bug) must be refused
    drops_last_k = lambda a, b: ref.product(a[:, :-1], b[:-1], "bf16")  # noqa: E731
    assert "self-check failed" in selection.self_check(drops_last_k, "bf16", ref.product)
    raises = lambda a, b: 1 / 0  # noqa: E731
    assert "ZeroDivisionError" in selection.self_check(raises, "bf16", ref.product)


def test_selection_falls_back_to_fp32_when_the_bf16_kernel_fails_its_self_check():
    if selection.unavailable_reason(selection.BF16):
        pytest.skip(selection.unavailable_reason(selection.BF16))

    def broken(a, b, precision, kernel):
        good = ref.product(a, b, precision)
        return good + 0.5 if kernel is selection.BF16 else good

    chooser = selection.Selection(broken, ref.product)
    assert chooser.kernel("bf16") is selection.FP32
    assert "self-check failed" in chooser.info()["bf16"]
    with pytest.raises(ValueError, match="self-check failed"):
        chooser.select("bf16", "bf16")


def test_select_kernel_refuses_less_accurate_kernels():
    with pytest.raises(ValueError, match="less accurate"):
        gemm.select_kernel("fp32", "bf16")
    with pytest.raises(ValueError, match="unknown kernel"):
        gemm.select_kernel("bf16", "tensorcore")


def test_override_parsing():
    assert selection.parse_override("bf16=fp32") == {"bf16": "fp32"}
    assert selection.parse_override("bf16") == {"bf16x3": "bf16", "bf16": "bf16"}
    assert selection.parse_override("") == {}
    with pytest.raises(ValueError, match="unknown kernel"):
        selection.parse_override("bf16=tensorcore")
    with pytest.raises(ValueError, match="unknown precision"):
        selection.parse_override("fp8=bf16")


def test_blocking_fits_the_caches():
    kc, mc_panels, nc_panels = gemm.blocking(4)
    assert 128 <= kc <= 512 and kc % 16 == 0 and mc_panels >= 1 and nc_panels >= 2


# --- the precision API ---------------------------------------------------------------------


def test_matmul_precision_default_and_context(rng):
    assert kernprop.get_matmul_precision() == "fp32"
    with kernprop.matmul_precision("bf16"):
        assert kernprop.get_matmul_precision() == "bf16"
        with kernprop.matmul_precision("bf16x3"):
            assert kernprop.get_matmul_precision() == "bf16x3"
        assert kernprop.get_matmul_precision() == "bf16"
    assert kernprop.get_matmul_precision() == "fp32"
    kernprop.set_matmul_precision("bf16")
    try:
        a = make_array(rng, (8, 64), np.float32)
        b = make_array(rng, (64, 8), np.float32)
        assert np.array_equal(kernprop.matmul(a, b, backend="numpy"), ref.product(a, b, "bf16"))
    finally:
        kernprop.set_matmul_precision("fp32")


@pytest.mark.parametrize("bad", ["tf32", "BF16", None, 3])
def test_bad_precision_is_a_value_error(rng, bad):
    a = make_array(rng, (4, 4), np.float32)
    if bad is None:
        with pytest.raises(ValueError, match="precision"):
            kernprop.set_matmul_precision(bad)
        return
    with pytest.raises(ValueError, match="precision"):
        kernprop.matmul(a, a, precision=bad)
    with pytest.raises(ValueError, match="precision"):
        kernprop.set_matmul_precision(bad)


def test_round_bf16_is_round_to_nearest_even():
    one = np.float32(1.0)
    ulp = np.float32(2.0**-7)  # bf16 spacing at 1
    values = np.array([one, one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + 2.0**-20, np.inf, -np.inf,
                       np.float32(3.4e38), np.float32(1e-40), -0.0], np.float32)
    want = np.array([one, one, one + 2 * ulp, one + ulp, np.inf, -np.inf, np.inf, np.float32(1e-40), -0.0],
                    np.float32)
    got = ref.round_bf16(values)
    assert np.array_equal(got[:6], want[:6]) and got[6] == np.inf
    assert got[7] != 0 and abs(got[7] - 1e-40) <= 2.0**-133  # a subnormal is rounded, not flushed
    assert np.signbit(got[8])
    nan_payload = np.array([0x7F800001], np.uint32).view(np.float32)
    assert np.isnan(ref.round_bf16(nan_payload)).all()


def test_round_bf16_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(20000) * np.exp(rng.uniform(-80, 80, 20000))).astype(np.float32)
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert np.array_equal(ref.round_bf16(x), want)


# --- AMX: checked here without running it ------------------------------------------------


def test_amx_ir_compiles_for_sapphire_rapids():
    from kernprop.kernels.numba_cpu.gemm.microkernels import compile_amx_for

    asm = compile_amx_for("sapphirerapids")
    assert asm.count("tdpbf16ps") == 4 and "ldtilecfg" in asm and asm.count("tilestored") == 4


def _amx_block_emulated(apack, a_off, bpack, b_off, steps):
    # what amx_tile computes for one 32 x 32 block, in NumPy: A row-major pairs
    # (32 rows, ``steps`` words apart), B rows of 32 pair words
    def halves(words):
        words = words.astype(np.uint32)
        low = (words << np.uint32(16)).view(np.float32).astype(np.float64)
        high = (words & np.uint32(0xFFFF0000)).view(np.float32).astype(np.float64)
        return low, high

    a_low, a_high = halves(apack[a_off:a_off + 32 * steps].reshape(32, steps))
    b_low, b_high = halves(bpack[b_off:b_off + steps * 32].reshape(steps, 32))
    return a_low @ b_low + a_high @ b_high


@pytest.mark.parametrize("precision", ["bf16", "bf16x3"])
@pytest.mark.parametrize("m,k,n", [(5, 7, 3), (40, 45, 70), (33, 300, 32), (64, 64, 64)])
@pytest.mark.parametrize("layout_a,layout_b", [("transposed", "strided"), ("contiguous", "contiguous"),
                                               ("strided", "transposed")])
def test_amx_packing_layout_gives_the_reference_product(rng, precision, m, k, n, layout_a, layout_b):
    # The AMX panels, read as the tiles read them, multiply to the reference of the
    # precision: checks the layout, padding and bf16x3 terms on a CPU without AMX, through
    # every packing path (row-major, column-major and strided operands).
    from kernprop.kernels.numba_cpu.gemm import drivers
    from kernprop.kernels.numba_cpu.gemm.packing import steps_for
    from kernprop.kernels.numba_cpu.gemm.selection import AMX

    if gemm.tile_cols(4) != 32:
        pytest.skip(f"the AMX B panels are the AVX-512 rows' 32-column bf16 panels; this process "
                    f"runs the {gemm.ROW.name} row")
    a = make_array(rng, (m, k), np.float32, layout_a)
    b = make_array(rng, (k, n), np.float32, layout_b)
    terms = AMX.terms(precision)
    steps = steps_for(k, terms, AMX.pack_dtype)
    assert steps % 16 == 0
    m_panels, n_panels = -(-m // 32), -(-n // 32)
    apack = np.full(m_panels * 32 * steps, -1, np.int32)
    bpack = np.full(n_panels * 32 * steps, -1, np.int32)
    drivers.pack_a.serial(a, 0, k, apack, terms)
    drivers.pack_b.serial(b, 0, k, 0, n, bpack, np.zeros(1), False, terms, 32)
    got = np.zeros((m_panels * 32, n_panels * 32))
    for ip in range(m_panels):
        for jp in range(n_panels):
            got[ip * 32:(ip + 1) * 32, jp * 32:(jp + 1) * 32] = _amx_block_emulated(
                apack, ip * steps * 32, bpack, jp * steps * 32, steps)
    want = ref.product(a, b, precision).astype(np.float64)
    tol = 4 * (k + 2) * EPS32 * magnitude(a, b)
    assert np.all(np.abs(got[:m, :n] - want) <= tol)
    assert not got[m:].any() and not got[:, n:].any()  # zero padding, no stray -1 words


@pytest.mark.parametrize("precision", ["bf16", "bf16x3"])
@pytest.mark.parametrize("m,k,n", [(5, 7, 3), (29, 601, 45), (40, 45, 70)])
def test_bf16_pair_kernel_runs_on_every_row(rng, precision, m, k, n):
    # The bf16 pair kernel's IR, its packing and its peak loop on whatever row this
    # process runs: without AVX512_BF16 the same IR widens the pairs to float32 and
    # multiplies exactly, so it must give the reference's bf16 products (a CPU without
    # the unit never selects it, so nothing else would compile it here).
    from kernprop.kernels.numba_cpu.gemm import selection as sel

    a = make_array(rng, (m, k), np.float32, "transposed")
    b = make_array(rng, (k, n), np.float32, "strided")
    got = gemm._run(a, b, np.empty((m, n), np.float32), None, None, False, None, sel.BF16, precision)
    want = ref.product(a, b, precision).astype(np.float64)
    assert np.all(np.abs(got - want) <= 4 * (k + 2) * EPS32 * magnitude(a, b))
    assert sel._peak_bf16(10) == sel._peak_bf16(10)  # the peak loop compiles and runs
