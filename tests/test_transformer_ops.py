"""The transformer ops (gelu, layer_norm, attention, embedding) and their backward on
every backend: against the reference computed in float64 from the same inputs, against
PyTorch where it is installed, by finite differences, and at the edges (one row, primes,
Lq != Lk, transposed views, scores of +-1e4)."""

import os

import numpy as np
import pytest

import kernprop
from kernprop.kernels.reference import activations as ref_activations
from kernprop.kernels.reference import attention as ref_attention
from kernprop.kernels.reference import embedding as ref_embedding
from kernprop.kernels.reference import normalization as ref_normalization

from conftest import assert_close, make_array, readonly, to_host
from test_reference import numeric_gradient

# float32 results are compared with the float64 reference of the same inputs: the
# tolerance is float32's own rounding over a reduction, not a second float32 computation.
RTOL_OF = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-11}


def _as64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def _close(got, want64, dtype, name, scale=None):
    assert_close(got, np.asarray(want64).astype(dtype), dtype, rtol=RTOL_OF[np.dtype(dtype)],
                 scale=scale, name=name)


# --- gelu -----------------------------------------------------------------------------

APPROXIMATIONS = ("none", "tanh")


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
@pytest.mark.parametrize("shape", [(1,), (17,), (3, 129), (2, 5, 7)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_gelu_matches_reference(backend, dtype, rng, approximate, shape, layout):
    x = make_array(rng, shape, dtype, layout, low=-6, high=6)
    dy = make_array(rng, shape, dtype, layout)
    (x64, dy64) = _as64(x, dy)
    # in units of |x|: float32's tanh(u) rounds to -1 for u < -9, where gelu is ~1e-10 * |x|
    _close(kernprop.gelu(x, approximate, backend=backend), ref_activations.gelu_forward(x64, approximate),
           dtype, "gelu", scale=float(np.abs(x64).max()))
    _close(kernprop.gelu_backward(x, dy, approximate, backend=backend),
           ref_activations.gelu_backward(x64, dy64, approximate), dtype, "gelu_backward",
           scale=float(np.abs(dy64).max()))


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_gelu_extreme_values(backend, dtype, approximate):
    x = np.array([-np.inf, -1e4, -50.0, -5.0, -0.0, 0.0, 1e-30, 5.0, 50.0, 1e4, np.inf], dtype=dtype)
    dy = np.ones_like(x)
    with np.errstate(all="ignore"):
        want = ref_activations.gelu_forward(x.astype(np.float64), approximate)
        dwant = ref_activations.gelu_backward(x.astype(np.float64), dy.astype(np.float64), approximate)
    assert np.isnan(want[0]) and want[-1] == np.inf  # -inf * Phi(-inf) = -inf * 0, as PyTorch
    _close(kernprop.gelu(x, approximate, backend=backend), want, dtype, "gelu")
    _close(kernprop.gelu_backward(x, dy, approximate, backend=backend), dwant, dtype, "gelu_backward",
           scale=1.0)


# --- layer_norm -----------------------------------------------------------------------

LN_SHAPES = [(1, 1), (1, 17), (17, 129), (5, 4097), (300, 64)]


@pytest.mark.parametrize("shape", LN_SHAPES)
@pytest.mark.parametrize("has_bias", [True, False])
def test_layer_norm_matches_reference(backend, dtype, rng, shape, has_bias):
    rows, channels = shape
    x = make_array(rng, shape, dtype, "transposed" if rows > 1 else "contiguous", low=-3, high=5)
    weight = make_array(rng, (channels,), dtype, low=0.5, high=1.5)
    bias = make_array(rng, (channels,), dtype) if has_bias else None
    dy = make_array(rng, shape, dtype)
    x64, w64, b64, dy64 = _as64(x, weight, bias, dy)
    want_y, want_mean, want_rstd = ref_normalization.layer_norm_forward(x64, w64, b64, 1e-5)
    y, mean, rstd = kernprop.layer_norm(x, weight, bias, backend=backend)
    _close(y, want_y, dtype, "y")
    _close(mean, want_mean, dtype, "mean")
    _close(rstd, want_rstd, dtype, "rstd")
    # the backward from the forward's own statistics, as a layer uses it
    dx, dweight, dbias = kernprop.layer_norm_backward(x, weight, mean, rstd, dy, has_bias, backend=backend)
    want_dx, want_dw, want_db = ref_normalization.layer_norm_backward(
        x64, w64, want_mean, want_rstd, dy64, has_bias)
    # in units of its terms, rstd * dy * w: one column (dx exactly 0) leaves only their rounding
    _close(dx, want_dx, dtype, "dx", scale=float(np.abs(want_rstd[:, None] * dy64 * w64).max()))
    _close(dweight, want_dw, dtype, "dweight")
    if has_bias:
        _close(dbias, want_db, dtype, "dbias")
    else:
        assert dbias is None


def test_layer_norm_extreme_rows(backend, dtype):
    # a constant row (variance 0: rstd = 1/sqrt(eps)), rows of +-1e4, a row with a large offset
    x = np.array([[3.0] * 6, [1e4, -1e4] * 3, [1e4 + 1, 1e4 - 1, 1e4, 1e4, 1e4 + 2, 1e4 - 2]], dtype=dtype)
    weight = np.linspace(0.5, 2.0, 6).astype(dtype)
    bias = np.full(6, 0.25, dtype)
    y, mean, rstd = kernprop.layer_norm(x, weight, bias, eps=1e-5, backend=backend)
    want_y, want_mean, want_rstd = ref_normalization.layer_norm_forward(*_as64(x, weight, bias), 1e-5)
    assert np.all(np.isfinite(to_host(y)))
    _close(mean, want_mean, dtype, "mean")
    _close(rstd[:2], want_rstd[:2], dtype, "rstd")
    _close(y[:2], want_y[:2], dtype, "y")
    if dtype == np.float64:  # float32 cannot represent 1e4 +- 1 finely enough to compare
        _close(y, want_y, dtype, "y")


def test_layer_norm_inputs_are_not_written(backend, dtype, rng):
    x, weight, bias, dy = readonly(make_array(rng, (4, 9), dtype), make_array(rng, (9,), dtype),
                                   make_array(rng, (9,), dtype), make_array(rng, (4, 9), dtype))
    _, mean, rstd = kernprop.layer_norm(x, weight, bias, backend=backend)
    mean, rstd = readonly(to_host(mean), to_host(rstd))
    kernprop.layer_norm_backward(x, weight, mean, rstd, dy, backend=backend)


# --- attention ------------------------------------------------------------------------

# (B, H, Lq, Lk, D, Dv)
ATTENTION_SHAPES = [
    (1, 1, 1, 1, 1, 1),
    (2, 3, 17, 17, 8, 8),
    (1, 2, 17, 129, 16, 16),   # Lq < Lk
    (1, 1, 129, 17, 16, 16),   # Lq > Lk
    (1, 2, 67, 67, 64, 64),
    (1, 1, 33, 70, 5, 3),      # D != Dv, odd sizes
]


def _qkv(rng, dtype, batch, heads, lq, lk, depth, depth_v, layout="contiguous"):
    if layout == "heads_interleaved":
        # as a qkv projection leaves them: (B, L, H, D) memory viewed as (B, H, L, D)
        q = make_array(rng, (batch, lq, heads, depth), dtype).transpose(0, 2, 1, 3)
        k = make_array(rng, (batch, lk, heads, depth), dtype).transpose(0, 2, 1, 3)
        v = make_array(rng, (batch, lk, heads, depth_v), dtype).transpose(0, 2, 1, 3)
        return q, k, v
    return (make_array(rng, (batch, heads, lq, depth), dtype), make_array(rng, (batch, heads, lk, depth), dtype),
            make_array(rng, (batch, heads, lk, depth_v), dtype))


def _check_attention(backend, dtype, q, k, v, dout, causal, scale=None):
    q64, k64, v64, dout64 = _as64(q, k, v, dout)
    used_scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    want_out, want_lse = ref_attention.attention_forward(q64, k64, v64, causal, used_scale, "fp32")
    out, lse = kernprop.attention(q, k, v, causal=causal, scale=scale, backend=backend)
    _close(out, want_out, dtype, "out")
    _close(lse, want_lse, dtype, "lse")
    dq, dk, dv = kernprop.attention_backward(q, k, v, out, lse, dout, causal=causal, scale=scale, backend=backend)
    want = ref_attention.attention_backward(q64, k64, v64, want_out, want_lse, dout64, causal, used_scale, "fp32")
    for name, got, expected in zip(("dq", "dk", "dv"), (dq, dk, dv), want):
        _close(got, expected, dtype, name)


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_matches_reference(backend, dtype, rng, shape, causal):
    q, k, v = _qkv(rng, dtype, *shape)
    dout = make_array(rng, (*shape[:3], shape[5]), dtype)
    _check_attention(backend, dtype, q, k, v, dout, causal)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_of_strided_views(backend, dtype, rng, causal):
    q, k, v = _qkv(rng, dtype, 2, 3, 29, 29, 16, 16, layout="heads_interleaved")
    assert not q.flags.c_contiguous
    dout = make_array(rng, (2, 29, 3, 16), dtype).transpose(0, 2, 1, 3)
    _check_attention(backend, dtype, q, k, v, dout, causal, scale=0.3)


@pytest.mark.slow
def test_attention_long_sequence(backend, dtype, rng):
    # more keys than any tile, not a multiple of one: the last block is partial
    q, k, v = _qkv(rng, dtype, 1, 1, 300, 4097, 8, 8)
    dout = make_array(rng, (1, 1, 300, 8), dtype)
    _check_attention(backend, dtype, q, k, v, dout, causal=False)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_scores_of_1e4(backend, dtype, rng, causal):
    # scores of +-1e4: exp overflows unless every block is shifted by the running max
    q, k, v = _qkv(rng, dtype, 1, 2, 19, 37, 4, 4)
    q = (np.sign(q) * 50).astype(dtype)
    k = (np.sign(k) * 100).astype(dtype)  # |q . k| up to 2e4, scale 1/2: scores +-1e4
    out, lse = kernprop.attention(q, k, v, causal=causal, backend=backend)
    out, lse = to_host(out), to_host(lse)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse))
    want_out, want_lse = ref_attention.attention_forward(*_as64(q, k, v), causal, 0.5, "fp32")
    _close(out, want_out, dtype, "out")
    _close(lse, want_lse, dtype, "lse")


