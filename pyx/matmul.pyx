# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""GEMM and linear layer for the ``cython`` backend: a packed, blocked, register-tiled
kernel in the Goto/BLIS shape (Goto & van de Geijn, "Anatomy of High-Performance
Matrix Multiplication", ACM TOMS 2008; Van Zee & van de Geijn, "BLIS", TOMS 2015).

Loops, outermost first, for C (M, N) = A (M, K) @ B (K, N), all in one OpenMP region:
    for each panel of NC columns of B, for each KC-deep slice of K (KC and MC from the
    cache sizes, ``set_blocking``; K cut into equal slices):
        pack B (KC, NC) into NR-wide slivers, zero-padded (work-shared over slivers);
        the packed panel is at most KC x NC, whatever the size of B
        work-shared tasks (block of MC rows of C, group of B slivers): each task owns
        its tiles of C, so no two threads write one element
            pack the A block (MC, KC) into MR-tall slivers, zero-padded
            for each NR sliver of the group (KC, NR): stays in L1 while ...
                for each MR sliver of A (in L2): the micro-tile, MR x NR accumulators
                in registers over the KC-long contiguous slivers
            after the last K slice: epilogue on the task's own tiles (+ bias,
            activation)
Packing reads any strides, so transposed views (``w.T`` in ``dx = dy @ w.T``,
``x.T`` in ``dw = x.T @ dy``) are never copied first.  Each element of C sums its K
products in the same order whatever the thread count, so results do not depend on it.

Micro-kernels (the caller names one per product: kernprop/kernels/cython/matmul.py
chooses per precision, self-checks and reports them; ``kernel_code`` maps a name):
    1. ``_micro_tile``, generic: MR x NR = 4 x (32 bytes), accumulators in a local 2-D
       array that GCC keeps in registers after fully unrolling the constant loops; with
       the x86-64 baseline (SSE2) that is 8 of the 16 registers.  ~30 GFLOP/s float32,
       ~15 float64 on one core (Intel).  The fallback everywhere.
    2. ``kp_tile_avx2_*`` (pyx/gemm/avx2.c, compiled with -mavx2 -mfma): 6 x (2 x 32
       bytes), 12 of the 16 ymm registers.  ~70 GFLOP/s float32, ~34 float64 (Intel).
    3. ``kp_tile_avx512_*`` (pyx/gemm/avx512.c, -mavx512f): the same C, 6 x (2 x 64
       bytes), 12 of the 32 zmm registers.  2048^3 float32 on AMD EPYC Zen 5, 2 threads:
       about 400 GFLOP/s against NumPy's 260.
    4. ``kp_tile_avx512_bf16`` (pyx/gemm/avx512_bf16.c, -mavx512bf16): the "bf16"
       precision, 6 x 32 with ``vdpbf16ps`` on bf16 pairs of k; A and B are rounded to
       bf16 while packing (integer round-to-nearest-even, 16 lanes at a time:
       ``kp_pack_*_bf16`` in the same unit), a packed 32-bit word holding two
       consecutive k.  About 1.7x the fp32 kernel on Zen 5.
