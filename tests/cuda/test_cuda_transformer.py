"""The transformer ops of the ``cuda`` backend (gelu, layer_norm, attention, embedding),
forward and backward, against the NumPy reference computed in float64 from the same inputs.

Sized for the simulator (``NUMBA_ENABLE_CUDASIM=1 pytest tests/cuda -m cudasim``): each
shape is picked for an edge of the kernels, not for size.  Attention: Lq != Lk, D != Dv,
more keys than one key tile (the online softmax rescales), more queries than one
backward tile, a head dimension past 64 (the 128 variant), causal and not, scores of
+-1e4, strided device views.  Layer norm: one column, rows wider than a warp (the block
reduction through shared memory), more rows than one chunk of the parameter gradients.
Embedding: the gradient is the reference's bits (same order of the sums).
"""

import math

import numpy as np
import pytest

import kernprop
from kernprop import ops
from kernprop.kernels.reference import activations as ref_activations
from kernprop.kernels.reference import attention as ref_attention
from kernprop.kernels.reference import embedding as ref_embedding
from kernprop.kernels.reference import normalization as ref_normalization

STATUS = kernprop.backends()["cuda"]
if not STATUS.available:
    pytest.skip(f"cuda backend unavailable: {STATUS.reason}", allow_module_level=True)

from numba import cuda  # noqa: E402  (after the skip: numba-cuda may be missing)

from kernprop.kernels.numba_cuda import (  # noqa: E402
    activations as cuda_activations,
    attention as cuda_attention,
    embedding as cuda_embedding,
    normalization as cuda_normalization,
)

pytestmark = [
    pytest.mark.cudasim,
    # The simulator does the arithmetic with NumPy scalars, which warn on inf * 0 and
    # exp overflow where the device silently gives the nan or 0 the reference expects.
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]

DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
# Tolerances, in one place: |got - want| <= RTOL * (|want| + scale), scale defaulting to
# the largest finite |want|; want is the float64 reference of the same inputs.
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-11}
# float32 gradients at scores of 1e4: lse is stored in float32, 1e4 to within 6e-4, and
# P = exp(S - lse) carries that relative error (PyTorch's float32 lse does the same)
RTOL_LSE_1E4 = 2e-3


def host(x):
    return x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x)


def assert_close(got, want, dtype, name="result", scale=None, rtol=None, on_device=False):
    """Same shape, dtype, NaN/inf pattern and values within tolerance; shows the worst element."""
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
    rtol = RTOL[dtype] if rtol is None else rtol
    with np.errstate(invalid="ignore"):
        error = np.abs(g - w)
        limit = rtol * (np.abs(w) + max(scale, 1e-30))
        ok = (np.isnan(g) & np.isnan(w)) | (np.isinf(w) & (g == w)) | (error <= limit)
    if not ok.all():
        worst = np.unravel_index(np.argmax(np.where(ok, -np.inf, np.nan_to_num(error, nan=np.inf))), got.shape)
        raise AssertionError(
            f"{name}: {int((~ok).sum())} of {got.size} differ; worst at {worst}: got {g[worst]!r}, "
            f"expected {w[worst]!r} (allowed {limit[worst]:.3g})"
        )


@pytest.fixture
def rng():
    return np.random.default_rng(26)