def test_attention_precision_bf16_is_close(backend, rng):
    q, k, v = _qkv(rng, np.float32, 1, 2, 33, 65, 16, 16)
    exact, _ = kernprop.attention(q, k, v, causal=True, precision="fp32", backend=backend)
    rounded, _ = kernprop.attention(q, k, v, causal=True, precision="bf16", backend=backend)
    assert_close(rounded, to_host(exact), np.float32, rtol=3e-2, name="bf16 attention")


def test_attention_inputs_are_not_written(backend, dtype, rng):
    q, k, v = readonly(*_qkv(rng, dtype, 1, 2, 5, 7, 4, 4))
    dout = readonly(make_array(rng, (1, 2, 5, 4), dtype))
    out, lse = kernprop.attention(q, k, v, causal=True, backend=backend)
    out, lse = readonly(to_host(out), to_host(lse))
    kernprop.attention_backward(q, k, v, out, lse, dout, causal=True, backend=backend)


def _resident_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_attention_never_holds_the_score_matrix(backend):
    if backend in ("numpy", "cuda"):
        pytest.skip("the reference holds the score matrix; cuda memory is not resident host memory")
    batch, heads, length, depth = 1, 8, 4096, 64
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng, np.float32, batch, heads, length, length, depth, depth)
    kernprop.attention(q[:, :, :64], k[:, :, :64], v[:, :, :64], causal=True, backend=backend)  # compile
    scores_bytes = batch * heads * length * length * 4  # 512 MiB
    outputs_bytes = q.nbytes + batch * heads * length * 4
    before = _resident_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM) starts again from the current size
    out, lse = kernprop.attention(q, k, v, causal=True, backend=backend)
    growth = _resident_bytes("VmHWM") - before - outputs_bytes
    assert growth < 64 * 2**20, f"grew {growth / 2**20:.0f} MiB beyond the outputs (scores: {scores_bytes >> 20} MiB)"
    assert np.all(np.isfinite(out))


