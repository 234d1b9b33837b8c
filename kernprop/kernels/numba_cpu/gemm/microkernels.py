"""The GEMM engine's micro-kernels: register tiles written in LLVM IR.

Numba exposes no vector type, and LLVM's SLP vectoriser does not turn an MR x NR tile of
scalar accumulators carried around a loop into vector registers (tried: it emitted 384
scalar ``vfmadd231ss``).  So each micro-kernel is a Numba ``intrinsic`` that builds the
loop itself: ``MR * NVEC`` vector accumulators held in registers as loop phis, one
broadcast of A and ``NVEC`` loads of B per step.  The tile is the instruction-set row's
(``kernprop.isa``): avx512 12 x 2 zmm (24 accumulators + 2 B vectors + 1 broadcast of
the 32 zmm registers), avx2 6 x 2 ymm (12 + 2 + 1 of 16), neon 8 x 3 q registers (24 +
3 + 1 of 32), generic 6 x 2 xmm.

Kernels (MR x NR: the row's tile, e.g. 12 x 32 float32 / 12 x 16 float64 on AVX-512):
  1. ``fma_tile``: ``llvm.fma`` on <VL x float|double>; ``inspect_asm`` shows the loop
     unrolled into ``vfmadd231ps ... zmm`` (float64: ``vfmadd231pd``).
  2. ``bf16_tile``: ``llvm.x86.avx512bf16.dpbf16ps.512``: one step multiplies a pair of
     K (two bfloat16 values in one 32-bit word: a row's (k, k+1) of A broadcast, the
     (k, k+1) of 16 columns of B per vector) and adds both products to float32 lanes.
     Where the CPU has no AVX512_BF16 the same IR is emitted with the pairs widened to
     float32 and two FMAs (exact products, slower; never selected for speed, see
     ``selection``), so the module compiles on every x86-64.
  3. ``amx_tile``: AMX-BF16 (``tdpbf16ps``), a 32 x 32 float32 block from four 16 x 16
     C tiles, two A tiles (16 rows x 32 bf16, row-major panels) and two B tiles (16 pair
     rows x 16 columns: the halves of the bf16 kernel's 32-column pair panels), one tile
     load per ``tdpbf16ps`` (the 2x2 blocking of oneDNN's brgemm and libxsmm).  Emitted
     only where the CPU has AMX-TILE and AMX-BF16 (elsewhere the intrinsic is empty and
     the kernel is never selected: ``selection``); the process must first be granted the
     tile data state (``request_amx``).  ``emit_amx_block`` is also compiled for a
     Sapphire Rapids target by the tests, so the IR is checked on any machine.
Each kernel overwrites its output tile (``beta`` false) or adds to it (``beta`` true).

``peak_loop`` is a register-only loop of one kernel's instruction, for the benchmark's
measured peaks.
"""

from types import SimpleNamespace

from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ....isa import active_row

# The register tile of the instruction-set row this process runs (``kernprop.isa``: the
# CPU's own, or the KERNPROP_MAX_ISA cap).  Module constants, so Numba folds them into
# the compiled loops; the cache directory is keyed by the row (``kernels.numba_cpu.cache``),
# so a process under another cap never loads loops built for this one.
ROW = active_row()
MR = ROW.tile.mr
NVEC = ROW.tile.nvec
VECTOR_BYTES = ROW.tile.vector_bytes
# float32 lanes of one vector: the columns of one bf16 B vector (pairs of bfloat16).
F32_LANES = VECTOR_BYTES // 4
# Whether the row's CPUs fuse multiply-adds: without FMA (the generic row) ``llvm.fma``
# would become a libm call per element, so the generic kernel asks for ``fmuladd``,
# which LLVM fuses only where the target has FMA.
FMA_INTRINSIC = "llvm.fma" if ROW.fused_multiply_add else "llvm.fmuladd"
# Whether ``vdpbf16ps`` runs: the CPU has it and the row allows it.
NATIVE_BF16 = "vdpbf16ps" in ROW.bf16_kernels

# AMX: rows of an A panel / C block, and K pairs of one tile (64 bytes a row).
AMX_ROWS = 32
AMX_PAIRS = 16

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_I8 = ir.IntType(8)


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
    """Whether ``vdpbf16ps`` runs here: the CPU has AVX512_BF16 and the row allows it."""
    return "vdpbf16ps" in ROW.bf16_kernels


