"""Packing: operands copied into the micro-kernels' panel layouts, from any strides.

A K block of A becomes MR-row panels, one step of MR values per K step; a K block of B
becomes NR-column panels, one step of NR values per K step; rows and columns past the
edge are zeros, so edge tiles run the same micro-kernel.  The element type of the pack
buffer is the micro-kernel's: float32/float64 panels feed ``fma_tile``, uint32 panels
(two bfloat16 per word: K steps 2q and 2q+1) feed ``bf16_tile``.  ``pack_a_panel`` and
``pack_b_panel`` choose the layout from the buffer's dtype when Numba types the call.

The bf16 panels are converted while packing, with integer round to nearest even on the
float32 bits (a hardware conversion may flush subnormals; the reference rounds the same
way, ``kernels/reference/matmul.round_bf16``).  With ``terms = 3`` (precision bf16x3)
each K step becomes three virtual steps, ``hi*hi + hi*lo + lo*hi``: A contributes
(hi, hi, lo) and B (hi, lo, hi), where ``hi = bf16(x)`` and ``lo = bf16(x - hi)``; the
product is then one bf16 GEMM over 3K.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .._jit import ERROR_MODEL, FASTMATH
from .microkernels import AMX_PAIRS, AMX_ROWS, MR, tile_cols

_JIT = {"cache": True, "fastmath": FASTMATH, "error_model": ERROR_MODEL}

@intrinsic
def _float_bits(typingctx, x):
    # float32 -> its IEEE bits as uint32
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _bits_float(typingctx, u):
    # uint32 bits -> float32
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@njit(inline="always", **_JIT)
def bf16_bits(x):
    """The bfloat16 nearest to float32 ``x`` (ties to even), as the low 16 bits of a
    uint32.  A NaN stays a (quiet) NaN; subnormals are rounded, not flushed."""
    u = _float_bits(np.float32(x))
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    quiet_nan = (u >> np.uint32(16)) | np.uint32(0x40)
    # a select, not a branch, so that the packing loops vectorise
    return quiet_nan if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else rounded


@njit(inline="always", **_JIT)
def _term_bits(x, t, terms, b_role):
    # term t of x: hi = bf16(x), or for bf16x3 the residual lo = bf16(x - hi) where the
    # product hi*hi + hi*lo + lo*hi asks for it (A: hi, hi, lo; B: hi, lo, hi)
    hi = bf16_bits(x)
    if terms == 1 or t == 0 or (t == 1) != b_role:
        return hi
    return bf16_bits(np.float32(x) - _bits_float(hi << np.uint32(16)))


def pack_steps(kc, terms, pack):
    """Micro-kernel steps of a K block of ``kc``: K for float panels, pairs of bf16
    virtual steps for bf16 panels, padded to whole AMX tiles (16 pairs) for int32 ones."""


@njit(**_JIT)
def _pair_steps(kc, terms):
    # bf16 pairs of the kc * terms virtual K steps (the last one half zero when odd)
    return (kc * terms + 1) // 2


@njit(**_JIT)
def _amx_steps(kc, terms):
    # the pairs padded to whole AMX tiles
    return (_pair_steps(kc, terms) + AMX_PAIRS - 1) // AMX_PAIRS * AMX_PAIRS


@overload(pack_steps, jit_options=_JIT)
def _pack_steps(kc, terms, pack):
    if pack.dtype == types.uint32:
        return lambda kc, terms, pack: _pair_steps(kc, terms)
    if pack.dtype == types.int32:
        return lambda kc, terms, pack: _amx_steps(kc, terms)
    return lambda kc, terms, pack: kc


def steps_for(kc, terms, pack_dtype):
    """``pack_steps`` for Python callers sizing a pack buffer of ``pack_dtype``."""
    if pack_dtype == np.uint32:
        return _pair_steps(kc, terms)
    if pack_dtype == np.int32:
        return _amx_steps(kc, terms)
    return kc


def panel_rows(pack):
    """Rows of an A panel (and of the micro-kernel's tile) for this pack: 32 for AMX
    (int32) panels, MR otherwise."""


@overload(panel_rows, jit_options=_JIT)
def _panel_rows(pack):
    if pack.dtype == types.int32:
        return lambda pack: AMX_ROWS
    return lambda pack: MR


def pack_a_panel(a, k0, kc, ip, apack, terms):
    """a[ip*MR : ip*MR+MR, k0 : k0+kc] -> panel ip of ``apack`` (zero rows past M)."""


@overload(pack_a_panel, jit_options=_JIT)
def _pack_a_panel(a, k0, kc, ip, apack, terms):
    if apack.dtype == types.uint32:
        return _pack_a_panel_bf16
    if apack.dtype == types.int32:
        return _pack_a_panel_amx
    return _pack_a_panel_float


def _pack_a_panel_float(a, k0, kc, ip, apack, terms):
    m = a.shape[0]
    i0 = ip * MR
    mr = min(MR, m - i0)
    dst = apack[ip * kc * MR:(ip + 1) * kc * MR]
    # element by element, each step written whole, for either layout of a: a slice of
    # the MR rows per K step (a[i0:i0+MR, p]) cost twice as much (one Zen 3 core,
    # 198x100 row-major 7.7 -> 3.6 us).  The K index is unsigned: a signed k0 + p is
    # checked for being negative on every read, which keeps LLVM from turning the
    # row-major case into vector loads of each row and an interleaved store (2x); a
    # view of the K block instead has run-time strides (the same 2x).
    first = np.uint64(k0)
    if mr == MR:
        for p in range(kc):
            column = first + np.uint64(p)
            for i in range(MR):
                dst[p * MR + i] = a[i0 + i, column]
        return
    for p in range(kc):
        column = first + np.uint64(p)
        for i in range(mr):
            dst[p * MR + i] = a[i0 + i, column]
        for i in range(mr, MR):
            dst[p * MR + i] = 0


def _pack_a_panel_bf16(a, k0, kc, ip, apack, terms):
    m = a.shape[0]
    i0 = ip * MR
    mr = min(MR, m - i0)
    virtual = kc * terms
    steps = (virtual + 1) // 2
    dst = apack[ip * steps * MR:(ip + 1) * steps * MR]
    if terms == 1 and mr == MR and a.strides[0] < a.strides[1]:
        # column-major (x.T in dW = x.T @ dy): two columns of MR rows make a step
        pairs = kc // 2
        for q in range(pairs):
            col0 = a[i0:i0 + MR, k0 + 2 * q]
            col1 = a[i0:i0 + MR, k0 + 2 * q + 1]
            out = dst[q * MR:(q + 1) * MR]
            for i in range(MR):
                out[i] = bf16_bits(col0[i]) | (bf16_bits(col1[i]) << np.uint32(16))
        if kc % 2:
            col0 = a[i0:i0 + MR, k0 + kc - 1]
            out = dst[pairs * MR:(pairs + 1) * MR]
            for i in range(MR):
                out[i] = bf16_bits(col0[i])
        return
    if terms == 1:
        # a row's K pairs are adjacent floats: read each row once, along K
        pairs = kc // 2
        for i in range(mr):
            row = a[i0 + i, k0:k0 + kc]
            for q in range(pairs):
                dst[q * MR + i] = bf16_bits(row[2 * q]) | (bf16_bits(row[2 * q + 1]) << np.uint32(16))
            if kc % 2:
                dst[pairs * MR + i] = bf16_bits(row[kc - 1])
        for q in range(steps):
            for i in range(mr, MR):
                dst[q * MR + i] = 0
        return
    for q in range(steps):
        v0 = 2 * q
        v1 = v0 + 1
        out = dst[q * MR:(q + 1) * MR]
        for i in range(mr):
            low = _term_bits(a[i0 + i, k0 + v0 // terms], v0 % terms, terms, False)
            high = np.uint32(0)
            if v1 < virtual:
                high = _term_bits(a[i0 + i, k0 + v1 // terms], v1 % terms, terms, False)
            out[i] = low | (high << np.uint32(16))
        for i in range(mr, MR):
            out[i] = 0


def _pack_a_panel_amx(a, k0, kc, ip, apack, terms):
    # AMX A tiles are row-major: row i of the panel holds its K pairs contiguously
    # (``steps`` of them, zero past K), rows ``steps`` words apart; zero rows past M
    m = a.shape[0]
    i0 = ip * AMX_ROWS
    mr = min(AMX_ROWS, m - i0)
    virtual = kc * terms
    steps = pack_steps(kc, terms, apack)
    dst = apack[ip * steps * AMX_ROWS:(ip + 1) * steps * AMX_ROWS]
    for i in range(AMX_ROWS):
        out = dst[i * steps:(i + 1) * steps]
        if i >= mr:
            out[:] = 0
            continue
        row = a[i0 + i, k0:k0 + kc]
        for q in range(steps):
            v0 = 2 * q
            v1 = v0 + 1
            low = np.uint32(0)
            high = np.uint32(0)
            if v0 < virtual:
                low = _term_bits(row[v0 // terms], v0 % terms, terms, False)
            if v1 < virtual:
                high = _term_bits(row[v1 // terms], v1 % terms, terms, False)
            out[q] = np.int32(low | (high << np.uint32(16)))


# K steps of a column-major panel packed at a time down its columns: NR columns' worth of
# panel lines (64 x 128 bytes) and of source stay in L1
_COLUMN_CHUNK = 64
# bytes between the columns of a column-major b from which its NR columns are packed that
# way, not a panel line at a time: NR lines 4 KB apart share one L1 set (a 256x2048 block
# of w.T, one Zen 3 core: 0.88 ms a line at a time, 0.45 ms down the columns; at 2 and
# 3 KB 0.33-0.35 ms a line at a time, 0.38-0.44 ms down the columns)
_COLUMN_STRIDE_LIMIT = 4096


def pack_b_panel(b, k0, kc, j0, jp, bpack, sums, want_sums, terms):
    """b[k0 : k0+kc, j0+jp*NR : +NR] -> panel jp of ``bpack`` (zero columns past N);
    ``sums[j] += `` the column sums of b (float64) when ``want_sums``."""


@overload(pack_b_panel, jit_options=_JIT)
def _pack_b_panel(b, k0, kc, j0, jp, bpack, sums, want_sums, terms):
    if bpack.dtype == types.uint32 or bpack.dtype == types.int32:
        # AMX B tiles read the same rows of pairs (16 columns of a 32-column panel each)
        return _pack_b_panel_bf16
    return _pack_b_panel_float


@njit(**_JIT)
def _column_sums_of_block(b, k0, kc, jj, nr, sums):
    part = sums[jj:jj + nr]
    for p in range(kc):
        row = b[k0 + p, jj:jj + nr]
        for j in range(nr):
            part[j] += row[j]


@njit(**_JIT)
def _zero_columns(dst, rows, nr, nr_full):
    # dst (rows, nr_full) flat: columns nr.. of a panel past B's last column become 0
    for p in range(rows):
        out = dst[p * nr_full:(p + 1) * nr_full]
        for j in range(nr, nr_full):
            out[j] = 0


def _pack_b_panel_float(b, k0, kc, j0, jp, bpack, sums, want_sums, terms):
    n = b.shape[1]
    nr_full = tile_cols(b.itemsize)
    jj = j0 + jp * nr_full
    nr = min(nr_full, n - jj)
    dst = bpack[jp * kc * nr_full:(jp + 1) * kc * nr_full]
    if b.strides[1] > b.strides[0] and b.strides[1] < _COLUMN_STRIDE_LIMIT:
        # column-major (a transposed view, as w.T in dx = dy @ w.T), its columns close
        # together: a panel line per K step, element by element, while the NR columns'
        # lines stay in L1 (one Zen 3 core, a 128x256 w.T: 29 -> 12 us against the
        # chunks below).  Indices from ranges into the block's view (an offset index is
        # checked for being negative on every read); a whole panel in a loop of
        # constant length (with nr: 3x slower).
        src = b[k0:k0 + kc, jj:jj + nr]
        if nr == nr_full:
            for p in range(kc):
                for j in range(nr_full):
                    dst[p * nr_full + j] = src[p, j]
        else:
            for p in range(kc):
                for j in range(nr):
                    dst[p * nr_full + j] = src[p, j]
    elif b.strides[1] > b.strides[0]:
        # column-major with columns far apart, whose NR lines would share an L1 set:
        # down each column, _COLUMN_CHUNK steps at a time, so that the panel lines being
        # written stay in L1 (the whole column at once wrote kc lines NR times: 1024x2048
        # block 1.3 -> 0.88 ms)
        for p0 in range(0, kc, _COLUMN_CHUNK):
            p1 = min(kc, p0 + _COLUMN_CHUNK)
            for j in range(nr):
                col = b[k0 + p0:k0 + p1, jj + j]
                for p in range(p1 - p0):
                    dst[(p0 + p) * nr_full + j] = col[p]
    else:
        # row slices: element by element the copy did not vectorise
        for p in range(kc):
            row = b[k0 + p, jj:jj + nr]
            out = dst[p * nr_full:p * nr_full + nr]
            for j in range(nr):
                out[j] = row[j]
    _zero_columns(dst, kc, nr, nr_full)
    if want_sums:
        _column_sums_of_block(b, k0, kc, jj, nr, sums)


def _pack_b_panel_bf16(b, k0, kc, j0, jp, bpack, sums, want_sums, terms):
    n = b.shape[1]
    nr_full = tile_cols(4)
    jj = j0 + jp * nr_full
    nr = min(nr_full, n - jj)
    virtual = kc * terms
    steps = pack_steps(kc, terms, bpack)
    dst = bpack[jp * steps * nr_full:(jp + 1) * steps * nr_full]
    used = (virtual + 1) // 2
    dst[used * nr_full:] = 0  # AMX pads K to whole tiles
    if terms == 1 and b.strides[0] < b.strides[1]:
        # column-major (w.T in dx = dy @ w.T): a column's K pairs are adjacent floats
        # (in chunks of K as the float path: slower here, 0.56 -> 1.4 ms for a 1024x2048
        # block, the short strided-pair loops vectorise worse than the whole column)
        pairs = kc // 2
        for j in range(nr):
            col = b[k0:k0 + kc, jj + j]
            for q in range(pairs):
                dst[q * nr_full + j] = bf16_bits(col[2 * q]) | (bf16_bits(col[2 * q + 1]) << np.uint32(16))
            if kc % 2:
                dst[pairs * nr_full + j] = bf16_bits(col[kc - 1])
        _zero_columns(dst, used, nr, nr_full)
        if want_sums:
            _column_sums_of_block(b, k0, kc, jj, nr, sums)
        return
    if terms == 1 and nr == nr_full and b.strides[1] == b.itemsize:
        # the common case, a whole panel of a row-major B: fixed-length rows, fully
        # unrolled into vector code (a 392x512 block: 0.11 -> 0.023 ms, as fast as float32)
        pairs = kc // 2
        for q in range(pairs):
            out = dst[q * nr_full:(q + 1) * nr_full]
            row0 = b[k0 + 2 * q, jj:jj + nr_full]
            row1 = b[k0 + 2 * q + 1, jj:jj + nr_full]
            for j in range(nr_full):
                out[j] = bf16_bits(row0[j]) | (bf16_bits(row1[j]) << np.uint32(16))
        if kc % 2:
            out = dst[pairs * nr_full:(pairs + 1) * nr_full]
            row0 = b[k0 + kc - 1, jj:jj + nr_full]
            for j in range(nr_full):
                out[j] = bf16_bits(row0[j])
        if want_sums:
            _column_sums_of_block(b, k0, kc, jj, nr, sums)
        return
    if terms == 1:
        # two rows of B become one row of pairs: vectorised along the columns
        for q in range(used):
            out = dst[q * nr_full:(q + 1) * nr_full]
            row0 = b[k0 + 2 * q, jj:jj + nr]
            if 2 * q + 1 < kc:
                row1 = b[k0 + 2 * q + 1, jj:jj + nr]
                for j in range(nr):
                    out[j] = bf16_bits(row0[j]) | (bf16_bits(row1[j]) << np.uint32(16))
            else:
                for j in range(nr):
                    out[j] = bf16_bits(row0[j])
            for j in range(nr, nr_full):
                out[j] = 0
        if want_sums:
            _column_sums_of_block(b, k0, kc, jj, nr, sums)
        return
    for q in range(used):
        v0 = 2 * q
        v1 = v0 + 1
        out = dst[q * nr_full:(q + 1) * nr_full]
        row0 = b[k0 + v0 // terms, jj:jj + nr]
        t0 = v0 % terms
        if v1 < virtual:
            row1 = b[k0 + v1 // terms, jj:jj + nr]
            t1 = v1 % terms
            for j in range(nr):
                out[j] = _term_bits(row0[j], t0, terms, True) | (_term_bits(row1[j], t1, terms, True) << np.uint32(16))
        else:
            for j in range(nr):
                out[j] = _term_bits(row0[j], t0, terms, True)
        for j in range(nr, nr_full):
            out[j] = 0
    if want_sums:
        _column_sums_of_block(b, k0, kc, jj, nr, sums)