# --- embedding ------------------------------------------------------------------------


@pytest.mark.parametrize("ids_shape", [(1,), (17,), (4, 33), (2, 3, 5)])
def test_embedding_matches_reference(backend, dtype, rng, ids_shape):
    vocabulary, channels = 13, 7
    ids = rng.integers(0, vocabulary, ids_shape)
    table = make_array(rng, (vocabulary, channels), dtype, "transposed")
    rows = kernprop.embedding(ids, table, backend=backend)
    assert_close(rows, ref_embedding.embedding_forward(ids, table), dtype, rtol=0.0, name="rows")
    dy = make_array(rng, (*ids_shape, channels), dtype)
    dtable = kernprop.embedding_backward(ids, dy, vocabulary, backend=backend)
    _close(dtable, ref_embedding.embedding_backward(ids, dy.astype(np.float64), vocabulary), dtype, "dtable")


def test_embedding_backward_sums_in_position_order_at_any_thread_count(backend, dtype, rng):
    # many repeats of few ids: a racing or reordered sum would change the bits
    ids = rng.integers(0, 5, (16, 128))
    dy = make_array(rng, (16, 128, 24), dtype, low=-1e3, high=1e3)
    want = ref_embedding.embedding_backward(ids, dy, 50)
    threads = kernprop.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            kernprop.set_num_threads(min(count, threads) if backend != "numpy" else threads)
            results.append(to_host(kernprop.embedding_backward(ids, dy, 50, backend=backend)))
    finally:
        kernprop.set_num_threads(threads)
    assert np.array_equal(results[0], results[1])
    if backend != "cuda":
        assert np.array_equal(results[0], want), "not summed in the order of the positions"
    assert not np.any(results[0][5:])