def host_has_amx_bf16():
    """Whether the AMX-BF16 tiles run here: the CPU has AMX-TILE and AMX-BF16 and the row
    allows them."""
    return "amx" in ROW.bf16_kernels


_AMX_GRANTED = []


def request_amx():
    """Ask Linux for the AMX tile data state (once per process); True when granted.
    Without it the first tile instruction kills the process with SIGILL."""
    if not _AMX_GRANTED:
        granted = False
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            # arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
            granted = libc.syscall(158, 0x1023, 18) == 0
        except (OSError, AttributeError):
            granted = False
        _AMX_GRANTED.append(granted)
    return _AMX_GRANTED[0]


@njit(cache=True, inline="always")
def tile_cols(itemsize):
    """NR, the columns of the register tile, for elements of ``itemsize`` bytes (the
    bf16 kernel's output is float32: 32 columns)."""
    return NVEC * VECTOR_BYTES // itemsize


def _as_i64(builder, value):
    return builder.sext(value, _I64) if value.type.width < 64 else value


def _element_ptr(context, builder, array_type, array, offset):
    # the address of element ``offset`` of a Numba array argument
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [_as_i64(builder, offset)])


def _tile_loop(context, builder, signature, args, acc_type, step):
    """The Numba side of a micro-kernel: the element pointers of its array arguments,
    then ``emit_tile_loop`` with the row's tile."""
    ap_v, a_off_v, bp_v, b_off_v, b_stride_v, kc_v, c_v, c_off_v, ldc_v, beta_v = args
    a_ty, b_ty, c_ty = signature.args[0], signature.args[2], signature.args[6]
    c_size = context.get_abi_sizeof(context.get_data_type(c_ty.dtype))
    emit_tile_loop(builder, _element_ptr(context, builder, a_ty, ap_v, a_off_v),
                   _element_ptr(context, builder, b_ty, bp_v, b_off_v), _as_i64(builder, b_stride_v),
                   _as_i64(builder, kc_v), _element_ptr(context, builder, c_ty, c_v, c_off_v),
                   _as_i64(builder, ldc_v), builder.icmp_unsigned("!=", beta_v, ir.Constant(beta_v.type, 0)),
                   acc_type, c_size, step, MR, NVEC)
    return context.get_dummy_value()


def emit_tile_loop(builder, a0, b0, b_stride, kc, c0, ldc, beta, acc_type, c_size, step, mr, nvec):
    """Emit ``for p < kc: accs = step(pa, pb, accs)`` over ``mr * nvec`` accumulators of
    ``acc_type``, then their store into C at ``c0`` (rows ``ldc`` elements apart), added
    to C when the i1 ``beta`` is set.  ``step`` loads from the current A and B pointers
    and returns the new accumulators; A advances ``mr`` elements a step and B
    ``b_stride``.  Pointers are element pointers; lengths i64."""
    pre = builder.basic_block
    loop = builder.append_basic_block("tile.loop")
    done = builder.append_basic_block("tile.done")
    builder.branch(loop)

    builder.position_at_end(loop)
    p = builder.phi(_I64)
    pa = builder.phi(a0.type)
    pb = builder.phi(b0.type)
    accs = [builder.phi(acc_type) for _ in range(mr * nvec)]
    p.add_incoming(ir.Constant(_I64, 0), pre)
    pa.add_incoming(a0, pre)
    pb.add_incoming(b0, pre)
    for acc in accs:
        acc.add_incoming(ir.Constant(acc_type, None), pre)
    new = step(builder, pa, pb, accs)
    p_next = builder.add(p, ir.Constant(_I64, 1))
    end = builder.basic_block
    p.add_incoming(p_next, end)
    pa.add_incoming(builder.gep(pa, [ir.Constant(_I64, mr)]), end)
    pb.add_incoming(builder.gep(pb, [b_stride]), end)
    for acc, value in zip(accs, new):
        acc.add_incoming(value, end)
    builder.cbranch(builder.icmp_signed("<", p_next, kc), loop, done)

    builder.position_at_end(done)
    lanes = acc_type.count
    vec_ptr = acc_type.as_pointer()
    ptrs = []
    for i in range(mr):
        row = builder.gep(c0, [builder.mul(ldc, ir.Constant(_I64, i))])
        ptrs.append([builder.bitcast(builder.gep(row, [ir.Constant(_I64, j * lanes)]), vec_ptr)
                     for j in range(nvec)])
    add = builder.append_basic_block("tile.add")
    store = builder.append_basic_block("tile.store")
    exit_block = builder.append_basic_block("tile.exit")
    builder.cbranch(beta, add, store)
    builder.position_at_end(add)
    for i in range(mr):
        for j in range(nvec):
            total = builder.fadd(builder.load(ptrs[i][j], align=c_size), new[i * nvec + j])
            builder.store(total, ptrs[i][j], align=c_size)
    builder.branch(exit_block)
    builder.position_at_end(store)
    for i in range(mr):
        for j in range(nvec):
            builder.store(new[i * nvec + j], ptrs[i][j], align=c_size)
    builder.branch(exit_block)
    builder.position_at_end(exit_block)


