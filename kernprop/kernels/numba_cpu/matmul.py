"""Numba CPU GEMM and linear layer: a Goto/BLIS-style blocked GEMM.

    c (M, N) = act(a (M, K) @ b (K, N) + bias)      or      c += a @ b

Loops, outermost first (Goto & van de Geijn 2008; BLIS, Van Zee & van de Geijn 2015):
  jc over N in blocks of _NC columns   (Python)
    pc over K in blocks of about _KC   (Python; balanced: 784 = 3 x 262, not 3 x 256 + 16,
                                        each block being a pass over C)
      pack b[pc, jc] into NR-wide micro-panels, zero-padded     (_pack_b, prange)
      pack a[:, pc]  into MR-tall micro-panels, zero-padded     (_pack_a, prange)
      tasks = blocks of _MCP * MR rows x _NCP * NR columns of C (_macro, prange):
        ir over the task's MR panels: jr over its NR panels: micro-kernel
The micro-kernel (``_simd.micro_kernel``, LLVM IR) keeps an MR x NR tile in registers
across the whole kc loop; zero padding means edge tiles run the same code and only the
store of the tile is clipped.  Packing reads any strides, so transposed and sliced
operands are never copied whole.  A block of packed A (MC x KC = 144 x 384 floats,
216 KiB) stays in the 1 MiB L2 of this Zen 4, and an A micro-panel (KC x MR, 18 KiB) in
L1 while the task's B micro-panels stream past it.  KC = 192, 256, 384, 512 measured within 3% of each other on one
core (90-95 GFLOP/s at 1024^3 against OpenBLAS's 101); 384 was best.  The epilogue (accumulate / bias / activation) runs on each tile as it is
stored.  Small products (below _SERIAL_FLOPS), and every product when Numba runs one
thread, run the same loops in one serial kernel (``_gemm_serial``): a parallel launch
costs more than they do, and with one thread it only adds overhead.  Outputs narrower
than a tile go to ``serial_gemm.gemm_narrow``.

Variants:
  1. i-k-j over C tiles with an auto-vectorised inner loop (~35-42 GFLOP/s, replaced).
  2. packed GEMM with the LLVM-IR micro-kernel (this file).

``linear_backward`` sums the columns of dy (db) while packing dy for dW = x.T @ dy.
"""

import numpy as np
from numba import get_num_threads, njit, prange

from ._jit import FASTMATH, kernel, sized
from . import serial_gemm
from .serial_gemm import tile_product
from ._simd import MR, tile_cols
from .activations import ACTIVATION_CODES

_KC = 384        # depth of a packed block (K), tuned: see the module docstring
_NC = 4096       # columns of a packed B panel (it stays in L3)
_MCP = 12        # MR panels per task: MC = 144 rows of A per task
_NCP = 8         # NR panels per task
_SERIAL_FLOPS = 4_000_000


def _serial(function):
    return njit(cache=True, fastmath=FASTMATH)(function)


@_serial
def _pack_a_panel(a, k0, kc, ip, apack):
    # a[ip*MR : ip*MR+MR, k0 : k0+kc] -> apack[ip*kc*MR :] as (kc, MR), zero rows past M
    m = a.shape[0]
    i0 = ip * MR
    mr = min(MR, m - i0)
    dst = apack[ip * kc * MR : (ip + 1) * kc * MR]
    if a.strides[0] <= a.strides[1]:
        # column-major (a transposed view, as x.T in dW = x.T @ dy): read down columns
        for p in range(kc):
            col = a[i0 : i0 + mr, k0 + p]
            out = dst[p * MR : p * MR + mr]
            for i in range(mr):
                out[i] = col[i]
    else:
        for i in range(mr):
            row = a[i0 + i, k0 : k0 + kc]
            for p in range(kc):
                dst[p * MR + i] = row[p]
    for i in range(mr, MR):
        for p in range(kc):
            dst[p * MR + i] = 0


@_serial
def _pack_b_panel(b, k0, kc, j0, jp, bpack, sums, want_sums):
    # b[k0 : k0+kc, j0+jp*NR : +NR] -> bpack[jp*kc*NR :] as (kc, NR), zero columns past
    # the edge; sums[j] += column sums (float64) when want_sums.
    n = b.shape[1]
    nr_full = tile_cols(b.itemsize)
    jj = j0 + jp * nr_full
    nr = min(nr_full, n - jj)
    dst = bpack[jp * kc * nr_full : (jp + 1) * kc * nr_full]
    if b.strides[1] > b.strides[0]:
        # column-major (a transposed view, as w.T in dx = dy @ w.T): read down columns
        for j in range(nr):
            col = b[k0 : k0 + kc, jj + j]
            for p in range(kc):
                dst[p * nr_full + j] = col[p]
    else:
        for p in range(kc):
            row = b[k0 + p, jj : jj + nr]
            out = dst[p * nr_full : p * nr_full + nr]
            for j in range(nr):
                out[j] = row[j]
    if nr < nr_full:
        for p in range(kc):
            out = dst[p * nr_full : (p + 1) * nr_full]
            for j in range(nr, nr_full):
                out[j] = 0
    if want_sums:
        part = sums[jj : jj + nr]
        for p in range(kc):
            row = b[k0 + p, jj : jj + nr]
            for j in range(nr):
                part[j] += row[j]


