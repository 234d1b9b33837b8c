"""Serial GEMM for small products, over caller-owned pack buffers.

``gemm(a, b, c, ...)`` is the Goto/BLIS loop nest of ``matmul`` on one thread, with
every buffer passed in, so that a caller allocating once (``mlp_step``: a fused
training step over one workspace) runs it without allocating.  ``gemm_narrow`` computes
a product whose output is narrower than a register tile (the 10 logits of a classifier)
transposed, so that the narrow side fills the tile's MR rows: one 8 x 32 tile for a
10-column output instead of three 32-wide tiles with 10 useful columns.  ``matmul.gemm``
sends its small narrow products here (float32, 2 threads: 256x256 @ 256x10 78 -> 41 us,
its dW 256x256.T @ 256x10 73 -> 31 us; NumPy 19 and 14 us).

Buffers: ``apack`` holds ceil(rows / MR) * MR * min(K, KC) values, ``bpack``
ceil(cols / NR) * NR * min(K, KC) (rows and columns of the product as it is computed:
transposed for ``gemm_narrow``), ``tile`` (MR, NR), ``sums`` float64 (N,).
"""

import numpy as np
from numba import njit

from ._jit import FASTMATH
from ._simd import MR, micro_kernel, tile_cols
from .activations import activate

__all__ = ["KC", "gemm", "gemm_narrow", "tile_product"]

