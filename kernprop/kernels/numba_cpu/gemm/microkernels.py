"""The GEMM engine's micro-kernels: register tiles written in LLVM IR.

Numba exposes no vector type, and LLVM's SLP vectoriser does not turn an MR x NR tile of
scalar accumulators carried around a loop into vector registers (tried: it emitted 384
scalar ``vfmadd231ss``).  So each micro-kernel is a Numba ``intrinsic`` that builds the
loop itself: ``MR * NVEC`` vector accumulators held in registers as loop phis, one
broadcast of A and ``NVEC`` loads of B per step.  On AVX-512 (VL = 64 bytes) MR = 12,
NVEC = 2 uses 24 accumulators + 2 B vectors + 1 broadcast of the 32 zmm registers.

Kernels (one tile shape, MR x NR = 12 x 32 float32 / 12 x 16 float64):
  1. ``fma_tile``: ``llvm.fma`` on <VL x float|double>; ``inspect_asm`` shows the loop
     unrolled into ``vfmadd231ps ... zmm`` (float64: ``vfmadd231pd``).
  2. ``bf16_tile``: ``llvm.x86.avx512bf16.dpbf16ps.512``: one step multiplies a pair of
     K (two bfloat16 values in one 32-bit word: a row's (k, k+1) of A broadcast, the
     (k, k+1) of 16 columns of B per vector) and adds both products to float32 lanes.
     Where the CPU has no AVX512_BF16 the same IR is emitted with the pairs widened to
     float32 and two FMAs (exact products, slower; never selected for speed, see
     ``selection``), so the module compiles on every x86-64.
Each kernel overwrites its output tile (``beta`` false) or adds to it (``beta`` true).

``peak_loop`` is a register-only loop of one kernel's instruction, for the benchmark's
measured peaks.
"""

from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# Rows of the register tile, and vectors per row of it.
MR = 12
NVEC = 2
# Bytes per vector register: 64 with AVX-512, 32 with AVX2 only (then 16 registers, so
# the tile would spill; the kernel stays correct, only slower).
VECTOR_BYTES = 64
# float32 lanes of one vector: the columns of one bf16 B vector (pairs of bfloat16).
F32_LANES = VECTOR_BYTES // 4

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


class _BFloat(ir.Type):
    """LLVM's ``bfloat`` (llvmlite names no such type)."""

    intrinsic_name = "bf16"

    def __str__(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat)

    def __hash__(self):
        return hash("bfloat")


def host_has_avx512_bf16():
    """Whether the CPU that Numba compiles for runs ``vdpbf16ps`` on zmm registers."""
    features = llvm.get_host_cpu_features()
    return bool(features.get("avx512bf16")) and bool(features.get("avx512f"))


@njit(cache=True, inline="always")
def tile_cols(itemsize):
    """NR, the columns of the register tile, for elements of ``itemsize`` bytes (the
    bf16 kernel's output is float32: 32 columns)."""
    return NVEC * VECTOR_BYTES // itemsize


def _as_i64(builder, value):
    return builder.sext(value, _I64) if value.type.width < 64 else value