def _splat(builder, scalar, vec_type):
    lanes = vec_type.count
    one = builder.insert_element(ir.Constant(vec_type, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vec_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


def fma_step(builder, elt, tile, fused=True):
    """The step of the float kernel of ``tile`` on ``elt`` (an LLVM float or double):
    ``nvec`` loads of B, then per row a broadcast of A and ``nvec`` multiply-adds."""
    size = 4 if isinstance(elt, ir.FloatType) else 8
    lanes = tile.vector_bytes // size
    vec = ir.VectorType(elt, lanes)
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec, vec, vec]),
        "%s.v%d%s" % ("llvm.fma" if fused else "llvm.fmuladd", lanes, "f32" if size == 4 else "f64"),
    )

    def step(builder, pa, pb, accs):
        b_vecs = [builder.load(builder.bitcast(builder.gep(pb, [ir.Constant(_I64, j * lanes)]),
                                               vec.as_pointer()), align=size)
                  for j in range(tile.nvec)]
        new = []
        for i in range(tile.mr):
            a_vec = _splat(builder, builder.load(builder.gep(pa, [ir.Constant(_I64, i)])), vec)
            for j in range(tile.nvec):
                new.append(builder.call(fma, [a_vec, b_vecs[j], accs[i * tile.nvec + j]]))
        return new

    return vec, step


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
        vec, step = fma_step(builder, elt, ROW.tile, ROW.fused_multiply_add)
        return _tile_loop(context, builder, signature, args, vec, step)

    return sig, codegen


def _tile_module(row, double=False):
    # an LLVM module of one function, the row's float micro-kernel:
    # tile(a*, b*, b_stride, kc, c*, ldc, beta) -- the loop fma_tile emits inside Numba
    module = ir.Module(name=f"tile_{row.name}")
    elt = ir.DoubleType() if double else ir.FloatType()
    ptr = elt.as_pointer()
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, ptr, _I64, _I64, ptr, _I64, _I8]),
                           name="tile")
    builder = ir.IRBuilder(function.append_basic_block("entry"))
    a, b, b_stride, kc, c, ldc, beta = function.args
    vec, step = fma_step(builder, elt, row.tile, row.fused_multiply_add)
    emit_tile_loop(builder, a, b, b_stride, kc, c, ldc, builder.trunc(beta, ir.IntType(1)), vec,
                   8 if double else 4, step, row.tile.mr, row.tile.nvec)
    builder.ret_void()
    return module


# LLVM target of each instruction-set row's CPUs, for ``compile_tile_for``
TARGET_FEATURES = {
    "generic": ("x86_64-unknown-linux-gnu", ""),
    "avx2": ("x86_64-unknown-linux-gnu", "+avx2,+fma"),
    "avx512": ("x86_64-unknown-linux-gnu", "+avx512f,+fma"),
    "avx512_bf16": ("x86_64-unknown-linux-gnu", "+avx512f,+fma,+avx512bf16"),
    "amx": ("x86_64-unknown-linux-gnu", "+avx512f,+fma,+avx512bf16,+amx-tile,+amx-bf16"),
    "neon": ("aarch64-unknown-linux-gnu", "+neon"),
}


def compile_tile_for(row, cpu, double=False):
    """Assembly of ``row``'s float micro-kernel (float64 when ``double``) compiled by
    llvmlite for ``cpu`` (``haswell``, ``znver4``, ``neoverse-n1``, ...): how the tile
    compiles on a CPU this machine may not have."""
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    triple, features = TARGET_FEATURES[row.name]
    module = _tile_module(row, double)
    module.triple = triple
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    machine = llvm.Target.from_triple(triple).create_target_machine(cpu=cpu, features=features, opt=3)
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    pass_builder = llvm.create_pass_builder(machine, options)
    pass_builder.getModulePassManager().run(parsed, pass_builder)
    return machine.emit_assembly(parsed)


