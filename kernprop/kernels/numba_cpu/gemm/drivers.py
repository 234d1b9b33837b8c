"""The GEMM engine's loops: tiles with their epilogue, the serial and parallel drivers.

    c (M, N) = act(a (M, K) @ b (K, N) + bias)      or      c += a @ b

Loops, outermost first (Goto & van de Geijn 2008; BLIS, Van Zee & van de Geijn 2015):
  jc over N in blocks of NC columns   (Python)
    pc over K in blocks of about KC   (Python; balanced: 784 = 3 x 262, not 3 x 256 + 16,
                                       each block being a pass over C)
      pack b[pc, jc] into NR-wide micro-panels            (_pack_b, prange)
      pack a[:, pc]  into MR-tall micro-panels            (_pack_a, prange)
      tasks = blocks of MCP * MR rows x NCP * NR columns of C (_macro, prange):
        ir over the task's MR panels: jr over its NR panels: micro-kernel
The A micro-panel stays in L1 while the task's B micro-panels stream from L2 (measured
on Zen 4: 1024^3 on 2 threads 175 -> 200 GFLOP/s against the B-panel-outer order).
``serial`` runs the same loops on one thread over caller-owned buffers: products too
small to pay for a parallel launch, every product when Numba runs one thread, and the
fused training step (``mlp_step``, through ``small``).  ``narrow`` computes an output
narrower than a tile (the 10 logits of a classifier) transposed, so the narrow side fills
the tile's rows.  The fused step runs a layer of at most ``THIN`` outputs (the logits of
a classifier, a regressor's outputs) through ``thin_forward`` and
``thin_weight_gradient``: plain loops, without tiles or packing.

The micro-kernel follows the pack buffers' dtype (``micro_tile`` below): float panels
run ``microkernels.fma_tile``, uint32 (bf16 pair) panels ``bf16_tile``, int32 (AMX)
panels ``amx_tile``; ``terms`` is 3 for bf16x3 (see ``packing``).  Each tile is stored
(added to C when accumulating), then on the last K block the epilogue (bias,
activation) runs on it while it is in L1.

A product's settings travel as one ``PRODUCT`` record (a one-record NumPy structured
array, as the fused training step's tables: one argument, its fields read by name), the
arrays (operands, bias, column sums, pack buffers) beside it: ``product(...)`` makes
one.
"""

import functools

import numpy as np
from numba import prange, types
from numba.extending import overload

from .._jit import ERROR_MODEL, FASTMATH, kernel
from ..activations import activate
from .microkernels import amx_tile, bf16_tile, fma_tile, tile_cols
from .packing import pack_a_panel, pack_b_panel, pack_steps, panel_rows
from numba import njit

_JIT = {"cache": True, "fastmath": FASTMATH, "error_model": ERROR_MODEL}

# One product's settings (what the drivers read as ``spec[0].<field>``).
PRODUCT = np.dtype([
    ("accumulate", np.bool_),   # c += a @ b, else c = a @ b
    ("has_bias", np.bool_),     # + the ``bias`` array on the last K block
    ("activation", np.int64),   # then this activation (activations.ACTIVATION_CODES; 0: none)
    ("want_sums", np.bool_),    # ``sums`` += the column sums of b, taken while b is packed
    ("kc", np.int64),           # depth of a K block
    ("terms", np.int64),        # micro-kernel products per K step: 3 for bf16x3, else 1
    ("b_base", np.int64),       # serial: b is also ``bflat[b_base:]`` row-major (-1: not)
    ("mc_panels", np.int64),    # macro: MR panels per task (at most)
    ("nc_panels", np.int64),    # macro: NR panels per task (at most)
], align=True)


@functools.lru_cache(maxsize=None)
def product(accumulate, has_bias, activation, want_sums, kc, terms=1, b_base=-1, mc_panels=0, nc_panels=0):
    """A ``PRODUCT`` record of these fields (read-only, made once per distinct setting:
    the engine's products ask for the same few again and again)."""
    spec = np.array([(accumulate, has_bias, activation, want_sums, kc, terms, b_base, mc_panels, nc_panels)],
                    dtype=PRODUCT)
    spec.flags.writeable = False
    return spec