FMA rounds once per multiply-add, so variants differ in the last bits; each is
independent of the thread count.
"""

include "_common.pxi"

from cython.parallel cimport parallel, prange, threadid

import threading

import numpy as np

cdef enum:
    # Generic micro-tile: MR rows of A times NR_BYTES of a row of B.  With the x86-64
    # baseline (SSE2, 16 registers of 16 bytes) a 4 x 32-byte tile is 8 accumulator
    # registers, leaving room for the B row and the broadcast A value without spills.
    MR = 4
    NR_BYTES = 32
    NR_MAX = 8          # NR_BYTES / sizeof(float)
    # SIMD micro-tiles: 6 rows x 2 vectors = 12 accumulator registers + 2 for B + 1
    # broadcast (of 16 ymm with AVX2, of 32 zmm with AVX-512).
    MR_SIMD = 6
    # Defaults of the blocking (set_blocking replaces them with sizes from the caches):
    # KC * NR * 8 bytes <= 32 KiB: one B sliver sits in L1 across the MR-sliver loop;
    # MC * KC * 8 bytes = 288 KiB: the packed A block sits in L2.
    KC = 256
    MC = 144             # a multiple of both MR and MR_SIMD
    # KC * NC * 8 bytes = 8 MiB at most: the packed B panel, shared by the threads.
    NC = 4096
    # Products of fewer multiply-adds than this run on the calling thread: they take
    # a few microseconds, about what an OpenMP fork/join costs.
    GEMM_SERIAL_WORK = 1 << 17

# Micro-kernels.  The fp32/fp64 ones in order of preference; AVX512_BF16 runs the
# "bf16" precision only (float32 operands rounded to bf16 while packing).
cdef enum:
    KERNEL_GENERIC = 0
    KERNEL_AVX2 = 1
    KERNEL_AVX512 = 2
    KERNEL_AVX512_BF16 = 3
    KERNEL_AMX_BF16 = 4     # untested: chosen only by name (pyx/gemm/amx_bf16.c)
    # Added to AVX2/AVX512 for outputs of at most one vector of columns: their narrow
    # 12 x 1-vector tile (chosen by shape in gemm, never by name: same bits as the wide)
    KERNEL_NARROW = 8
    MR_NARROW = 12

KERNEL_NAMES = ("generic", "avx2", "avx512", "avx512_bf16", "amx_bf16")
# Tile shape of each kernel for float32 (rows x columns), for kernel_info.
KERNEL_TILES = ("4x8", "6x16", "6x32", "6x32", "32x32")

# The SIMD micro-kernels live in their own translation units, one per instruction set,
# compiled with that set's -m flags (setup.py; pyx/gemm/kp_gemm.h): this module itself
# is built for the baseline and runs on any CPU.  A unit the compiler could not build is
# a stub that kp_cpu_has() never reports.
cdef extern from "gemm/kp_gemm.h":
    void kp_tile_avx2_f(Py_ssize_t kc, const float* ap, const float* bp, float* c,
                        Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr,
                        int accumulate) noexcept nogil
    void kp_tile_avx2_d(Py_ssize_t kc, const double* ap, const double* bp, double* c,
                        Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr,
                        int accumulate) noexcept nogil
    void kp_tile_avx512_f(Py_ssize_t kc, const float* ap, const float* bp, float* c,
                          Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr,
                          int accumulate) noexcept nogil
    void kp_tile_avx512_d(Py_ssize_t kc, const double* ap, const double* bp, double* c,
                          Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr,
                          int accumulate) noexcept nogil
    void kp_tile_avx512_bf16(Py_ssize_t kc, const float* ap, const float* bp, float* c,
                             Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr,
                             int accumulate) noexcept nogil
    void kp_pack_a_bf16(const float* a, Py_ssize_t sa0, Py_ssize_t sa1, Py_ssize_t mc,
                        Py_ssize_t kc, Py_ssize_t mr, float* out) noexcept nogil
    void kp_pack_b_bf16(const float* b, Py_ssize_t sb0, Py_ssize_t sb1, Py_ssize_t kc,
                        Py_ssize_t cols, Py_ssize_t nr, float* out) noexcept nogil
    void kp_tile_amx_bf16(Py_ssize_t kc, const float* ap, const float* bp, float* c,
                          Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr,
                          int accumulate) noexcept nogil
    void kp_pack_a_amx(const float* a, Py_ssize_t sa0, Py_ssize_t sa1, Py_ssize_t mc,
                       Py_ssize_t kc, Py_ssize_t mr, float* out) noexcept nogil
    void kp_pack_b_amx(const float* b, Py_ssize_t sb0, Py_ssize_t sb1, Py_ssize_t kc,
                       Py_ssize_t cols, Py_ssize_t nr, float* out) noexcept nogil
    void kp_tile_avx2_narrow_f(Py_ssize_t kc, const float* ap, const float* bp, float* c,
                               Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr,
                               int accumulate) noexcept nogil
    void kp_tile_avx2_narrow_d(Py_ssize_t kc, const double* ap, const double* bp, double* c,
                               Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr,
                               int accumulate) noexcept nogil
    void kp_tile_avx512_narrow_f(Py_ssize_t kc, const float* ap, const float* bp, float* c,
                                 Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr,
                                 int accumulate) noexcept nogil
    void kp_tile_avx512_narrow_d(Py_ssize_t kc, const double* ap, const double* bp, double* c,
                                 Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr,
                                 int accumulate) noexcept nogil
    int kp_cpu_has() noexcept nogil

cdef int _cpu_has = kp_cpu_has()
# Packed words per K block and rows per A block, from set_blocking.
cdef Py_ssize_t _kc = KC, _mc = MC


def set_blocking(Py_ssize_t kc_words, Py_ssize_t mc):
    """Use K blocks of ``kc_words`` packed words (k for fp32/fp64, pairs of k for bf16)
    and A blocks of ``mc`` rows (a multiple of 12, so of every kernel's MR).  Results
    depend on the K block (the order of the sums), never on the thread count."""
    global _kc, _mc
    if kc_words < 16 or mc < 12 or mc % 12:
        raise ValueError(f"set_blocking: need kc_words >= 16 and mc a multiple of 12, got {kc_words}, {mc}")
    _kc = kc_words
    _mc = mc


def blocking():
    """(kc_words, mc): the blocking in use."""
    return _kc, _mc
# The best fp32 kernel this CPU runs (AVX-512 before AVX2 before generic).
cdef int _cpu_kernel = (KERNEL_AVX512 if _cpu_has & 2 else
                        KERNEL_AVX2 if _cpu_has & 1 else KERNEL_GENERIC)


def gemm_kernels():
    """Names of the fp32 GEMM micro-kernels this CPU can run, best last."""
    return list(KERNEL_NAMES[: _cpu_kernel + 1])


def bf16_kernels():
    """Names of the bf16 micro-kernels this CPU can run (empty when none)."""
    return ((["avx512_bf16"] if _cpu_has & 4 else [])
            + (["amx_bf16"] if _cpu_has & 8 else []))


def kernel_code(name):
    """The code ``gemm(..., kernel=)`` takes for the kernel ``name``; a ValueError when
    this CPU (or this build) cannot run it."""
    if name not in gemm_kernels() + bf16_kernels():
        raise ValueError(
            f"GEMM kernel {name!r} not available here; have {gemm_kernels() + bf16_kernels()}")
    return KERNEL_NAMES.index(name)


cdef inline void _micro_tile(Py_ssize_t kc, const floating* ap, const floating* bp,
                             floating* c, Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr,
                             bint accumulate) noexcept nogil:
    # ap (kc, MR) packed, bp (kc, NR) packed -> c (mr, nr) tile with row stride ldc
    # IN  kc: depth of the panels; ap, bp: packed, zero-padded panels
    # OUT c: the tile of C, written (or added to when accumulate) for its valid mr x nr
    # The constant-bound i/j loops unroll fully, so acc becomes registers and the j loop
    # one vector multiply-add per 16 bytes of B.
    cdef Py_ssize_t NR = NR_BYTES // sizeof(floating)
    cdef floating acc[MR][NR_MAX]
    cdef floating ai
    cdef Py_ssize_t i, j, k
    for i in range(MR):
        for j in range(NR_MAX):  # all of it: GCC then knows no lane is read unset
            acc[i][j] = 0
    for k in range(kc):
        for i in range(MR):
            ai = ap[i]
            for j in range(NR):
                acc[i][j] += ai * bp[j]
        ap += MR
        bp += NR
    # Edge tiles computed in full on zero padding; only the valid part is stored.
    if accumulate:
        for i in range(mr):
            for j in range(nr):
                c[i * ldc + j] += acc[i][j]
    else:
        for i in range(mr):
            for j in range(nr):
                c[i * ldc + j] = acc[i][j]


cdef void _pack_a(const floating* a, Py_ssize_t sa0, Py_ssize_t sa1,
                  Py_ssize_t mc, Py_ssize_t kc, Py_ssize_t mr, floating* out) noexcept nogil:
    # a (mc, kc) with element strides (sa0, sa1) -> out (ceil(mc / mr), kc, mr)
    # IN  a: a block of A, any strides (a transposed view has sa0 == 1); mr: tile rows
    # OUT out: mr-tall slivers, k-major so the micro-tile reads them contiguously;
    #     rows past mc are zero so edge tiles need no special micro-kernel
    cdef Py_ssize_t s, i, k, rows
    for s in range((mc + mr - 1) // mr):
        rows = min(mr, mc - s * mr)
        for k in range(kc):
            for i in range(rows):
                out[i] = a[(s * mr + i) * sa0 + k * sa1]
            for i in range(rows, mr):
                out[i] = 0
            out += mr


cdef void _pack_b_sliver(const floating* b, Py_ssize_t sb0, Py_ssize_t sb1,
                         Py_ssize_t kc, Py_ssize_t cols, Py_ssize_t nr,
                         floating* out) noexcept nogil:
    # b (kc, cols) with element strides (sb0, sb1) -> out (kc, nr)
    # IN  b: cols <= nr columns of a KC slice of B, any strides; nr: tile columns
    # OUT out: the sliver, row-major, columns past cols zero
    cdef Py_ssize_t j, k
    for k in range(kc):
        for j in range(cols):
            out[j] = b[k * sb0 + j * sb1]
        for j in range(cols, nr):
            out[j] = 0
        out += nr


cdef inline void _tile(int kernel, Py_ssize_t kc, const floating* ap, const floating* bp,
                       floating* c, Py_ssize_t ldc, Py_ssize_t mr, Py_ssize_t nr,
                       bint accumulate) noexcept nogil:
    # One micro-tile with the kernel chosen for this call (see the module docstring).
    if kernel == KERNEL_AVX512_BF16:
        if floating is float:  # kc counts pairs of k here
            kp_tile_avx512_bf16(kc, ap, bp, c, ldc, mr, nr, accumulate)
    elif kernel == KERNEL_AMX_BF16:
        if floating is float:  # kc: pair words, a multiple of 16
            kp_tile_amx_bf16(kc, ap, bp, c, ldc, mr, nr, accumulate)
    elif kernel == KERNEL_AVX512 + KERNEL_NARROW:
        if floating is float:
            kp_tile_avx512_narrow_f(kc, ap, bp, c, ldc, mr, nr, accumulate)
        else:
            kp_tile_avx512_narrow_d(kc, ap, bp, c, ldc, mr, nr, accumulate)
    elif kernel == KERNEL_AVX2 + KERNEL_NARROW:
        if floating is float:
            kp_tile_avx2_narrow_f(kc, ap, bp, c, ldc, mr, nr, accumulate)
        else:
            kp_tile_avx2_narrow_d(kc, ap, bp, c, ldc, mr, nr, accumulate)
    elif kernel == KERNEL_AVX512:
        if floating is float:
            kp_tile_avx512_f(kc, ap, bp, c, ldc, mr, nr, accumulate)
        else:
            kp_tile_avx512_d(kc, ap, bp, c, ldc, mr, nr, accumulate)
    elif kernel == KERNEL_AVX2:
        if floating is float:
            kp_tile_avx2_f(kc, ap, bp, c, ldc, mr, nr, accumulate)
        else:
            kp_tile_avx2_d(kc, ap, bp, c, ldc, mr, nr, accumulate)
    else:
        _micro_tile(kc, ap, bp, c, ldc, mr, nr, accumulate)


# float32 bias + activation over one row of C, on the CPU's widest vectors
# (target_clones): in place (pyx/kp_common.h)
cdef extern from "kp_common.h":
    void kp_bias_act_f(float* row, const float* bias, Py_ssize_t n, int act) noexcept nogil


cdef void _epilogue(floating* c, Py_ssize_t ldc, Py_ssize_t rows, Py_ssize_t n,
                    const floating* bias, int activation) noexcept nogil:
    # c (rows, n) -> c (rows, n): c + bias, then the activation, in place
    # Done by the thread that owns these rows, once all of K has been summed.
    cdef Py_ssize_t i, j
    cdef floating* row
    for i in range(rows):
        row = c + i * ldc
        if floating is float:
            kp_bias_act_f(row, bias, n, activation)
        else:
            if bias != NULL:
                for j in range(n):
                    row[j] += bias[j]
            if activation == ACT_RELU:
                for j in range(n):
                    row[j] = _select(row[j] < 0, 0, row[j])
            elif activation != ACT_NONE:
                for j in range(n):
                    row[j] = _activate(row[j], activation)


cdef void _gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                const floating* a, Py_ssize_t sa0, Py_ssize_t sa1,
                const floating* b, Py_ssize_t sb0, Py_ssize_t sb1,
                floating* c, Py_ssize_t ldc, bint accumulate,
                const floating* bias, int activation, int kernel, Py_ssize_t mr,
                Py_ssize_t nr, floating* bpanel, floating* abufs, Py_ssize_t mc,
                Py_ssize_t kcw, Py_ssize_t abuf_size, int nthreads) noexcept nogil:
    # a (m, k), b (k, n) strided -> c (m, n) with row stride ldc
    # IN  kernel, mr, nr: the micro-kernel and its tile; kcw: packed words per K block
    #     (a word is one element, or a bf16 pair of k for the bf16 kernel); bpanel:
    #     kcw * round_up(min(n, NC), nr) words for the packed B panel; abufs: nthreads
    #     packed-A buffers of abuf_size words, one per thread (no sharing)
    # OUT c: a @ b (+ c when accumulate), then + bias and the activation
    # One parallel region for the whole product: the packing of a B panel and the tiles
    # are work-shared loops inside it, whose implicit barriers order them (the panel is
    # packed before any tile reads it, and read by all before the next is packed).  A
    # fork/join per K block cost more, and much more when another process holds a core.
    # Tasks are (block of MC rows, group of B slivers); a short matrix gets several
    # column groups so every thread has work.  A tile's sums do not depend on which
    # task computes it, so the result does not depend on the thread count.
    cdef Py_ssize_t nblocks = (m + mc - 1) // mc
    # (initialised: Cython makes the parallel block's variables firstprivate)
    cdef Py_ssize_t task, ib, jg, i0, rows, j0, j1, ii, js
    cdef Py_ssize_t jc = 0, nc = 0, p0 = 0, kc = 0, words = 0
    cdef Py_ssize_t nslivers = 0, ngroups = 0, gsize = 0
    cdef bint last = False
    # k per packed word: a bf16 word holds a pair of k
    cdef bint bf16 = kernel == KERNEL_AVX512_BF16 or kernel == KERNEL_AMX_BF16
    cdef bint amx = kernel == KERNEL_AMX_BF16
    cdef Py_ssize_t kstep = 2 if bf16 else 1
    # K blocks of equal depth (a multiple of kstep), not full blocks and a short tail:
    # K = 784 in blocks of 256 left a 16-deep last pass over all of C
    cdef Py_ssize_t kblocks = max(1, (k + kcw * kstep - 1) // (kcw * kstep))
    cdef Py_ssize_t kcb = ((k + kblocks - 1) // kblocks + kstep - 1) // kstep * kstep
    cdef floating* abuf = abufs
    cdef const floating* bsliver
    with parallel(num_threads=nthreads, use_threads_if=nthreads > 1):
        abuf = abufs + threadid() * abuf_size
        jc = 0
        while jc < n:
            nc = min(<Py_ssize_t>NC, n - jc)
            nslivers = (nc + nr - 1) // nr
            ngroups = min(nslivers, (nthreads + nblocks - 1) // nblocks)
            gsize = (nslivers + ngroups - 1) // ngroups
            ngroups = (nslivers + gsize - 1) // gsize
            p0 = 0
            while p0 < k:
                kc = min(kcb, k - p0)
                words = (kc + kstep - 1) // kstep
                if amx:  # whole tiles of 16 pair words, zero-padded
                    words = (words + 15) // 16 * 16
                last = p0 + kc == k
                # B (kc, nc) -> slivers (nslivers, words, nr); disjoint per sliver
                for js in prange(nslivers, schedule="static"):
                    if amx:
                        if floating is float:
                            kp_pack_b_amx(b + p0 * sb0 + (jc + js * nr) * sb1, sb0, sb1, kc,
                                          min(nr, nc - js * nr), nr, bpanel + js * nr * words)
                    elif bf16:
                        if floating is float:
                            kp_pack_b_bf16(b + p0 * sb0 + (jc + js * nr) * sb1, sb0, sb1, kc,
                                           min(nr, nc - js * nr), nr, bpanel + js * nr * words)
                    else:
                        _pack_b_sliver(b + p0 * sb0 + (jc + js * nr) * sb1, sb0, sb1, kc,
                                       min(nr, nc - js * nr), nr, bpanel + js * nr * words)
                for task in prange(nblocks * ngroups, schedule="static", chunksize=1):
                    ib = task // ngroups
                    jg = task % ngroups
                    i0 = ib * mc
                    rows = min(mc, m - i0)
                    if amx:
                        if floating is float:
                            kp_pack_a_amx(a + i0 * sa0 + p0 * sa1, sa0, sa1, rows, kc, mr, abuf)
                    elif bf16:
                        if floating is float:
                            kp_pack_a_bf16(a + i0 * sa0 + p0 * sa1, sa0, sa1, rows, kc, mr, abuf)
                    else:
                        _pack_a(a + i0 * sa0 + p0 * sa1, sa0, sa1, rows, kc, mr, abuf)
                    j0 = jg * gsize * nr
                    j1 = min(nc, j0 + gsize * nr)
                    while j0 < j1:
                        bsliver = bpanel + j0 * words
                        ii = 0
                        while ii < rows:
                            _tile(kernel, words, abuf + ii * words, bsliver,
                                  c + (i0 + ii) * ldc + jc + j0, ldc, min(mr, rows - ii),
                                  min(nr, nc - j0), accumulate or p0 > 0)
                            ii = ii + mr
                        j0 = j0 + nr
                    if last and (bias != NULL or activation != ACT_NONE):
                        j0 = jg * gsize * nr
                        _epilogue(c + i0 * ldc + jc + j0, ldc, rows, j1 - j0,
                                  bias + jc + j0 if bias != NULL else NULL, activation)
                p0 = p0 + kc
            jc = jc + NC


_workspaces = threading.local()


def _workspace(dtype, slot, size):
    # A packing buffer of at least ``size`` elements, kept per Python thread and reused:
    # a fresh 256 KiB buffer per product came from mmap and its page faults cost about
    # as much as a 256^3 product's second thread saves.  Per thread, so concurrent
    # products from several Python threads never share one.
    cache = getattr(_workspaces, "buffers", None)
    if cache is None:
        cache = _workspaces.buffers = {}
    key = (np.dtype(dtype).char, slot)
    buffer = cache.get(key)
    if buffer is None or buffer.shape[0] < size:
        buffer = cache[key] = np.empty(max(size, 1), dtype=dtype)
    return buffer


def gemm(const floating[:, :] a, const floating[:, :] b, floating[:, ::1] c,
         bint accumulate=False, bias=None, int activation=ACT_NONE, int kernel=-1):
    """``c = activation(a @ b + bias)``, or ``c += a @ b`` with ``accumulate``.

    a (M, K) and b (K, N) of any strides; c (M, N) C-contiguous rows (a row slice of a
    C-contiguous array is fine); bias (N,) or None; activation 0 none, 1 relu,
    2 sigmoid, 3 tanh; kernel: a ``kernel_code`` (-1: the best fp32 kernel; the bf16
    kernel takes float32 only, rounding the operands to bf16 while packing).  The
    packing buffers (at most KC x NC of B, MC x KC of A per thread) are allocated here,
    outside the kernel.
    """
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], n = b.shape[1]
    cdef Py_ssize_t mr, nr
    cdef Py_ssize_t isz = sizeof(floating)
    cdef int nthreads = kp_max_threads()
    cdef Py_ssize_t mc, kcw = _kc, abuf_size
    cdef const floating[::1] bias_view
    cdef const floating* bias_ptr = NULL
    cdef floating[::1] bpanel, abufs
    if kernel == -1:
        kernel = _cpu_kernel
    if not 0 <= kernel <= KERNEL_AMX_BF16 or not (
            kernel <= _cpu_kernel or (kernel == KERNEL_AVX512_BF16 and _cpu_has & 4)
            or (kernel == KERNEL_AMX_BF16 and _cpu_has & 8)):
        raise ValueError(f"gemm: kernel {kernel} not available here")
    if kernel >= KERNEL_AVX512_BF16 and floating is double:
        raise ValueError("gemm: the bf16 kernels take float32 operands")
    mr = MR if kernel == KERNEL_GENERIC else 32 if kernel == KERNEL_AMX_BF16 else MR_SIMD
    # B bytes per tile row: 32 generic, 2 vectors of 32 (AVX2) or 64 (AVX-512) bytes;
    # the bf16 kernel: 32 columns of bf16 pairs
    nr = 32 if kernel >= KERNEL_AVX512_BF16 else (NR_BYTES << kernel) // sizeof(floating)
    if (kernel == KERNEL_AVX2 or kernel == KERNEL_AVX512) and 2 * n <= nr:
        kernel = kernel + KERNEL_NARROW
        mr = MR_NARROW
        nr = nr // 2
    if b.shape[0] != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError("gemm: shapes do not match")
    if bias is not None:
        bias_view = bias
        if bias_view.shape[0] != n:
            raise ValueError("gemm: bias must have N entries")
        bias_ptr = &bias_view[0]
    if m * n * k < GEMM_SERIAL_WORK:
        nthreads = 1
    # Rows per block: MC, or fewer so that every thread gets a block of a short matrix.
    mc = min(_mc, ((m + nthreads - 1) // nthreads + mr - 1) // mr * mr)
    dtype = np.float32 if floating is float else np.float64
    if kernel == KERNEL_AMX_BF16:  # K blocks padded to whole AMX tiles (16 words)
        kcw = (kcw + 15) // 16 * 16
    # (an A block of mc rows is packed in whole slivers of mr rows)
    abuf_size = (mc + mr - 1) // mr * mr * kcw
    bpanel = _workspace(dtype, 0, kcw * ((min(n, <Py_ssize_t>NC) + nr - 1) // nr * nr))
    abufs = _workspace(dtype, 1, nthreads * abuf_size)
    with nogil:
        _gemm(m, n, k, &a[0, 0], a.strides[0] // isz, a.strides[1] // isz,
              &b[0, 0], b.strides[0] // isz, b.strides[1] // isz,
              &c[0, 0], c.strides[0] // isz, accumulate, bias_ptr, activation, kernel, mr, nr,
              &bpanel[0], &abufs[0], mc, kcw, abuf_size, nthreads)


def column_sums(const floating[:, :] g, double[::1] out):
    """``out += g.sum(axis=0)``, summed in double: the bias gradient ``db``.

    g (N, C) of any strides; out (C,) float64, accumulated into (zero it first).
    """
    # g (N, C) -> out (C,)
    # Threads own disjoint column chunks and walk all rows, so no two write one column;
    # each column is summed in row order whatever the thread count.
    cdef Py_ssize_t n = g.shape[0], ncols = g.shape[1]
    cdef Py_ssize_t chunk = 256
    cdef Py_ssize_t nchunks = (ncols + chunk - 1) // chunk
    cdef Py_ssize_t jc, j0, j1, i, j
    if out.shape[0] != ncols:
        raise ValueError("column_sums: out must have C entries")
    for jc in prange(nchunks, nogil=True, schedule="static",
                     use_threads_if=n * ncols > PARALLEL_MIN_WORK):
        j0 = jc * chunk
        j1 = min(ncols, j0 + chunk)
        for i in range(n):
            for j in range(j0, j1):
                out[j] += g[i, j]