def _bf16_pair_dot(builder, native):
    """A function ``(acc <L x float>, a <L x i32>, b <L x i32>) -> acc + a.lo*b.lo +
    a.hi*b.hi`` per lane (L = F32_LANES), where each i32 holds two bfloat16 (low half:
    the even k)."""
    f32xl = ir.VectorType(ir.FloatType(), F32_LANES)
    i32xl = ir.VectorType(_I32, F32_LANES)
    if native:
        bf16x2l = ir.VectorType(_BFloat(), 2 * F32_LANES)
        dot = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(f32xl, [f32xl, bf16x2l, bf16x2l]),
            "llvm.x86.avx512bf16.dpbf16ps.512",
        )

        def pair_dot(acc, a, b):
            return builder.call(dot, [acc, builder.bitcast(a, bf16x2l), builder.bitcast(b, bf16x2l)])

        return pair_dot
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(f32xl, [f32xl, f32xl, f32xl]), "%s.v%df32" % (FMA_INTRINSIC, F32_LANES))
    high = ir.Constant(i32xl, [-65536] * F32_LANES)  # 0xFFFF0000
    sixteen = ir.Constant(i32xl, [16] * F32_LANES)

    def pair_dot(acc, a, b):
        # a bfloat16 is the top half of a float32: widening is a shift or a mask
        a_even = builder.bitcast(builder.shl(a, sixteen), f32xl)
        b_even = builder.bitcast(builder.shl(b, sixteen), f32xl)
        a_odd = builder.bitcast(builder.and_(a, high), f32xl)
        b_odd = builder.bitcast(builder.and_(b, high), f32xl)
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
        f32xl = ir.VectorType(ir.FloatType(), F32_LANES)
        i32xl = ir.VectorType(_I32, F32_LANES)
        pair_dot = _bf16_pair_dot(builder, host_has_avx512_bf16())

        def step(builder, pa, pb, accs):
            b_vecs = [builder.load(builder.bitcast(builder.gep(pb, [ir.Constant(_I64, j * F32_LANES)]),
                                                   i32xl.as_pointer()), align=4)
                      for j in range(NVEC)]
            new = []
            for i in range(MR):
                a_vec = _splat(builder, builder.load(builder.gep(pa, [ir.Constant(_I64, i)])), i32xl)
                for j in range(NVEC):
                    new.append(pair_dot(accs[i * NVEC + j], a_vec, b_vecs[j]))
            return new

        return _tile_loop(context, builder, signature, args, f32xl, step)

    return sig, codegen