@_serial
def _macro_block(apack, bpack, kc, c, j0, ip0, ip1, jp0, jp1, tile, beta, last, bias, has_bias,
                 activation):
    # One task: MR panels ip0:ip1 x NR panels jp0:jp1 of the packed B panel that starts
    # at column j0.  The A micro-panel (kc x MR, 18 KiB) stays in L1 across the task's
    # NR panels, which stream from L2 (measured: 1024^3 on 2 threads 175 -> 200 GFLOP/s
    # against the B-panel-outer order).
    m = c.shape[0]
    nc = min(c.shape[1] - j0, _NC)
    nr_full = tile_cols(c.itemsize)
    for ip in range(ip0, ip1):
        i0 = ip * MR
        for jp in range(jp0, jp1):
            jj = jp * nr_full
            nr = min(nr_full, nc - jj)
            tile_product(apack, ip * kc * MR, bpack, jp * kc * nr_full, nr_full, kc, c, i0, j0 + jj,
                  min(MR, m - i0), nr, beta, last, bias, has_bias, activation, tile)


@_serial
def _split(panels, per_block):
    # (blocks, panels per block): at most per_block each, as even as possible, so that
    # the static schedule of prange gives each thread the same work.
    blocks = (panels + per_block - 1) // per_block
    return blocks, (panels + blocks - 1) // blocks