def test_embedding_rejects_bad_ids(backend, dtype):
    table = np.zeros((10, 3), dtype)
    with pytest.raises(ValueError, match=r"ids\[1, 2\] = 10 is out of range"):
        kernprop.embedding(np.array([[0, 1, 2], [3, 4, 10]]), table, backend=backend)
    with pytest.raises(ValueError, match=r"ids\[0\] = -1"):
        kernprop.embedding_backward(np.array([-1, 2]), np.zeros((2, 3), dtype), 10, backend=backend)
    with pytest.raises(TypeError, match="ids must have an integer dtype"):
        kernprop.embedding(np.array([0.0, 1.0]), table, backend=backend)
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3\)"):
        kernprop.embedding_backward(np.array([0, 1]), np.zeros((3, 3), dtype), 10, backend=backend)


# --- validation -----------------------------------------------------------------------


def test_bad_arguments_are_named(dtype):
    x = np.ones((3, 4), dtype)
    with pytest.raises(ValueError, match="approximate must be one of"):
        kernprop.gelu(x, "fast")
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        kernprop.layer_norm(x, np.ones(3, dtype))
    with pytest.raises(TypeError, match="share one dtype"):
        kernprop.layer_norm(x, np.ones(4, np.float32 if dtype == np.float64 else np.float64))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        kernprop.layer_norm(x, np.ones(4, dtype), eps=-1.0)
    q = np.ones((1, 2, 3, 4), dtype)
    with pytest.raises(ValueError, match="q must be 4-D"):
        kernprop.attention(x, q, q)
    with pytest.raises(ValueError, match=r"k must have shape \(1, 2, 5, 4\)"):
        kernprop.attention(q, np.ones((1, 2, 5, 3), dtype), np.ones((1, 2, 5, 4), dtype))
    with pytest.raises(ValueError, match=r"v must have shape \(1, 2, 3, Dv\)"):
        kernprop.attention(q, q, np.ones((1, 2, 4, 4), dtype))
    with pytest.raises(ValueError, match=r"lse must have shape \(1, 2, 3\)"):
        kernprop.attention_backward(q, q, q, q, np.ones((1, 2, 4), dtype), q)
    with pytest.raises(ValueError, match="scale must be finite"):
        kernprop.attention(q, q, q, scale=float("nan"))


# --- gradients by finite differences (float64) ----------------------------------------