def product_table(specs):
    """The records ``specs`` (made by ``product``) as one read-only table, each row passed
    to a driver as ``table[i:i + 1]`` (the type of a ``product`` record: one compiled
    driver for both); the fused training step keeps its products so."""
    table = np.concatenate(specs)
    table.flags.writeable = False
    return table


def micro_tile(ap, a_off, bp, b_off, b_stride, steps, c, c_off, ldc, beta):
    """The micro-kernel of the pack buffers' dtype (see ``microkernels``)."""


@overload(micro_tile, jit_options=_JIT)
def _micro_tile(ap, a_off, bp, b_off, b_stride, steps, c, c_off, ldc, beta):
    if ap.dtype == types.int32:
        def run_amx(ap, a_off, bp, b_off, b_stride, steps, c, c_off, ldc, beta):
            amx_tile(ap, a_off, bp, b_off, b_stride, steps, c, c_off, ldc, beta)
        return run_amx
    if ap.dtype == types.uint32:
        def run_bf16(ap, a_off, bp, b_off, b_stride, steps, c, c_off, ldc, beta):
            bf16_tile(ap, a_off, bp, b_off, b_stride, steps, c, c_off, ldc, beta)
        return run_bf16

    def run_fma(ap, a_off, bp, b_off, b_stride, steps, c, c_off, ldc, beta):
        fma_tile(ap, a_off, bp, b_off, b_stride, steps, c, c_off, ldc, beta)
    return run_fma


@njit(**_JIT)
def tile_product(apack, a_off, bsrc, b_off, steps, c, i0, j0, mr, nr, beta, tile):
    # C tile c[i0:i0+mr, j0:j0+nr] (+)= packed A panel @ B panel (NR wide).  A full tile
    # goes straight from the registers to c; an edge tile goes through the (MR, NR)
    # buffer ``tile`` and only its valid part is stored.
    nr_full = tile_cols(c.itemsize)
    full = mr == panel_rows(apack) and nr == nr_full
    # one call site of the micro-kernel (each one is a copy of its unrolled loop)
    dst = c if full else tile
    micro_tile(apack, a_off, bsrc, b_off, nr_full, steps, dst, i0 * c.shape[1] + j0 if full else 0,
               c.shape[1] if full else nr_full, beta and full)
    if not full:
        for i in range(mr):
            row = c[i0 + i, j0:j0 + nr]
            t = tile[i, :nr]
            if beta:
                for j in range(nr):
                    row[j] += t[j]
            else:
                for j in range(nr):
                    row[j] = t[j]


@njit(**_JIT)
def has_epilogue(spec):
    # whether the product's tiles get a bias or an activation on the last K block
    return spec[0].has_bias or spec[0].activation != 0


@njit(inline="always", **_JIT)
def epilogue(c, i0, j0, mr, nr, bias, spec):
    # C tile c[i0:i0+mr, j0:j0+nr] = activation(c + bias), as ``spec`` asks: run on each
    # tile of the last K block right after it is stored, while it is still in L1.  The
    # drivers call it only when ``has_epilogue``, and inline it (it was part of the
    # tile's function before the record: measured no slower than that, serial 32x64x32
    # to 64^3 on one Zen 3 core, -4% to +3%).
    settings = spec[0]
    has_bias, activation = settings.has_bias, settings.activation
    bias_part = bias[j0:j0 + nr]
    for i in range(mr):
        row = c[i0 + i, j0:j0 + nr]
        for j in range(nr):
            value = row[j] + bias_part[j] if has_bias else row[j]
            row[j] = activate(value, activation)


