"""The GEMM engine of the Numba CPU backend: every product of the backend runs here.

    out (M, N) = act(a (M, K) @ b (K, N) + bias)      or      out += a @ b

One engine in the BLIS/oneDNN shape: packing (``packing``: float panels, and bf16 pair
panels converted while packing), the loops over a caller-owned workspace (``drivers``:
the tile with its epilogue, the serial and parallel drivers, the narrow-output case),
and micro-kernels per instruction set and precision (``microkernels``), chosen at run
time from what the CPU runs, measures and passes a self-check (``selection``).
``matmul``, ``linear``, ``linear_backward``, ``linear_cross_entropy`` and the fused
training step (``mlp_step``, through ``drivers.small``) all call it.

The register tile and the blocking come from the instruction-set row this process runs
(``kernprop.isa``: the CPU's own, capped by ``KERNPROP_MAX_ISA``): the depth KC of a K
block keeps an A micro-panel (KC x MR) in half of L1 while B micro-panels stream past
it; a task's B block (KC x NCP*NR) fits in half of L2.

Precision: float64 always runs the float64 FMA kernel; float32 runs the kernel that
``selection`` chose for "fp32", "bf16x3" or "bf16" (``kernel_info`` shows them).
"""

from __future__ import annotations

import functools
import threading

import numpy as np
from numba import get_num_threads

from .... import isa
from ..activations import ACTIVATION_CODES
from . import drivers, selection
from .microkernels import MR, ROW, tile_cols
from .packing import steps_for
from .selection import BF16_PACK, KERNELS

__all__ = ["KC", "MR", "ROW", "blocking", "check_kernel", "gemm", "kernel_info", "select_kernel", "tile_cols"]

# Depth of a K block for the fused step's serial products (``mlp_step`` calls
# ``drivers.small`` over its own buffers, sized by it); the engine's own products use
# ``blocking()``.
KC = 256
NC = 4096  # columns of a packed B panel (it stays in L3)
_SERIAL_FLOPS = 4_000_000  # below this a parallel launch costs more than the product


@functools.lru_cache(maxsize=None)
def blocking(itemsize=4):
    """(KC, MC panels per task, NC panels per task) for elements of ``itemsize`` bytes:
    the instruction-set row's rule (``kernprop.isa.blocking``) for its tile."""
    kc, mc_rows, nc_cols = isa.blocking(ROW.tile, itemsize)
    return kc, mc_rows // MR, nc_cols // tile_cols(itemsize)


def _reference_product(a, b, precision):
    from ...reference.matmul import product

    return product(a, b, precision)


_NO_BIAS = {np.dtype(np.float32): np.zeros(1, np.float32), np.dtype(np.float64): np.zeros(1, np.float64)}
_NO_SUMS = np.zeros(1, np.float64)