@kernel
def _pack_a(a, k0, kc, apack):
    # a (M, K) any strides -> apack, all MR panels of columns k0:k0+kc
    for ip in prange((a.shape[0] + MR - 1) // MR):
        _pack_a_panel(a, k0, kc, ip, apack)


@kernel
def _pack_b(b, k0, kc, j0, nc, bpack, sums, want_sums):
    # b (K, N) any strides -> bpack, the NR panels of b[k0:k0+kc, j0:j0+nc]
    nr_full = tile_cols(b.itemsize)
    for jp in prange((nc + nr_full - 1) // nr_full):
        _pack_b_panel(b, k0, kc, j0, jp, bpack, sums, want_sums)


@kernel
def _macro(apack, bpack, kc, c, j0, beta, last, bias, has_bias, activation):
    # c (M, N) C-contiguous: the tasks of one packed (A block, B panel) pair, each task
    # owning its rectangle of C (no two threads write one element).
    m = c.shape[0]
    nc = min(c.shape[1] - j0, _NC)
    nr_full = tile_cols(c.itemsize)
    m_panels = (m + MR - 1) // MR
    n_panels = (nc + nr_full - 1) // nr_full
    m_blocks, m_per = _split(m_panels, _MCP)
    n_blocks, n_per = _split(n_panels, _NCP)
    for task in prange(m_blocks * n_blocks):
        tile = np.empty((MR, nr_full), dtype=c.dtype)
        ip0 = (task // n_blocks) * m_per
        jp0 = (task % n_blocks) * n_per
        _macro_block(apack, bpack, kc, c, j0, ip0, min(ip0 + m_per, m_panels), jp0,
                     min(jp0 + n_per, n_panels), tile, beta, last, bias, has_bias, activation)


@_serial
def _gemm_serial(a, b, c, beta, bias, has_bias, activation, apack, bpack, tile, sums, want_sums,
                 kc_block):
    # The whole GEMM on one thread, for products too small to pay for a parallel launch.
    # (Reading a contiguous B in place instead of packing it was tried: slower, 7.9 vs
    # 5.1 us for 32x64x128, its rows 512 bytes apart conflict in L1.)
    m, k = a.shape
    n = b.shape[1]
    nr_full = tile_cols(c.itemsize)
    m_panels = (m + MR - 1) // MR
    n_panels = (n + nr_full - 1) // nr_full
    for k0 in range(0, k, kc_block):
        kc = min(kc_block, k - k0)
        for ip in range(m_panels):
            _pack_a_panel(a, k0, kc, ip, apack)
        beta_k = beta or k0 > 0
        last = k0 + kc >= k
        for jp in range(n_panels):
            _pack_b_panel(b, k0, kc, 0, jp, bpack, sums, want_sums)
            jj = jp * nr_full
            nr = min(nr_full, n - jj)
            for ip in range(m_panels):
                i0 = ip * MR
                tile_product(apack, ip * kc * MR, bpack, jp * kc * nr_full, nr_full, kc, c, i0, jj,
                      min(MR, m - i0), nr, beta_k, last, bias, has_bias, activation, tile)


_NO_BIAS = {np.dtype(np.float32): np.zeros(1, np.float32), np.dtype(np.float64): np.zeros(1, np.float64)}
_NO_SUMS = np.zeros(1, np.float64)
_NR = {size: tile_cols.py_func(size) for size in (4, 8)}


def _k_block(k):
    # depth of the K blocks: as near _KC as gives equal blocks (each block is one pass
    # of loads and stores over C, so a thin last block would cost a whole pass)
    blocks = max(1, round(k / _KC))
    return -(-k // blocks)


def gemm(a, b, out=None, bias=None, activation=None, accumulate=False, column_sums_of_b=None):
    """``out = activation(a @ b + bias)`` (or ``out += a @ b`` when ``accumulate``);
    ``a``, ``b`` of any strides, ``out`` C-contiguous.  When ``column_sums_of_b`` is a
    float64 (N,) array, the column sums of ``b`` are added to it during packing.
    Returns ``out``."""
    m, k = a.shape
    n = b.shape[1]
    dtype = a.dtype
    if out is None:
        out = np.empty((m, n), dtype=dtype)
    has_bias = bias is not None
    bias = bias if has_bias else _NO_BIAS[dtype]
    code = ACTIVATION_CODES[activation]
    want_sums = column_sums_of_b is not None
    sums = column_sums_of_b if want_sums else _NO_SUMS
    nr = _NR[dtype.itemsize]
    small = 2 * m * n * k <= _SERIAL_FLOPS
    if small and n < nr and n < m and not accumulate:
        # an output narrower than a tile (logits): transposed, N filling the tile's rows
        depth = min(k, serial_gemm.KC)
        apack = np.empty(-(-n // MR) * MR * depth, dtype=dtype)
        bpack = np.empty(-(-m // nr) * nr * depth, dtype=dtype)
        tile = np.empty((MR, nr), dtype=dtype)
        serial_gemm.gemm_narrow(a, b, out, bias, has_bias, code, apack, bpack, tile, sums, want_sums)
        return out
    kc_max = _k_block(k)
    nc_max = min(n, _NC)
    m_pad = -(-m // MR) * MR
    n_pad = -(-nc_max // nr) * nr
    apack = np.empty(m_pad * kc_max, dtype=dtype)
    bpack = np.empty(n_pad * kc_max, dtype=dtype)
    # One thread: the serial loops, never slower than the parallel ones on one thread
    # (256x784x512 float32: 2.3 vs 3.1 ms; 1024^3: 23.2 vs 23.4 ms), and no parallel
    # kernel to compile (6 s cold) for a run that never uses one.
    if (small or get_num_threads() == 1) and n <= _NC:
        tile = np.empty((MR, nr), dtype=dtype)
        _gemm_serial(a, b, out, accumulate, bias, has_bias, code, apack, bpack, tile, sums, want_sums,
                     kc_max)
        return out
    for j0 in range(0, n, _NC):
        nc = min(_NC, n - j0)
        for k0 in range(0, k, kc_max):
            kc = min(kc_max, k - k0)
            _pack_b(b, k0, kc, j0, nc, bpack, sums, want_sums)
            _pack_a(a, k0, kc, apack)
            _macro(apack, bpack, kc, out, j0, accumulate or k0 > 0, k0 + kc >= k,
                   bias, has_bias, code)
    return out


@kernel
def _column_sums(x, out, accumulate):
    # x (M, N) -> out (N,): sums over rows, accumulated in float64, split over columns.
    m, n = x.shape
    for tile in prange((n + 255) // 256):
        j0 = tile * 256
        width = min(j0 + 256, n) - j0
        sums = np.zeros(width, dtype=np.float64)
        for i in range(m):
            row = x[i, j0 : j0 + width]
            for j in range(width):
                sums[j] += row[j]
        out_part = out[j0 : j0 + width]
        for j in range(width):
            out_part[j] = sums[j] + out_part[j] if accumulate else sums[j]


def column_sums(x, out=None, accumulate=False):
    """Sum of the rows of ``x`` (M, N) -> (N,)."""
    if out is None:
        out = np.empty(x.shape[1], dtype=x.dtype)
    sized(_column_sums, x.size)(x, out, accumulate)
    return out


def matmul(a, b, precision="fp32"):
    # a (M, K) @ b (K, N) -> (M, N)
    return gemm(a, b)


def linear_forward(x, w, b, activation, precision="fp32"):
    # x (N, IN) @ w (IN, OUT) + b (OUT,), activation fused into the GEMM epilogue
    return gemm(x, w, bias=b, activation=activation)


def linear_backward(x, w, dy, has_bias, need_dx=True, precision="fp32"):
    # y = x @ w + b: dx = dy @ w.T, dw = x.T @ dy, db = column sums of dy, summed while
    # dy is packed as the B operand of dw (one read of dy for both).
    dx = gemm(dy, w.T) if need_dx else None
    sums = np.zeros(dy.shape[1], dtype=np.float64) if has_bias else None
    dw = gemm(x.T, dy, column_sums_of_b=sums)
    db = sums.astype(dy.dtype) if has_bias else None
    return dx, dw, db