def rand(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def as64(*arrays):
    return [None if a is None else np.asarray(host(a), dtype=np.float64) for a in arrays]


# --- gelu -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(1,), (17,), (45, 3)])
def test_gelu(rng, dtype, approximate, shape):
    x = rand(rng, shape[::-1], dtype, 3.0).T  # a transposed view for the 2-D shape
    dy = rand(rng, shape, dtype)
    x64, dy64 = as64(x, dy)
    # in units of |x| and |dy|: far left, gelu(x) ~ 1e-9 |x| is where the reference's
    # 1 + erf cancels and float32's tanh(u) rounds to -1
    assert_close(ops.gelu(x, approximate, backend="cuda"), ref_activations.gelu_forward(x64, approximate),
                 dtype, "gelu", scale=float(np.abs(x64).max()))
    assert_close(ops.gelu_backward(x, dy, approximate, backend="cuda"),
                 ref_activations.gelu_backward(x64, dy64, approximate), dtype, "gelu_backward",
                 scale=float(np.abs(dy64).max()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_extreme_values(dtype, approximate):
    x = np.array([-np.inf, -1e4, -50.0, -5.0, -0.0, 0.0, 1e-30, 5.0, 50.0, 1e4, np.inf], dtype=dtype)
    dy = np.ones_like(x)
    with np.errstate(all="ignore"):
        want = ref_activations.gelu_forward(x.astype(np.float64), approximate)
        dwant = ref_activations.gelu_backward(x.astype(np.float64), dy.astype(np.float64), approximate)
    got = host(ops.gelu(x, approximate, backend="cuda"))
    assert np.isnan(got[0]) and got[-1] == np.inf  # -inf * Phi(-inf) = -inf * 0, as PyTorch
    assert_close(got, want, dtype, "gelu")
    assert_close(ops.gelu_backward(x, dy, approximate, backend="cuda"), dwant, dtype, "gelu_backward", scale=1.0)


def test_gelu_of_large_negative_inputs_keeps_float32_digits():
    # Phi(x) through erfc: 1 + erf(x / sqrt 2) cancels to a few digits here, or to 0
    # (also in float64 past x = -8, so the expected values come from erfc too)
    x = np.array([-4.0, -6.0, -9.0, -12.0], np.float32)
    want = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    got = host(ops.gelu(x, "none", backend="cuda")).astype(np.float64)
    assert np.all(np.abs(got - want) <= 1e-5 * np.abs(want)), (got, want)


# --- layer_norm -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,has_bias", [((1, 1), True), ((1, 17), False), ((3, 70), True)])
def test_layer_norm(rng, dtype, shape, has_bias):
    rows, channels = shape
    x = (rand(rng, shape[::-1], dtype, 2.0) + 1).T  # transposed: the kernels read strides
    weight = rng.uniform(0.5, 1.5, channels).astype(dtype)
    bias = rand(rng, channels, dtype) if has_bias else None
    dy = rand(rng, shape, dtype)
    x64, w64, b64, dy64 = as64(x, weight, bias, dy)
    y, mean, rstd = ops.layer_norm(x, weight, bias, backend="cuda")
    want_y, want_mean, want_rstd = ref_normalization.layer_norm_forward(x64, w64, b64, 1e-5)
    assert_close(y, want_y, dtype, "y")
    assert_close(mean, want_mean, dtype, "mean")
    assert_close(rstd, want_rstd, dtype, "rstd")
    dx, dweight, dbias = ops.layer_norm_backward(x, weight, mean, rstd, dy, has_bias, backend="cuda")
    want_dx, want_dw, want_db = ref_normalization.layer_norm_backward(x64, w64, want_mean, want_rstd, dy64, has_bias)
    assert_close(dx, want_dx, dtype, "dx")
    assert_close(dweight, want_dw, dtype, "dweight")
    if has_bias:
        assert_close(dbias, want_db, dtype, "dbias")
    else:
        assert dbias is None


def test_layer_norm_parameter_gradients_over_several_chunks(rng):
    # rows in chunks of 2: three chunk partials per column, added by the second kernel
    dtype = np.dtype(np.float64)
    x, dy = rand(rng, (5, 3), dtype), rand(rng, (5, 3), dtype)
    mean = x.mean(axis=1)
    rstd = 1 / np.sqrt(x.var(axis=1) + 1e-5)
    dweight, dbias = cuda_normalization.layer_norm_param_grads(
        cuda.to_device(x), cuda.to_device(mean), cuda.to_device(rstd), cuda.to_device(dy), True, rows_per_chunk=2)
    _, want_dw, want_db = ref_normalization.layer_norm_backward(x, np.ones(3), mean, rstd, dy, True)
    assert_close(dweight, want_dw, dtype, "dweight")
    assert_close(dbias, want_db, dtype, "dbias")
    assert cuda_normalization.param_chunks(5, 2) == (3, 2)
    per_chunk = cuda_normalization.ROWS_PER_CHUNK
    assert cuda_normalization.param_chunks(100 * per_chunk) == (100, per_chunk)
    assert cuda_normalization.param_chunks(10**9)[0] == cuda_normalization.MAX_CHUNKS


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layer_norm_extreme_rows(dtype):
    # a constant row (variance 0: rstd = 1/sqrt(eps)), a row of +-1e4, a large offset
    x = np.array([[3.0] * 6, [1e4, -1e4] * 3, [1e4 + 1, 1e4 - 1, 1e4, 1e4, 1e4 + 2, 1e4 - 2]], dtype=dtype)
    weight = np.linspace(0.5, 2.0, 6).astype(dtype)
    bias = np.full(6, 0.25, dtype)
    y, mean, rstd = ops.layer_norm(x, weight, bias, eps=1e-5, backend="cuda")
    want_y, want_mean, want_rstd = ref_normalization.layer_norm_forward(*as64(x, weight, bias), 1e-5)
    assert_close(mean, want_mean, dtype, "mean")
    assert_close(rstd, want_rstd, dtype, "rstd")  # row 3: two passes keep the variance (5/3)
    assert_close(y, want_y, dtype, "y")


# --- attention ------------------------------------------------------------------------


def check_attention(dtype, q, k, v, dout, causal, scale=None, rtol_grad=None, on_device=False):
    """Forward and backward of the cuda backend against the float64 reference."""
    q64, k64, v64, dout64 = as64(q, k, v, dout)
    used_scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    want_out, want_lse = ref_attention.attention_forward(q64, k64, v64, causal, used_scale, "fp32")
    if on_device:  # the backend modules directly: ops validates host arrays the same way
        out, lse = cuda_attention.attention_forward(q, k, v, causal, used_scale, "fp32")
    else:
        out, lse = ops.attention(q, k, v, causal=causal, scale=scale, backend="cuda")
    assert_close(out, want_out, dtype, "out", on_device=on_device)
    assert_close(lse, want_lse, dtype, "lse", on_device=on_device)
    want = ref_attention.attention_backward(q64, k64, v64, want_out, want_lse, dout64, causal, used_scale, "fp32")
    if on_device:
        grads = cuda_attention.attention_backward(q, k, v, out, lse, dout, causal, used_scale, "fp32")
    else:
        grads = ops.attention_backward(q, k, v, out, lse, dout, causal=causal, scale=scale, backend="cuda")
    for name, got, expected in zip(("dq", "dk", "dv"), grads, want):
        assert_close(got, expected, dtype, name, rtol=rtol_grad, on_device=on_device)


# dtype, (B, H, Lq, Lk, D, Dv), causal: each dtype's tiles (attention.FORWARD_TILES,
# BACKWARD_TILES) see both head variants (D = 72 takes the 128 one), causal and not,
# several key tiles (32 keys per forward tile, 16 or 32 per backward tile) and several
# backward query tiles, on as few simulated threads as that takes.
ATTENTION_CASES = [
    (DTYPES[1], (1, 1, 1, 1, 1, 1), False),
    (DTYPES[0], (1, 2, 9, 40, 5, 3), True),   # two heads; Lq < Lk: keys past Lq get no gradient
    (DTYPES[1], (1, 2, 9, 40, 5, 3), False),  # D != Dv, two key tiles
    (DTYPES[0], (1, 1, 20, 12, 72, 6), False),  # Lq > Lk, head 128, two backward query tiles
    (DTYPES[1], (1, 1, 20, 12, 72, 6), True),
]


@pytest.mark.parametrize("dtype,shape,causal", ATTENTION_CASES,
                         ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else str(c))
def test_attention(rng, dtype, shape, causal):
    batch, heads, lq, lk, depth, depth_v = shape
    q, k = rand(rng, (batch, heads, lq, depth), dtype), rand(rng, (batch, heads, lk, depth), dtype)
    v, dout = rand(rng, (batch, heads, lk, depth_v), dtype), rand(rng, (batch, heads, lq, depth_v), dtype)
    check_attention(dtype, q, k, v, dout, causal)


@pytest.mark.parametrize("dtype,causal", [(DTYPES[0], False), (DTYPES[1], True)], ids=str)
def test_attention_scores_of_1e4(rng, dtype, causal):
    # |q . k| up to 2e4, scale 1/2: scores of +-1e4, exact in both dtypes; 37 keys are
    # two key tiles, so the running max moves between tiles
    q = (np.sign(rand(rng, (1, 1, 9, 4), dtype)) * 50).astype(dtype)
    k = (np.sign(rand(rng, (1, 1, 37, 4), dtype)) * 100).astype(dtype)
    v, dout = rand(rng, (1, 1, 37, 4), dtype), rand(rng, (1, 1, 9, 4), dtype)
    check_attention(dtype, q, k, v, dout, causal, rtol_grad=RTOL_LSE_1E4 if dtype == np.float32 else None)


def test_attention_of_strided_host_views(rng):
    # heads interleaved with positions, as a fused qkv projection leaves them
    dtype = np.dtype(np.float32)
    q = rand(rng, (1, 9, 2, 4), dtype).transpose(0, 2, 1, 3)
    k = rand(rng, (1, 11, 2, 4), dtype).transpose(0, 2, 1, 3)
    v = rand(rng, (1, 11, 2, 3), dtype).transpose(0, 2, 1, 3)
    dout = rand(rng, (1, 9, 2, 3), dtype).transpose(0, 2, 1, 3)
    assert not q.flags.c_contiguous
    check_attention(dtype, q, k, v, dout, True, scale=0.3)


def test_attention_of_strided_device_views(rng):
    # device views with strides on every axis but the batch: read in place (layout "A")
    dtype = np.dtype(np.float64)

    def view(lengths, width):
        big = rand(rng, (1, 2, 2 * lengths, width + 2), dtype)
        return big[:, :, 1::2, :width], cuda.to_device(big)[:, :, 1::2, :width]

    (q, d_q), (k, d_k), (v, d_v), (dout, d_dout) = view(6, 3), view(13, 3), view(13, 2), view(6, 2)
    assert not d_q.is_c_contiguous()
    check_attention(dtype, d_q, d_k, d_v, d_dout, False, scale=0.7, on_device=True)
    # the same values from the host give the same results
    out, lse = cuda_attention.attention_forward(q, k, v, False, 0.7, "fp32")
    want, _ = ref_attention.attention_forward(q, k, v, False, 0.7, "fp32")
    assert_close(out, want, dtype, "out")


def test_attention_head_dimension_limit():
    q = np.zeros((1, 1, 2, cuda_attention.HEADS[-1] + 1), np.float32)
    with pytest.raises(ValueError, match="head dimensions up to 128"):
        ops.attention(q, q, q, backend="cuda")
    v = np.zeros((1, 1, 2, 129), np.float32)
    with pytest.raises(ValueError, match="Dv=129"):
        ops.attention(q[..., :4], q[..., :4], v, backend="cuda")
    assert cuda_attention.head_for(64, 3) == 64 and cuda_attention.head_for(65, 1) == 128


# --- embedding ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ids_shape", [(1,), (4, 33), (2, 3, 5)])
def test_embedding(rng, dtype, ids_shape):
    vocabulary, channels = 13, 7
    ids = rng.integers(0, vocabulary - 2, ids_shape)  # the last ids never occur: zero rows
    table = rand(rng, (channels, vocabulary), dtype).T  # a transposed view
    rows = host(ops.embedding(ids, table, backend="cuda"))
    assert rows.dtype == dtype and np.array_equal(rows, ref_embedding.embedding_forward(ids, table))
    dy = rand(rng, (*ids_shape, channels), dtype, 100.0)
    dtable = host(ops.embedding_backward(ids, dy, vocabulary, backend="cuda"))
    # each id's rows added in the order of their positions, from 0: np.add.at's bits
    want = ref_embedding.embedding_backward(ids, dy, vocabulary)
    assert dtable.dtype == dtype and np.array_equal(dtable, want), np.abs(dtable - want).max()
    assert not np.any(dtable[-2:])


def test_embedding_device_arrays_stay_on_device(rng):
    dtype = np.dtype(np.float32)
    ids = rng.integers(0, 5, (3, 4))
    table = rand(rng, (5, 6), dtype)
    rows = cuda_embedding.embedding_forward(ids, cuda.to_device(table))
    assert_close(rows, table[ids], dtype, "rows", on_device=True)
    dy = rand(rng, (3, 4, 6), dtype)
    dtable = cuda_embedding.embedding_backward(ids, cuda.to_device(dy), 5)
    assert_close(dtable, ref_embedding.embedding_backward(ids, dy, 5), dtype, "dtable", on_device=True)
    assert np.array_equal(host(dtable), host(cuda_embedding.embedding_backward(ids, cuda.to_device(dy), 5)))


def test_sort_positions():
    order, offsets = cuda_embedding.sort_positions(np.array([[2, 0], [2, 2]]), 4)
    assert order.tolist() == [1, 0, 2, 3] and offsets.tolist() == [0, 1, 1, 4, 4]


# --- device arrays in, device arrays out ----------------------------------------------


def test_transformer_ops_keep_device_arrays_on_device(rng):
    dtype = np.dtype(np.float32)
    x, dy = rand(rng, (4, 9), dtype), rand(rng, (4, 9), dtype)
    d_x, d_dy = cuda.to_device(x), cuda.to_device(dy)
    assert_close(cuda_activations.gelu_forward(d_x, "tanh"), ref_activations.gelu_forward(x, "tanh"), dtype,
                 "gelu", on_device=True)
    assert_close(cuda_activations.gelu_backward(d_x, d_dy, "none"), ref_activations.gelu_backward(x, dy, "none"),
                 dtype, "gelu_backward", on_device=True)
    weight = rng.uniform(0.5, 1.5, 9).astype(dtype)
    y, mean, rstd = cuda_normalization.layer_norm_forward(d_x, cuda.to_device(weight), None, 1e-5)
    want_y, _, _ = ref_normalization.layer_norm_forward(x, weight, None, 1e-5)
    assert_close(y, want_y, dtype, "y", on_device=True)
    assert not isinstance(mean, np.ndarray) and not isinstance(rstd, np.ndarray)


def test_ops_take_device_arrays(rng):
    # through kernprop.ops, as a model on the device calls them: validated, results on the device
    # (float64: its backward tiles are the smaller blocks, the quicker ones to simulate)
    dtype = np.dtype(np.float64)
    q, k, v = rand(rng, (1, 2, 3, 4), dtype), rand(rng, (1, 2, 5, 4), dtype), rand(rng, (1, 2, 5, 2), dtype)
    dout = rand(rng, (1, 2, 3, 2), dtype)
    d_q, d_k, d_v, d_dout = (cuda.to_device(a) for a in (q, k, v, dout))
    out, lse = ops.attention(d_q, d_k, d_v, causal=True, backend="cuda")
    want_out, want_lse = ref_attention.attention_forward(*as64(q, k, v), True, 0.5, "fp32")
    assert_close(out, want_out, dtype, "out", on_device=True)
    grads = ops.attention_backward(d_q, d_k, d_v, out, lse, d_dout, causal=True, backend="cuda")
    want = ref_attention.attention_backward(*as64(q, k, v), want_out, want_lse, *as64(dout), True, 0.5, "fp32")
    for name, got, expected in zip(("dq", "dk", "dv"), grads, want):
        assert_close(got, expected, dtype, name, on_device=True)
    x, weight = rand(rng, (2, 5), dtype), rng.uniform(0.5, 1.5, 5).astype(dtype)
    y, mean, rstd = ops.layer_norm(cuda.to_device(x), cuda.to_device(weight), backend="cuda")
    assert_close(y, ref_normalization.layer_norm_forward(x, weight, None, 1e-5)[0], dtype, "y", on_device=True)
    dx, dweight, dbias = ops.layer_norm_backward(cuda.to_device(x), cuda.to_device(weight), mean, rstd,
                                                 cuda.to_device(x), has_bias=False, backend="cuda")
    assert dbias is None and not isinstance(dweight, np.ndarray)
    assert_close(ops.gelu(cuda.to_device(x), backend="cuda"), ref_activations.gelu_forward(x, "none"), dtype,
                 "gelu", on_device=True)
    ids = np.array([[1, 0], [1, 3]])
    table = cuda.to_device(rand(rng, (4, 3), dtype))
    rows = ops.embedding(ids, table, backend="cuda")
    assert_close(rows, host(table)[ids], dtype, "rows", on_device=True)
    dtable = ops.embedding_backward(ids, rows, 4, backend="cuda")
    assert_close(dtable, ref_embedding.embedding_backward(ids, host(rows), 4), dtype, "dtable", on_device=True)