def test_gradients_by_finite_differences(backend, rng):
    x = rng.standard_normal((3, 5))
    weight, bias = rng.standard_normal(5), rng.standard_normal(5)
    dy = rng.standard_normal((3, 5))

    def ln_loss():
        return float((to_host(kernprop.layer_norm(x, weight, bias, backend=backend)[0]) * dy).sum())

    _, mean, rstd = kernprop.layer_norm(x, weight, bias, backend=backend)
    dx, dweight, dbias = kernprop.layer_norm_backward(x, weight, mean, rstd, dy, backend=backend)
    for name, got, array in (("dx", dx, x), ("dweight", dweight, weight), ("dbias", dbias, bias)):
        assert_close(got, numeric_gradient(ln_loss, array), rtol=1e-6, name=name)

    for approximate in APPROXIMATIONS:
        def gelu_loss():
            return float((to_host(kernprop.gelu(x, approximate, backend=backend)) * dy).sum())

        assert_close(kernprop.gelu_backward(x, dy, approximate, backend=backend), numeric_gradient(gelu_loss, x),
                     rtol=1e-6, name=f"gelu {approximate}")

    q, k, v = rng.standard_normal((1, 2, 4, 3)), rng.standard_normal((1, 2, 6, 3)), rng.standard_normal((1, 2, 6, 2))
    dout = rng.standard_normal((1, 2, 4, 2))
    for causal in (False, True):
        def attention_loss():
            return float((to_host(kernprop.attention(q, k, v, causal=causal, backend=backend)[0]) * dout).sum())

        out, lse = kernprop.attention(q, k, v, causal=causal, backend=backend)
        grads = kernprop.attention_backward(q, k, v, out, lse, dout, causal=causal, backend=backend)
        for name, got, array in zip(("dq", "dk", "dv"), grads, (q, k, v)):
            assert_close(got, numeric_gradient(attention_loss, array), rtol=1e-6, name=f"{name} causal={causal}")


# --- against PyTorch ------------------------------------------------------------------


def test_matches_pytorch(backend, dtype, rng):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    rtol = {np.dtype(np.float32): 2e-4, np.dtype(np.float64): 1e-10}[dtype]

    def leaf(array):
        return torch.tensor(np.asarray(array), dtype=tdtype, requires_grad=True)

    # layer_norm
    x, weight, bias, dy = (make_array(rng, s, dtype) for s in ((9, 31), (31,), (31,), (9, 31)))
    tx, tw, tb = leaf(x), leaf(weight), leaf(bias)
    ty = functional.layer_norm(tx, (31,), tw, tb, 1e-5)
    ty.backward(torch.tensor(dy))
    y, mean, rstd = kernprop.layer_norm(x, weight, bias, backend=backend)
    grads = kernprop.layer_norm_backward(x, weight, mean, rstd, dy, backend=backend)
    assert_close(y, ty.detach().numpy(), dtype, rtol=rtol, name="layer_norm")
    for name, got, tensor in zip(("dx", "dweight", "dbias"), grads, (tx, tw, tb)):
        assert_close(got, tensor.grad.numpy(), dtype, rtol=rtol, name=f"layer_norm {name}")

    # gelu
    for approximate in APPROXIMATIONS:
        tx = leaf(x)
        ty = functional.gelu(tx, approximate=approximate)
        ty.backward(torch.tensor(dy))
        assert_close(kernprop.gelu(x, approximate, backend=backend), ty.detach().numpy(), dtype, rtol=rtol)
        assert_close(kernprop.gelu_backward(x, dy, approximate, backend=backend), tx.grad.numpy(), dtype, rtol=rtol)

    # attention
    q, k, v = _qkv(rng, dtype, 2, 3, 21, 21, 16, 16)
    dout = make_array(rng, (2, 3, 21, 16), dtype)
    for causal in (False, True):
        tq, tk, tv = leaf(q), leaf(k), leaf(v)
        tout = functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
        tout.backward(torch.tensor(dout))
        out, lse = kernprop.attention(q, k, v, causal=causal, backend=backend)
        grads = kernprop.attention_backward(q, k, v, out, lse, dout, causal=causal, backend=backend)
        assert_close(out, tout.detach().numpy(), dtype, rtol=rtol, name="attention")
        for name, got, tensor in zip(("dq", "dk", "dv"), grads, (tq, tk, tv)):
            assert_close(got, tensor.grad.numpy(), dtype, rtol=rtol, name=f"attention {name} causal={causal}")

    # embedding
    ids = rng.integers(0, 11, (4, 6))
    table = make_array(rng, (11, 5), dtype)
    ttable = leaf(table)
    trows = functional.embedding(torch.tensor(ids), ttable)
    dy = make_array(rng, (4, 6, 5), dtype)
    trows.backward(torch.tensor(dy))
    assert_close(kernprop.embedding(ids, table, backend=backend), trows.detach().numpy(), dtype, rtol=0.0)
    assert_close(kernprop.embedding_backward(ids, dy, 11, backend=backend), ttable.grad.numpy(), dtype, rtol=rtol)