@intrinsic
def peak_loop(typingctx, steps, kind):
    """Run ``steps`` iterations of MR * NVEC independent register-only updates (kind 0:
    float32 FMA on F32_LANES lanes; kind 1: ``vdpbf16ps``, twice the FLOP) and return a
    sum of the accumulators (so the loop is not removed); kind 2: ``steps`` x 4 AMX
    ``tdpbf16ps`` on zeroed tiles (16384 FLOP each; returns 0, and does nothing where
    the CPU has no AMX).  ``kind`` must be a literal."""
    if not isinstance(kind, types.IntegerLiteral):
        return None
    kind_value = kind.literal_value
    sig = types.float32(steps, kind)

    def codegen(context, builder, signature, args):
        f32xl = ir.VectorType(ir.FloatType(), F32_LANES)
        i32xl = ir.VectorType(_I32, F32_LANES)
        steps_v = _as_i64(builder, args[0])
        if kind_value == 2:
            if host_has_amx_bf16():
                _amx_peak(builder, steps_v)
            return ir.Constant(ir.FloatType(), 0.0)
        if kind_value == 0:
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(f32xl, [f32xl] * 3), "%s.v%df32" % (FMA_INTRINSIC, F32_LANES))
            x = ir.Constant(f32xl, [1.0000001] * F32_LANES)
            y = ir.Constant(f32xl, [0.9999999] * F32_LANES)

            def update(acc):
                return builder.call(fma, [acc, x, y])
        else:
            pair_dot = _bf16_pair_dot(builder, host_has_avx512_bf16())
            x = ir.Constant(i32xl, [0x3F803F80] * F32_LANES)  # two bfloat16 ones

            def update(acc):
                return pair_dot(acc, x, x)
        pre = builder.basic_block
        loop = builder.append_basic_block("peak.loop")
        done = builder.append_basic_block("peak.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        p = builder.phi(_I64)
        accs = [builder.phi(f32xl) for _ in range(MR * NVEC)]
        p.add_incoming(ir.Constant(_I64, 0), pre)
        for number, acc in enumerate(accs):
            # distinct starting values: identical chains would be merged by LLVM into one,
            # and the "peak" would count work the loop no longer does
            acc.add_incoming(ir.Constant(f32xl, [float(number)] * F32_LANES), pre)
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


# --- AMX ---------------------------------------------------------------------------------
# Tiles: 0-3 the C block (rows 0-15 / 16-31 x columns 0-15 / 16-31), 4-5 the A tiles
# (rows 0-15 / 16-31), 6-7 the B tiles (columns 0-15 / 16-31).  Every tile is 16 rows
# of 64 bytes.


def _amx_functions(module):
    void, ptr = ir.VoidType(), ir.PointerType(_I8)

    def declare(name, args):
        return cgutils.get_or_insert_function(module, ir.FunctionType(void, args), name)

    return SimpleNamespace(
        config=declare("llvm.x86.ldtilecfg", [ptr]),
        load=declare("llvm.x86.tileloadd64", [_I8, ptr, _I64]),
        store=declare("llvm.x86.tilestored64", [_I8, ptr, _I64]),
        zero=declare("llvm.x86.tilezero", [_I8]),
        dot=declare("llvm.x86.tdpbf16ps", [_I8, _I8, _I8]),
    )


def _tile_config(builder):
    # the 64-byte palette-1 configuration of tiles 0-7: 16 rows of 64 bytes each
    config = cgutils.alloca_once(builder, ir.ArrayType(_I8, 64))
    raw = builder.bitcast(config, ir.PointerType(_I8))
    values = [0] * 64
    values[0] = 1  # palette 1
    for tile in range(8):
        values[16 + 2 * tile] = 64  # bytes per row (little-endian u16)
        values[48 + tile] = 16  # rows
    builder.store(ir.Constant(ir.ArrayType(_I8, 64), bytearray(values)), config)
    return raw


def emit_amx_block(builder, a_ptr, a_stride, b_ptr, chunks, c_ptr, ldc, beta):
    """Emit C (32 x 32 float32 at ``c_ptr``, rows ``ldc`` bytes apart) (+)= A @ B over
    ``chunks`` K tiles: A rows ``a_stride`` bytes apart (32 pairs... 16 pair words a
    tile), B rows of 32 pair words (128 bytes), 16 rows a chunk.  Pointers are i8*;
    lengths i64; ``beta`` an i1."""
    amx = _amx_functions(builder.module)
    tile = lambda number: ir.Constant(_I8, number)  # noqa: E731
    offset = lambda ptr, nbytes: builder.gep(ptr, [nbytes])  # noqa: E731
    const = lambda value: ir.Constant(_I64, value)  # noqa: E731
    builder.call(amx.config, [_tile_config(builder)])
    c_rows16 = builder.mul(ldc, const(16))
    c_parts = [c_ptr, offset(c_ptr, const(64)), offset(c_ptr, c_rows16),
               offset(offset(c_ptr, c_rows16), const(64))]
    with builder.if_else(beta) as (then, otherwise):
        with then:
            for number, ptr in enumerate(c_parts):
                builder.call(amx.load, [tile(number), ptr, ldc])
        with otherwise:
            for number in range(4):
                builder.call(amx.zero, [tile(number)])
    pre = builder.basic_block
    loop = builder.append_basic_block("amx.loop")
    done = builder.append_basic_block("amx.done")
    builder.cbranch(builder.icmp_signed(">", chunks, const(0)), loop, done)
    builder.position_at_end(loop)
    chunk = builder.phi(_I64)
    chunk.add_incoming(const(0), pre)
    a0 = offset(a_ptr, builder.mul(chunk, const(64)))
    a1 = offset(a0, builder.mul(a_stride, const(16)))
    b0 = offset(b_ptr, builder.mul(chunk, const(16 * 128)))
    b1 = offset(b0, const(64))
    builder.call(amx.load, [tile(4), a0, a_stride])
    builder.call(amx.load, [tile(5), a1, a_stride])
    builder.call(amx.load, [tile(6), b0, const(128)])
    builder.call(amx.load, [tile(7), b1, const(128)])
    for c_tile, a_tile, b_tile in ((0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7)):
        builder.call(amx.dot, [tile(c_tile), tile(a_tile), tile(b_tile)])
    following = builder.add(chunk, const(1))
    chunk.add_incoming(following, builder.basic_block)
    builder.cbranch(builder.icmp_signed("<", following, chunks), loop, done)
    builder.position_at_end(done)
    for number, ptr in enumerate(c_parts):
        builder.call(amx.store, [tile(number), ptr, ldc])


def _amx_peak(builder, steps):
    amx = _amx_functions(builder.module)
    tile = lambda number: ir.Constant(_I8, number)  # noqa: E731
    builder.call(amx.config, [_tile_config(builder)])
    for number in range(8):
        builder.call(amx.zero, [tile(number)])
    pre = builder.basic_block
    loop = builder.append_basic_block("amx.peak")
    done = builder.append_basic_block("amx.peak.done")
    builder.branch(loop)
    builder.position_at_end(loop)
    count = builder.phi(_I64)
    count.add_incoming(ir.Constant(_I64, 0), pre)
    for c_tile, a_tile, b_tile in ((0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7)):
        builder.call(amx.dot, [tile(c_tile), tile(a_tile), tile(b_tile)])
    following = builder.add(count, ir.Constant(_I64, 1))
    count.add_incoming(following, loop)
    builder.cbranch(builder.icmp_signed("<", following, steps), loop, done)
    builder.position_at_end(done)


@intrinsic
def amx_tile(typingctx, ap, a_off, bp, b_off, b_stride, steps, c, c_off, ldc, beta):
    """``c[c_off + i*ldc + j] (+)= sum_q dot(ap[a_off + i*steps + q], bp[b_off + q*b_stride + j])``
    for i < 32, j < 32: int32 panels of bf16 pairs in the AMX layout (A row-major, its
    ``steps`` a multiple of 16; B as the bf16 kernel's, ``b_stride`` = 32), c float32."""
    sig = types.void(ap, a_off, bp, b_off, b_stride, steps, c, c_off, ldc, beta)

    def codegen(context, builder, signature, args):
        ap_v, a_off_v, bp_v, b_off_v, _, steps_v, c_v, c_off_v, ldc_v, beta_v = args
        if not host_has_amx_bf16():
            return context.get_dummy_value()  # never selected here (selection checks)
        a_ty, b_ty, c_ty = signature.args[0], signature.args[2], signature.args[6]
        i8p = ir.PointerType(_I8)
        steps_v = _as_i64(builder, steps_v)
        a_ptr = builder.bitcast(_element_ptr(context, builder, a_ty, ap_v, a_off_v), i8p)
        b_ptr = builder.bitcast(_element_ptr(context, builder, b_ty, bp_v, b_off_v), i8p)
        c_ptr = builder.bitcast(_element_ptr(context, builder, c_ty, c_v, c_off_v), i8p)
        four = ir.Constant(_I64, 4)
        beta_bit = builder.icmp_unsigned("!=", beta_v, ir.Constant(beta_v.type, 0))
        emit_amx_block(builder, a_ptr, builder.mul(steps_v, four), b_ptr,
                       builder.sdiv(steps_v, ir.Constant(_I64, AMX_PAIRS)), c_ptr,
                       builder.mul(_as_i64(builder, ldc_v), four), beta_bit)
        return context.get_dummy_value()

    return sig, codegen


def compile_amx_for(cpu="sapphirerapids"):
    """Assembly of ``emit_amx_block`` compiled for ``cpu`` (AMX-BF16): checks that the
    AMX IR is valid on a machine that cannot run it."""
    llvm.initialize_all_targets()  # the x86 target on any machine (an ARM64 one too)
    llvm.initialize_all_asmprinters()
    module = ir.Module(name="amx_check")
    module.triple = "x86_64-unknown-linux-gnu"
    i8p = ir.PointerType(_I8)
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), [i8p, _I64, i8p, _I64, i8p, _I64, _I8]),
                           name="amx_block")
    builder = ir.IRBuilder(function.append_basic_block("entry"))
    a, a_stride, b, chunks, c, ldc, beta = function.args
    emit_amx_block(builder, a, a_stride, b, chunks, c, ldc, builder.trunc(beta, ir.IntType(1)))
    builder.ret_void()
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    target = llvm.Target.from_triple(module.triple)
    machine = target.create_target_machine(cpu=cpu, features="+amx-tile,+amx-bf16,+avx512f", opt=2)
    return machine.emit_assembly(parsed)