def _k_block(k, kc_target):
    # depth of the K blocks: as near kc_target as gives equal blocks (each block is one
    # pass of loads and stores over C, so a thin last block would cost a whole pass)
    blocks = max(1, round(k / kc_target))
    return -(-k // blocks)


_workspace = threading.local()


def _buffer(slot, size, dtype):
    """A 1-D scratch array of ``size`` elements, reused by this Python thread's later
    products (a fresh multi-megabyte array is a fresh mapping whose pages fault in on
    first touch, every call).  Two slots: the A and B pack buffers."""
    cache = getattr(_workspace, "buffers", None)
    if cache is None:
        cache = _workspace.buffers = {}
    dtype = np.dtype(dtype)
    key = (slot, dtype)
    buffer = cache.get(key)
    if buffer is None or buffer.size < size:
        buffer = cache[key] = np.empty(max(size, 1), dtype=dtype)
    return buffer[:size]


def _panels(extent, width, steps, pack_dtype, slot):
    # the pack buffer ``slot`` for ``extent`` rows (A) or columns (B) in panels of
    # ``width``, each ``steps`` micro-kernel steps deep
    return _buffer(slot, -(-extent // width) * width * steps, pack_dtype)


def _run(a, b, out, bias, activation, accumulate, column_sums_of_b, kernel, precision):
    m, k = a.shape
    n = b.shape[1]
    dtype = a.dtype
    has_bias = bias is not None
    bias = bias if has_bias else _NO_BIAS[dtype]
    code = ACTIVATION_CODES[activation]
    want_sums = column_sums_of_b is not None
    sums = column_sums_of_b if want_sums else _NO_SUMS
    pack_dtype = kernel.pack_dtype or dtype
    terms = kernel.terms(precision)
    rows = kernel.rows
    nr = tile_cols(dtype.itemsize)
    kc_target, mc_panels, nc_panels = blocking(dtype.itemsize)
    if pack_dtype != dtype:
        # a bf16 step holds two K values in the bytes of one float32: the same panel
        # bytes in L1/L2 cover twice the K (divided among bf16x3's three terms), so each
        # pass over C does twice the work (256x784x512 bf16 on one Zen 5 core: 357 -> 398
        # GFLOP/s, K in one block)
        kc_target = max(64, kc_target * 2 // terms)
    tile = np.empty((rows, nr), dtype=dtype)
    small = 2 * m * n * k <= _SERIAL_FLOPS
    if small and n < nr and n < m and not accumulate:
        depth = min(k, KC)
        steps = steps_for(depth, terms, pack_dtype)
        apack = _panels(n, rows, steps, pack_dtype, "a")
        bpack = _panels(m, nr, steps, pack_dtype, "b")
        drivers.narrow(a, b, out, bias, sums, apack, bpack, tile,
                       drivers.product(False, has_bias, code, want_sums, KC, terms))
        return out
    kc_max = _k_block(k, kc_target)
    nc_max = min(n, NC)
    steps = steps_for(kc_max, terms, pack_dtype)
    apack = _panels(m, rows, steps, pack_dtype, "a")
    bpack = _panels(nc_max, nr, steps, pack_dtype, "b")
    if small and n <= NC:
        drivers.serial(a, b, out, bias, sums, apack, bpack, tile, bpack,
                       drivers.product(accumulate, has_bias, code, want_sums, kc_max, terms))
        return out
    # One thread: the same blocked loops compiled without threads, so that a large
    # product keeps its blocks in L1/L2 (the serial driver streams all of packed A past
    # each B micro-panel: 1024^3 bf16 on one Zen 5 core 234 -> 397 GFLOP/s, fp32 unchanged)
    one = get_num_threads() == 1
    pack_b = drivers.pack_b.serial if one else drivers.pack_b
    pack_a = drivers.pack_a.serial if one else drivers.pack_a
    macro = drivers.macro.serial if one else drivers.macro
    spec = drivers.product(accumulate, has_bias, code, want_sums, kc_max, terms, -1, mc_panels, nc_panels)
    for j0 in range(0, n, NC):
        nc = min(NC, n - j0)
        for k0 in range(0, k, kc_max):
            kc = min(kc_max, k - k0)
            pack_b(b, k0, kc, j0, nc, bpack, sums, want_sums, terms, nr)
            pack_a(a, k0, kc, apack, terms)
            macro(apack, bpack, kc, out, j0, nc, accumulate or k0 > 0, k0 + kc >= k, bias, spec)
    return out


def _forced_product(a, b, precision, kernel):
    return _run(a, b, np.empty((a.shape[0], b.shape[1]), a.dtype), None, None, False, None, kernel, precision)


_selection = selection.Selection(_forced_product, _reference_product)


def check_kernel(precision):
    """Choose the micro-kernel of float32 products at ``precision`` now (once per
    process): a bad ``KERNPROP_GEMM_KERNEL`` is a ValueError here, before any product."""
    _selection.kernel(precision)


def kernel_info():
    """{precision: the micro-kernel it runs here, with the reason when it is not the
    precision's own}, e.g. ``{"bf16": "bf16 avx512_bf16 vdpbf16ps 12x32", ...}``."""
    return _selection.info()


def select_kernel(precision, name):
    """Force micro-kernel ``name`` ("fp32", "bf16", "amx"; None: the rule again) for float32
    products at ``precision``; returns the previous kernel's name.  A kernel less
    accurate than the precision, unavailable on this CPU or failing its self-check is a
    ValueError."""
    return _selection.select(precision, name)


def gemm(a, b, out=None, bias=None, activation=None, accumulate=False, column_sums_of_b=None,
         precision="fp32"):
    """``out = activation(a @ b + bias)`` (or ``out += a @ b`` when ``accumulate``);
    ``a``, ``b`` of any strides, ``out`` C-contiguous.  When ``column_sums_of_b`` is a
    float64 (N,) array, the column sums of ``b`` are added to it during packing.
    ``precision`` applies to float32 operands (see ``kernprop.precision``).  Returns ``out``."""
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    kernel = selection.FP32 if a.dtype.itemsize == 8 else _selection.kernel(precision)
    return _run(a, b, out, bias, activation, accumulate, column_sums_of_b, kernel, precision)
