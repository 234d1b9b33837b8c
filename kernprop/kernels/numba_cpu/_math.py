"""Vectorisable exp for the Numba CPU backend.

Numba compiles ``np.exp`` on float32 to a scalar libm call per element (no SVML here),
which stops LLVM from vectorising any loop that contains it; NumPy's SIMD exp is ~3x
faster.  ``fast_exp`` is, for float32, Cephes' ``expf`` written branch-free so that a
loop over a contiguous slice vectorises (``inspect_asm`` of the callers shows the
polynomial as ``vfmadd...ps`` on zmm and the exponent insertion as ``vpslld``):

    n = round(x / ln 2),  r = x - n ln 2  (Cody-Waite: ln 2 in two parts, r exact)
    exp(x) = 2^n * p(r),  p the degree-6 polynomial of Cephes (|rel err| < 2 ulp)

2^n is built by writing n + bias into the exponent bits (``_float_from_bits``).  Edge
cases: NaN propagates (r is NaN), exp(-inf) = 0 and any x < -86.9 gives 0 (its true
value is below 2e-38), x > ln(FLT_MAX) gives +inf.  float64 keeps ``np.exp``: its callers are
not the float32 targets and the polynomial would need twice the degree.

The helper is compiled with ``contract`` only (no ``reassoc``) and is not inlined at the
Numba level (that would give it the caller's flags, and Numba's inliner warns about its
selects): reassociation could fold ``x - n*C1 - n*C2`` into ``x - n*(C1+C2)`` and lose
the exactness of r.  LLVM inlines it into the caller's loop with its own per-instruction
flags kept, and vectorises that loop.  Max relative error measured over [-86.9, 88.7]:
8e-8 (about 1.4 ulp).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

_LOG2E = np.float32(1.44269504088896341)
_C1 = np.float32(0.693359375)
_C2 = np.float32(-2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_TWO = np.float32(2.0)
_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)
_LO = np.float32(-86.9)
_HI = np.float32(88.72283935546875)  # ln(largest float32)


@intrinsic
def _float_from_bits(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (no conversion)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(cache=True, fastmath={"contract", "nsz"})
def exp_f32(x):
    # x float32 -> exp(x) float32, branch-free (selects only) so loops vectorise.
    xc = _LO if x < _LO else x
    xc = _HI if xc > _HI else xc            # NaN passes both selects unchanged
    nf = np.floor(xc * _LOG2E + _HALF)
    r = xc - nf * _C1
    r = r - nf * _C2
    z = r * r
    p = (((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * z + r + _ONE
    n = np.int32(nf if nf == nf else _ZERO)  # NaN -> 0: fptosi of NaN would be poison
    # 2^(n-1) has a normal exponent for n in [-125, 128]; times 2 afterwards.
    scale = _float_from_bits(np.int32((n + np.int32(126)) << np.int32(23)))
    y = (p * _TWO) * scale
    y = _ZERO if x < _LO else y
    return _INF if x > _HI else y


def fast_exp(x):
    """exp of a float scalar: the vectorisable float32 version, or np.exp for float64."""
    return np.exp(x)


@overload(fast_exp)
def _fast_exp(x):
    if x == types.float32:
        return lambda x: exp_f32(x)
    return lambda x: np.exp(x)


@njit(cache=True, fastmath={"contract", "nsz"}, error_model="numpy")
def sigmoid_f32(x):
    # x float32 -> 1 / (1 + exp(-x)) float32.  exp(-|x|) never overflows; r or e*r is
    # picked by sign, a select.  Every constant float32: an integer literal would make
    # Numba compute in float64 (half the vector lanes; 256x512: 52 -> 33 us).
    e = exp_f32(-abs(x))
    r = _ONE / (_ONE + e)
    return r if x >= _ZERO else e * r


@njit(cache=True, error_model="numpy")
def sigmoid_f64(x):
    # the same selects in float64 (np.exp: the float64 callers are not the SIMD targets)
    e = np.exp(-abs(x))
    r = 1.0 / (1.0 + e)
    return r if x >= 0 else e * r


def fast_sigmoid(x):
    """The logistic function of a float scalar, vectorisable for float32."""
    return sigmoid_f64(x)


@overload(fast_sigmoid)
def _fast_sigmoid(x):
    if x == types.float32:
        return lambda x: sigmoid_f32(x)
    return lambda x: sigmoid_f64(x)


# Cephes tanhf: an odd polynomial below |x| = 0.625, where 1 - 2 / (exp(2|x|) + 1) would
# lose relative precision to cancellation, and that formula above it.
_TANH_SMALL = np.float32(0.625)
_T0 = np.float32(-5.70498872745e-3)
_T1 = np.float32(2.06390887954e-2)
_T2 = np.float32(-5.37397155531e-2)
_T3 = np.float32(1.33314422036e-1)
_T4 = np.float32(-3.33332819422e-1)


@njit(cache=True, fastmath={"contract", "nsz"}, error_model="numpy")
def tanh_f32(x):
    # x float32 -> tanh(x) float32; both branches computed and selected so loops
    # vectorise.  exp_f32(2|x|) overflows to inf for large |x|, giving exactly +-1;
    # NaN fails the comparison and propagates through the exp branch.
    ax = abs(x)
    z = x * x
    small = ((((_T0 * z + _T1) * z + _T2) * z + _T3) * z + _T4) * z * x + x
    large = _ONE - _TWO / (exp_f32(_TWO * ax) + _ONE)
    large = large if x >= _ZERO else -large
    return small if ax < _TANH_SMALL else large


def fast_tanh(x):
    """tanh of a float scalar: the vectorisable float32 version, or np.tanh for float64."""
    return np.tanh(x)


@overload(fast_tanh)
def _fast_tanh(x):
    if x == types.float32:
        return lambda x: tanh_f32(x)
    return lambda x: np.tanh(x)


@intrinsic
def vector_max(typingctx, xs):
    """max of ``xs`` (1-D contiguous float array) over its first ``len(xs) // VL * VL``
    elements (VL = 64 bytes of lanes), -inf when there are none; the caller folds in the
    tail.  LLVM does not vectorise a max reduction without the no-NaN flag, so the loop
    is written here: 4 accumulators of VL lanes, ``x > acc ? x : acc`` (vmaxps).  A NaN
    may be skipped: callers sum exp(x - max) next, and the NaN reaches the result there.
    """
    sig = xs.dtype(xs)

    def codegen(context, builder, signature, args):
        from numba.core import cgutils

        arr = context.make_array(signature.args[0])(context, builder, args[0])
        elt = context.get_data_type(signature.args[0].dtype)
        size = context.get_abi_sizeof(elt)
        vl = 64 // size
        vec = ir.VectorType(elt, vl)
        i64 = ir.IntType(64)
        n = builder.extract_value(arr.shape, 0)
        nvec = builder.udiv(n, ir.Constant(i64, vl))
        minus_inf = ir.Constant(vec, [float("-inf")] * vl)
        data = builder.bitcast(arr.data, vec.as_pointer())
        accs = [cgutils.alloca_once_value(builder, minus_inf) for _ in range(4)]
        nquad = builder.udiv(nvec, ir.Constant(i64, 4))

        def vmax(a, b):
            return builder.select(builder.fcmp_ordered(">", a, b), a, b)

        with cgutils.for_range(builder, nquad) as loop:
            base = builder.mul(loop.index, ir.Constant(i64, 4))
            for u in range(4):
                x = builder.load(builder.gep(data, [builder.add(base, ir.Constant(i64, u))]), align=size)
                builder.store(vmax(x, builder.load(accs[u])), accs[u])
        with cgutils.for_range(builder, builder.sub(nvec, builder.mul(nquad, ir.Constant(i64, 4)))) as loop:
            x = builder.load(builder.gep(data, [builder.add(builder.mul(nquad, ir.Constant(i64, 4)), loop.index)]), align=size)
            builder.store(vmax(x, builder.load(accs[0])), accs[0])
        acc = vmax(vmax(builder.load(accs[0]), builder.load(accs[1])),
                   vmax(builder.load(accs[2]), builder.load(accs[3])))
        result = builder.extract_element(acc, ir.Constant(ir.IntType(32), 0))
        for lane in range(1, vl):
            x = builder.extract_element(acc, ir.Constant(ir.IntType(32), lane))
            result = builder.select(builder.fcmp_ordered(">", x, result), x, result)
        return result

    return sig, codegen