def _tile_loop(context, builder, signature, args, acc_type, step):
    """Emit ``for p < kc: accs = step(pa, pb, accs)`` and the store of the accumulators
    into ``c`` (added when beta).  ``step`` loads from the current A and B pointers and
    returns the new accumulators; A advances ``a_step`` and B ``b_stride`` elements."""
    ap_v, a_off_v, bp_v, b_off_v, b_stride_v, kc_v, c_v, c_off_v, ldc_v, beta_v = args
    a_ty, b_ty, c_ty = signature.args[0], signature.args[2], signature.args[6]
    a_data = context.make_array(a_ty)(context, builder, ap_v).data
    b_data = context.make_array(b_ty)(context, builder, bp_v).data
    c_data = context.make_array(c_ty)(context, builder, c_v).data
    c_size = context.get_abi_sizeof(context.get_data_type(c_ty.dtype))
    kc_v = _as_i64(builder, kc_v)
    a0 = builder.gep(a_data, [_as_i64(builder, a_off_v)])
    b0 = builder.gep(b_data, [_as_i64(builder, b_off_v)])
    pre = builder.basic_block
    loop = builder.append_basic_block("tile.loop")
    done = builder.append_basic_block("tile.done")
    builder.branch(loop)

    builder.position_at_end(loop)
    p = builder.phi(_I64)
    pa = builder.phi(a0.type)
    pb = builder.phi(b0.type)
    accs = [builder.phi(acc_type) for _ in range(MR * NVEC)]
    p.add_incoming(ir.Constant(_I64, 0), pre)
    pa.add_incoming(a0, pre)
    pb.add_incoming(b0, pre)
    for acc in accs:
        acc.add_incoming(ir.Constant(acc_type, None), pre)
    new = step(builder, pa, pb, accs)
    p_next = builder.add(p, ir.Constant(_I64, 1))
    end = builder.basic_block
    p.add_incoming(p_next, end)
    pa.add_incoming(builder.gep(pa, [ir.Constant(_I64, MR)]), end)
    pb.add_incoming(builder.gep(pb, [_as_i64(builder, b_stride_v)]), end)
    for acc, value in zip(accs, new):
        acc.add_incoming(value, end)
    builder.cbranch(builder.icmp_signed("<", p_next, kc_v), loop, done)

    builder.position_at_end(done)
    c0 = builder.gep(c_data, [_as_i64(builder, c_off_v)])
    ldc_v = _as_i64(builder, ldc_v)
    lanes = acc_type.count
    vec_ptr = acc_type.as_pointer()
    ptrs = []
    for i in range(MR):
        row = builder.gep(c0, [builder.mul(ldc_v, ir.Constant(_I64, i))])
        ptrs.append([builder.bitcast(builder.gep(row, [ir.Constant(_I64, j * lanes)]), vec_ptr)
                     for j in range(NVEC)])
    add = builder.append_basic_block("tile.add")
    store = builder.append_basic_block("tile.store")
    exit_block = builder.append_basic_block("tile.exit")
    builder.cbranch(builder.icmp_unsigned("!=", beta_v, ir.Constant(beta_v.type, 0)), add, store)
    builder.position_at_end(add)
    for i in range(MR):
        for j in range(NVEC):
            total = builder.fadd(builder.load(ptrs[i][j], align=c_size), new[i * NVEC + j])
            builder.store(total, ptrs[i][j], align=c_size)
    builder.branch(exit_block)
    builder.position_at_end(store)
    for i in range(MR):
        for j in range(NVEC):
            builder.store(new[i * NVEC + j], ptrs[i][j], align=c_size)
    builder.branch(exit_block)
    builder.position_at_end(exit_block)
    return context.get_dummy_value()


def _splat(builder, scalar, vec_type):
    lanes = vec_type.count
    one = builder.insert_element(ir.Constant(vec_type, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vec_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


@intrinsic
def fma_tile(typingctx, ap, a_off, bp, b_off, b_stride, kc, c, c_off, ldc, beta):
    """``c[c_off + i*ldc + j] (+)= sum_p ap[a_off + p*MR + i] * bp[b_off + p*b_stride + j]``
    for i < MR, j < NR, in the arrays' float type (float32 or float64).

    ap: packed A, MR values per step p; bp: B rows NR wide, ``b_stride`` apart (NR for a
    packed panel, the row length for a contiguous B read in place); kc >= 1 steps; c:
    a C-contiguous array (the output or an MR x NR tile buffer) written at row stride
    ``ldc``, overwritten when ``beta`` is false and added to when true.
    """
    sig = types.void(ap, a_off, bp, b_off, b_stride, kc, c, c_off, ldc, beta)

    def codegen(context, builder, signature, args):
        elt = context.get_data_type(signature.args[0].dtype)
        size = context.get_abi_sizeof(elt)
        lanes = VECTOR_BYTES // size
        vec = ir.VectorType(elt, lanes)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]),
            "llvm.fma.v%d%s" % (lanes, "f32" if size == 4 else "f64"),
        )

        def step(builder, pa, pb, accs):
            b_vecs = [builder.load(builder.bitcast(builder.gep(pb, [ir.Constant(_I64, j * lanes)]),
                                                   vec.as_pointer()), align=size)
                      for j in range(NVEC)]
            new = []
            for i in range(MR):
                a_vec = _splat(builder, builder.load(builder.gep(pa, [ir.Constant(_I64, i)])), vec)
                for j in range(NVEC):
                    new.append(builder.call(fma, [a_vec, b_vecs[j], accs[i * NVEC + j]]))
            return new

        return _tile_loop(context, builder, signature, args, vec, step)

    return sig, codegen