KC = 256  # depth of a packed block of K (the callers size their pack buffers by it)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _pack_a(a, k0, kc, apack):
    # a[:, k0:k0+kc] (M, kc), any strides -> apack as MR-row panels, each (kc, MR)
    # (step p holds the panel's MR values of column k0+p), zero rows past M
    m = a.shape[0]
    for ip in range((m + MR - 1) // MR):
        i0 = ip * MR
        mr = min(MR, m - i0)
        dst = apack[ip * kc * MR:(ip + 1) * kc * MR]
        if mr == MR:  # contiguous writes, MR at a time (the reads gather for a C-order a)
            for p in range(kc):
                col = a[i0:i0 + MR, k0 + p]
                step = dst[p * MR:(p + 1) * MR]
                for i in range(MR):
                    step[i] = col[i]
        else:
            for p in range(kc):
                col = a[i0:i0 + mr, k0 + p]
                step = dst[p * MR:(p + 1) * MR]
                for i in range(mr):
                    step[i] = col[i]
                for i in range(mr, MR):
                    step[i] = 0


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _pack_b(b, k0, kc, bpack, sums, want_sums):
    # b[k0:k0+kc, :] (kc, N), any strides -> bpack as NR-column panels, each (kc, NR),
    # zero columns past N; sums[j] += the column sums (float64) when want_sums
    n = b.shape[1]
    nr_full = tile_cols(b.itemsize)
    for jp in range((n + nr_full - 1) // nr_full):
        jj = jp * nr_full
        nr = min(nr_full, n - jj)
        dst = bpack[jp * kc * nr_full:(jp + 1) * kc * nr_full]
        for p in range(kc):
            row = b[k0 + p, jj:jj + nr]
            out = dst[p * nr_full:(p + 1) * nr_full]
            for j in range(nr):
                out[j] = row[j]
            for j in range(nr, nr_full):
                out[j] = 0
            if want_sums:
                part = sums[jj:jj + nr]
                for j in range(nr):
                    part[j] += row[j]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def tile_product(apack, a_off, bsrc, b_off, b_stride, kc, c, i0, j0, mr, nr, beta, last,
          bias, has_bias, activation, tile):
    # C tile c[i0:i0+mr, j0:j0+nr] (+)= packed A panel @ B panel.  A full tile goes
    # straight from the registers to c; an edge tile goes through the (MR, NR) buffer
    # ``tile`` and only its valid part is stored.  On the last K block the bias and the
    # activation are applied while the tile is still in L1.
    nr_full = tile_cols(c.itemsize)
    full = mr == MR and nr == nr_full
    # one call site of the micro-kernel (each one is a copy of its unrolled loop)
    dst = c if full else tile
    micro_kernel(apack, a_off, bsrc, b_off, b_stride, kc, dst, i0 * c.shape[1] + j0 if full else 0,
                 c.shape[1] if full else nr_full, beta and full)
    if not full:
        for i in range(mr):
            row = c[i0 + i, j0 : j0 + nr]
            t = tile[i, :nr]
            if beta:
                for j in range(nr):
                    row[j] += t[j]
            else:
                for j in range(nr):
                    row[j] = t[j]
    if last and (has_bias or activation != 0):
        bias_part = bias[j0 : j0 + nr]
        for i in range(mr):
            row = c[i0 + i, j0 : j0 + nr]
            for j in range(nr):
                value = row[j] + bias_part[j] if has_bias else row[j]
                row[j] = activate(value, activation)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def gemm_narrow(a, b, c, bias, has_bias, activation, apack, bpack, tile, sums, want_sums):
    # As gemm, for c (M, N) narrower than a register tile (N < NR, e.g. the 10 logits):
    # computed as c.T = b.T @ a.T, so that N fills the MR rows of a tile and M its NR
    # columns (one tile for 10 x 32 instead of three tiles of 32 columns, 10 useful);
    # each tile goes through ``tile`` and is stored transposed.
    m, k = a.shape
    n = b.shape[1]
    nr_full = tile_cols(c.itemsize)
    at = b.T  # (N, K): the new A
    bt = a.T  # (K, M): the new B
    m_panels = (n + MR - 1) // MR
    n_panels = (m + nr_full - 1) // nr_full
    if want_sums:
        for p in range(k):
            row = b[p]
            for j in range(n):
                sums[j] += row[j]
    for k0 in range(0, k, KC):
        kc = min(KC, k - k0)
        _pack_a(at, k0, kc, apack)
        _pack_b(bt, k0, kc, bpack, sums, False)
        beta = k0 > 0
        for jp in range(n_panels):
            jj = jp * nr_full
            nr = min(nr_full, m - jj)
            for ip in range(m_panels):
                i0 = ip * MR
                mr = min(MR, n - i0)
                micro_kernel(apack, ip * kc * MR, bpack, jp * kc * nr_full, nr_full, kc, tile, 0,
                             nr_full, False)
                # tile[i, j] is c[jj + j, i0 + i]
                for j in range(nr):
                    row = c[jj + j, i0:i0 + mr]
                    if beta:
                        for i in range(mr):
                            row[i] += tile[i, j]
                    else:
                        for i in range(mr):
                            row[i] = tile[i, j]
    if has_bias or activation != 0:
        for i in range(m):
            row = c[i]
            for j in range(n):
                row[j] = activate(row[j] + bias[j] if has_bias else row[j], activation)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def gemm(a, b, c, bias, has_bias, activation, apack, bpack, tile, sums, want_sums, bflat, b_base):
    # a (M, K) @ b (K, N) -> c (M, N) C-contiguous, overwritten, then + bias and the
    # activation; a and b of any strides (transposed views are read through packing).
    # Serial Goto/BLIS loops: pack a K block of A and of B, then the (MR, NR) register
    # tiles of _simd.micro_kernel; an edge tile goes through
    # ``tile`` and only its valid part is stored.  When b_base >= 0, b is also
    # bflat[b_base:] row-major: if it is exactly one NR panel wide, its rows already are
    # the packed panel and the micro-kernel reads them in place.
    m, k = a.shape
    n = b.shape[1]
    nr_full = tile_cols(c.itemsize)
    if n < nr_full and n < m:
        gemm_narrow(a, b, c, bias, has_bias, activation, apack, bpack, tile, sums, want_sums)
        return
    m_panels = (m + MR - 1) // MR
    n_panels = (n + nr_full - 1) // nr_full
    in_place = b_base >= 0 and n == nr_full
    src = bflat if in_place else bpack
    for k0 in range(0, k, KC):
        kc = min(KC, k - k0)
        _pack_a(a, k0, kc, apack)
        if in_place:
            if want_sums:
                for p in range(kc):
                    row = b[k0 + p]
                    for j in range(n):
                        sums[j] += row[j]
        else:
            _pack_b(b, k0, kc, bpack, sums, want_sums)
        beta = k0 > 0
        last = k0 + kc >= k
        for jp in range(n_panels):
            jj = jp * nr_full
            nr = min(nr_full, n - jj)
            for ip in range(m_panels):
                i0 = ip * MR
                mr = min(MR, m - i0)
                tile_product(apack, ip * kc * MR, src, b_base + k0 * n if in_place else jp * kc * nr_full,
                             nr_full, kc, c, i0, jj, mr, nr, beta, last, bias, has_bias, activation, tile)