@njit(**_JIT)
def narrow(a, b, c, bias, sums, apack, bpack, tile, spec):
    # As ``serial`` (c overwritten), for c (M, N) narrower than a register tile (N < NR,
    # e.g. the 10 logits): computed as c.T = b.T @ a.T, so that N fills the MR rows of a
    # tile and M its NR columns (one tile for 10 x 32 instead of three tiles of 32
    # columns, 10 useful); each tile goes through ``tile`` and is stored transposed.  The
    # bf16x3 terms keep their roles crossed (b.T takes A's), which gives the same three
    # products.
    settings = spec[0]
    has_bias, activation, want_sums = settings.has_bias, settings.activation, settings.want_sums
    kc_block, terms = settings.kc, settings.terms
    m, k = a.shape
    n = b.shape[1]
    nr_full = tile_cols(c.itemsize)
    at = b.T  # (N, K): the new A
    bt = a.T  # (K, M): the new B
    rows = panel_rows(apack)
    m_panels = (n + rows - 1) // rows
    n_panels = (m + nr_full - 1) // nr_full
    if want_sums:
        for p in range(k):
            row = b[p]
            for j in range(n):
                sums[j] += row[j]
    for k0 in range(0, k, kc_block):
        kc = min(kc_block, k - k0)
        steps = pack_steps(kc, terms, apack)
        for ip in range(m_panels):
            pack_a_panel(at, k0, kc, ip, apack, terms)
        for jp in range(n_panels):
            pack_b_panel(bt, k0, kc, 0, jp, bpack, sums, False, terms)
        beta = k0 > 0
        for jp in range(n_panels):
            jj = jp * nr_full
            nr = min(nr_full, m - jj)
            for ip in range(m_panels):
                i0 = ip * rows
                mr = min(rows, n - i0)
                micro_tile(apack, ip * steps * rows, bpack, jp * steps * nr_full, nr_full, steps, tile, 0,
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


# A layer of at most this many outputs runs its forward and weight-gradient products in
# the ``thin_*`` drivers below.
THIN = 10

# The products of a layer of at most THIN outputs (a classifier's logits, a regressor's
# outputs), for the fused training step.  A register tile would be mostly padding there,
# and packing an operand costs about as much as its multiply-adds, so they are plain
# loops whose inner loop runs along a unit stride, each compiled for the one layout the
# step passes (a loop over an any-layout operand does not vectorise).  One Zen 3 core,
# batch 200, ``small`` (``narrow``, ``serial``) against these:
#   128 -> 2 layer: forward 15.9 -> 5.0 us, weight gradient 28.5 -> 4.2 us;
#   64 -> 10 layer: forward 10.5-10.8 -> 6.9-7.0 us, weight gradient 10.9 -> 10.3 us.
# The input gradient (dz @ w.T, K = the few outputs) stays with ``small``: as plain
# loops it took as long at K = 2 and twice as long at K = 10 (14.6 against 6.6 us).
# Each element's sum does not depend on M, so the step's row halves get the bits of the
# whole product.  ``scratch`` holds N K + N M elements.


@njit(inline="always", **_JIT)
def _columns(b, scratch):
    # b (K, N) -> scratch[:N K] as (N, K): b's columns as contiguous rows
    k, n = b.shape
    columns = scratch[:n * k].reshape((n, k))
    for p in range(k):
        for j in range(n):
            columns[j, p] = b[p, j]
    return columns


@njit(**_JIT)
def thin_forward(a, b, c, bias, scratch, spec):
    # c (M, N) = act(a (M, K) @ b (K, N) + bias), a and b row-major, N <= THIN: a dot
    # product of a's row with b's column (copied into scratch) per element
    m, k = a.shape
    n = b.shape[1]
    columns = _columns(b, scratch)
    zero = c.dtype.type(0)
    for i in range(m):
        row = a[i]
        for j in range(n):
            column = columns[j]
            total = zero
            for p in range(k):
                total += row[p] * column[p]
            c[i, j] = total
    if has_epilogue(spec):
        epilogue(c, 0, 0, m, n, bias, spec)


@njit(**_JIT)
def thin_weight_gradient(a, b, c, sums, scratch, spec):
    # c (M, N) = a (M, K) @ b (K, N) for a = x.T (x row-major: a's columns contiguous),
    # b = dz row-major, N <= THIN; sums += b's column sums when spec.want_sums.  Rank-1
    # updates of c.T (in scratch) along a's columns, then stored transposed.
    m, k = a.shape
    n = b.shape[1]
    factors = _columns(b, scratch)
    if spec[0].want_sums:
        for p in range(k):
            for j in range(n):
                sums[j] += b[p, j]
    transposed = scratch[n * k:n * k + n * m].reshape((n, m))
    transposed[:] = 0
    for p in range(k):
        column = a[:, p]
        for j in range(n):
            factor = factors[j, p]
            out = transposed[j]
            for i in range(m):
                out[i] += factor * column[i]
    for i in range(m):
        for j in range(n):
            c[i, j] = transposed[j, i]


@njit(**_JIT)
def serial(a, b, c, bias, sums, apack, bpack, tile, bflat, spec):
    # a (M, K) @ b (K, N) -> c (M, N) C-contiguous, overwritten (added to when
    # spec.accumulate), then + bias and the activation on the last K block; a and b of
    # any strides.  The Goto/BLIS loops on one thread over caller-owned buffers:
    # ``apack`` holds ceil(M / MR) * MR and ``bpack`` ceil(N / NR) * NR micro-kernel
    # steps of a K block of spec.kc, ``tile`` is (MR, NR).  When spec.b_base >= 0, b is
    # also bflat[b_base:] row-major (float packs only): if it is exactly one NR panel
    # wide its rows already are the packed panel and the micro-kernel reads them in
    # place.  (Reading a wider contiguous B in place was tried: slower, 7.9 vs 5.1 us for
    # 32x64x128; its rows 512 bytes apart conflict in L1.)
    settings = spec[0]
    beta, want_sums, kc_block, terms, b_base = (settings.accumulate, settings.want_sums, settings.kc,
                                                settings.terms, settings.b_base)
    post = has_epilogue(spec)
    m, k = a.shape
    n = b.shape[1]
    nr_full = tile_cols(c.itemsize)
    rows = panel_rows(apack)
    m_panels = (m + rows - 1) // rows
    n_panels = (n + nr_full - 1) // nr_full
    in_place = b_base >= 0 and n == nr_full
    for k0 in range(0, k, kc_block):
        kc = min(kc_block, k - k0)
        steps = pack_steps(kc, terms, apack)
        for ip in range(m_panels):
            pack_a_panel(a, k0, kc, ip, apack, terms)
        beta_k = beta or k0 > 0
        last = k0 + kc >= k
        if in_place:
            if want_sums:
                for p in range(kc):
                    row = b[k0 + p]
                    for j in range(n):
                        sums[j] += row[j]
            for ip in range(m_panels):
                i0 = ip * rows
                mr = min(rows, m - i0)
                tile_product(apack, ip * kc * rows, bflat, b_base + k0 * n, kc, c, i0, 0, mr, n, beta_k, tile)
                if last and post:
                    epilogue(c, i0, 0, mr, n, bias, spec)
            continue
        for jp in range(n_panels):
            pack_b_panel(b, k0, kc, 0, jp, bpack, sums, want_sums, terms)
            jj = jp * nr_full
            nr = min(nr_full, n - jj)
            for ip in range(m_panels):
                i0 = ip * rows
                mr = min(rows, m - i0)
                tile_product(apack, ip * steps * rows, bpack, jp * steps * nr_full, steps, c, i0, jj, mr, nr,
                             beta_k, tile)
                if last and post:
                    epilogue(c, i0, jj, mr, nr, bias, spec)


@njit(inline="always", **_JIT)
def small(a, b, c, bias, sums, apack, bpack, tile, bflat, spec):
    # ``serial``, or ``narrow`` for an output narrower than a tile (as gemm._run chooses
    # from Python): for the callers in compiled code (the fused training step).  Kept
    # out of ``serial`` itself, whose Python callers never take that branch, so that
    # each of serial's specialisations does not compile narrow's too (first compiles on
    # a 2-core Zen 3 at load 1: a 784-512-256-10 numba fit 35-38 -> 31 s, matmul over
    # 36 layout and shape cases 72-74 -> 66 s).  Inlined by Numba: as a call, the
    # digits run's fused step took 48-51 s to compile against 41-42 s.
    if b.shape[1] < tile_cols(c.itemsize) and b.shape[1] < a.shape[0] and not spec[0].accumulate:
        narrow(a, b, c, bias, sums, apack, bpack, tile, spec)
    else:
        serial(a, b, c, bias, sums, apack, bpack, tile, bflat, spec)


# --- the parallel driver's kernels ------------------------------------------------------


@njit(**_JIT)
def _macro_block(apack, bpack, steps, c, j0, nc, ip0, ip1, jp0, jp1, tile, beta, last, bias, spec):
    # One task: MR panels ip0:ip1 x NR panels jp0:jp1 of the packed B panel that starts
    # at column j0.  The A micro-panel stays in L1 across the task's NR panels, which
    # stream from L2.
    m = c.shape[0]
    nr_full = tile_cols(c.itemsize)
    rows = panel_rows(apack)
    post = last and has_epilogue(spec)
    for ip in range(ip0, ip1):
        i0 = ip * rows
        mr = min(rows, m - i0)
        for jp in range(jp0, jp1):
            jj = jp * nr_full
            nr = min(nr_full, nc - jj)
            tile_product(apack, ip * steps * rows, bpack, jp * steps * nr_full, steps, c, i0, j0 + jj, mr, nr,
                         beta, tile)
            if post:
                epilogue(c, i0, j0 + jj, mr, nr, bias, spec)


@njit(**_JIT)
def _split(panels, per_block):
    # (blocks, panels per block): at most per_block each, as even as possible, so that
    # the static schedule of prange gives each thread the same work.
    blocks = (panels + per_block - 1) // per_block
    return blocks, (panels + blocks - 1) // blocks


@kernel
def pack_a(a, k0, kc, apack, terms):
    # a (M, K) any strides -> apack, all row panels of columns k0:k0+kc
    rows = panel_rows(apack)
    for ip in prange((a.shape[0] + rows - 1) // rows):
        pack_a_panel(a, k0, kc, ip, apack, terms)


@kernel
def pack_b(b, k0, kc, j0, nc, bpack, sums, want_sums, terms, nr_full):
    # b (K, N) any strides -> bpack, the NR panels of b[k0:k0+kc, j0:j0+nc]
    for jp in prange((nc + nr_full - 1) // nr_full):
        pack_b_panel(b, k0, kc, j0, jp, bpack, sums, want_sums, terms)


@kernel
def macro(apack, bpack, kc, c, j0, nc, beta, last, bias, spec):
    # c (M, N) C-contiguous: the tasks of one packed (A block of depth kc, B panel)
    # pair, each task owning its rectangle of C (no two threads write one element);
    # beta: add to c (a later K block, or spec.accumulate); last: the last K block.
    settings = spec[0]
    terms, mc_panels, nc_panels = settings.terms, settings.mc_panels, settings.nc_panels
    m = c.shape[0]
    nr_full = tile_cols(c.itemsize)
    steps = pack_steps(kc, terms, apack)
    rows = panel_rows(apack)
    m_panels = (m + rows - 1) // rows
    n_panels = (nc + nr_full - 1) // nr_full
    m_blocks, m_per = _split(m_panels, mc_panels)
    n_blocks, n_per = _split(n_panels, nc_panels)
    for task in prange(m_blocks * n_blocks):
        tile = np.empty((rows, nr_full), dtype=c.dtype)
        ip0 = (task // n_blocks) * m_per
        jp0 = (task % n_blocks) * n_per
        _macro_block(apack, bpack, steps, c, j0, nc, ip0, min(ip0 + m_per, m_panels), jp0,
                     min(jp0 + n_per, n_panels), tile, beta, last, bias, spec)