def _bf16_pair_dot(builder, native):
    """A function ``(acc <16 x float>, a <16 x i32>, b <16 x i32>) -> acc + a.lo*b.lo +
    a.hi*b.hi`` per lane, where each i32 holds two bfloat16 (low half: the even k)."""
    f32x16 = ir.VectorType(ir.FloatType(), F32_LANES)
    i32x16 = ir.VectorType(_I32, F32_LANES)
    if native:
        bf16x32 = ir.VectorType(_BFloat(), 2 * F32_LANES)
        dot = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(f32x16, [f32x16, bf16x32, bf16x32]),
            "llvm.x86.avx512bf16.dpbf16ps.512",
        )

        def pair_dot(acc, a, b):
            return builder.call(dot, [acc, builder.bitcast(a, bf16x32), builder.bitcast(b, bf16x32)])

        return pair_dot
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(f32x16, [f32x16, f32x16, f32x16]), "llvm.fma.v16f32")
    high = ir.Constant(i32x16, [-65536] * F32_LANES)  # 0xFFFF0000
    sixteen = ir.Constant(i32x16, [16] * F32_LANES)

    def pair_dot(acc, a, b):
        # a bfloat16 is the top half of a float32: widening is a shift or a mask
        a_even = builder.bitcast(builder.shl(a, sixteen), f32x16)
        b_even = builder.bitcast(builder.shl(b, sixteen), f32x16)
        a_odd = builder.bitcast(builder.and_(a, high), f32x16)
        b_odd = builder.bitcast(builder.and_(b, high), f32x16)
        return builder.call(fma, [a_odd, b_odd, builder.call(fma, [a_even, b_even, acc])])

    return pair_dot


@intrinsic
def bf16_tile(typingctx, ap, a_off, bp, b_off, b_stride, kc2, c, c_off, ldc, beta):
    """``c[c_off + i*ldc + j] (+)= sum_q dot(ap[a_off + q*MR + i], bp[b_off + q*b_stride + j])``
    for i < MR, j < 32, where each uint32 of ``ap`` / ``bp`` holds two bfloat16 (K
    steps 2q and 2q+1) and ``dot`` multiplies the pairs and adds both products in
    float32.  ``c`` is float32; kc2 >= 1 pair steps; other arguments as ``fma_tile``.
    """
    sig = types.void(ap, a_off, bp, b_off, b_stride, kc2, c, c_off, ldc, beta)

    def codegen(context, builder, signature, args):
        f32x16 = ir.VectorType(ir.FloatType(), F32_LANES)
        i32x16 = ir.VectorType(_I32, F32_LANES)
        pair_dot = _bf16_pair_dot(builder, host_has_avx512_bf16())

        def step(builder, pa, pb, accs):
            b_vecs = [builder.load(builder.bitcast(builder.gep(pb, [ir.Constant(_I64, j * F32_LANES)]),
                                                   i32x16.as_pointer()), align=4)
                      for j in range(NVEC)]
            new = []
            for i in range(MR):
                a_vec = _splat(builder, builder.load(builder.gep(pa, [ir.Constant(_I64, i)])), i32x16)
                for j in range(NVEC):
                    new.append(pair_dot(accs[i * NVEC + j], a_vec, b_vecs[j]))
            return new

        return _tile_loop(context, builder, signature, args, f32x16, step)

    return sig, codegen


@intrinsic
def peak_loop(typingctx, steps, kind):
    """Run ``steps`` iterations of 24 independent register-only updates (kind 0: float32
    FMA on 16 lanes, 32 FLOP each; kind 1: ``vdpbf16ps``, 64 FLOP each) and return a
    sum of the accumulators (so the loop is not removed).  ``kind`` must be a literal."""
    if not isinstance(kind, types.IntegerLiteral):
        return None
    kind_value = kind.literal_value
    sig = types.float32(steps, kind)

    def codegen(context, builder, signature, args):
        f32x16 = ir.VectorType(ir.FloatType(), F32_LANES)
        i32x16 = ir.VectorType(_I32, F32_LANES)
        steps_v = _as_i64(builder, args[0])
        if kind_value == 0:
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(f32x16, [f32x16] * 3), "llvm.fma.v16f32")
            x = ir.Constant(f32x16, [1.0000001] * F32_LANES)
            y = ir.Constant(f32x16, [0.9999999] * F32_LANES)

            def update(acc):
                return builder.call(fma, [acc, x, y])
        else:
            pair_dot = _bf16_pair_dot(builder, host_has_avx512_bf16())
            x = ir.Constant(i32x16, [0x3F803F80] * F32_LANES)  # two bfloat16 ones

            def update(acc):
                return pair_dot(acc, x, x)
        pre = builder.basic_block
        loop = builder.append_basic_block("peak.loop")
        done = builder.append_basic_block("peak.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        p = builder.phi(_I64)
        accs = [builder.phi(f32x16) for _ in range(MR * NVEC)]
        p.add_incoming(ir.Constant(_I64, 0), pre)
        for acc in accs:
            acc.add_incoming(ir.Constant(f32x16, None), pre)
        new = [update(acc) for acc in accs]
        p_next = builder.add(p, ir.Constant(_I64, 1))
        p.add_incoming(p_next, loop)
        for acc, value in zip(accs, new):
            acc.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", p_next, steps_v), loop, done)
        builder.position_at_end(done)
        total = new[0]
        for value in new[1:]:
            total = builder.fadd(total, value)
        return builder.extract_element(total, ir.Constant(_I32, 0))

    return sig, codegen
