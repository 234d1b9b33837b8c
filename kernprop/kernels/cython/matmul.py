"""Cython GEMM and linear layer: loaders over ``kernprop._cy.matmul`` (pyx/matmul.pyx).

The kernel packs its operands from any strides, so transposed views are passed as they
are (``dy @ w.T`` and ``x.T @ dy`` copy nothing before the packing).

Micro-kernels and precision.  The instruction-set row (``kernprop.isa``: the CPU's own,
capped by ``KERNPROP_MAX_ISA``) says which kernels may run and gives the tile its
blocking is sized for; pyx/matmul.pyx runs one of: ``generic``, ``avx2``,
``avx512`` (fp32 and fp64 FMA tiles) and ``avx512_bf16`` (``vdpbf16ps``: operands
rounded to bf16 with integer round-to-nearest-even while packing, fp32 accumulation).
The rule, per float32 precision (float64 always runs the best fp32/fp64 kernel):

    "fp32"    the best FMA kernel the CPU runs (AVX-512, then AVX2, then generic)
    "bf16x3"  the same: it is more accurate than bf16x3 asks, and three bf16 products
              cost more than one fp32 product without AMX
    "bf16"    avx512_bf16 where the CPU has it and it measures faster than the fp32
              kernel here (AMD Zen 5: about 1.7x); else the fp32 kernel.  amx_bf16
              (Intel AMX tiles) is written but was never run by a test: only
              ``select_kernel``/the environment variable choose it, after its self-check

Before a kernel first runs in a process it multiplies a small odd-shaped product
(``self_check``) and is compared with the NumPy reference at its precision; a kernel that
fails is never selected and ``kernel_info`` says why.  Tests force a kernel with
``select_kernel(precision, name)`` or the environment variable
``KERNPROP_CYTHON_GEMM_KERNEL`` (``avx2``: every precision; ``fp32=avx2,bf16=avx512_bf16``:
per precision; the full names ``kernel_info`` prints, ``fp32_avx2_6x16``, work too: the
syntax of the numba engine's ``KERNPROP_GEMM_KERNEL``), read at the first product.
"""

import os
import threading
import time

import numpy as np

from kernprop._cy import matmul as _cy

from ... import isa
from ..reference import matmul as _reference

# Activation codes of pyx/_common.pxi.
_ACTIVATION_CODES = {None: 0, "relu": 1, "sigmoid": 2, "tanh": 3}

PRECISIONS = ("fp32", "bf16x3", "bf16")
ENV_OVERRIDE = "KERNPROP_CYTHON_GEMM_KERNEL"
_TILES = dict(zip(_cy.KERNEL_NAMES, _cy.KERNEL_TILES))
# The instruction-set row this process runs (kernprop.isa: the CPU's own, capped by
# KERNPROP_MAX_ISA): it names the best fp32/fp64 kernel and the bf16 kernels allowed.
ROW = isa.active_row()
_FLOAT_ORDER = ("generic", "avx2", "avx512")
_BF16_UNITS = {"avx512_bf16": "vdpbf16ps", "amx_bf16": "amx"}


def _float_kernels():
    # the build's and CPU's fp32/fp64 kernels that the row allows, best last
    limit = _FLOAT_ORDER.index(ROW.cython_kernel)
    return [name for name in _cy.gemm_kernels() if _FLOAT_ORDER.index(name) <= limit]


def _bf16_kernels():
    return [name for name in _cy.bf16_kernels() if _BF16_UNITS.get(name) in ROW.bf16_kernels]


def available_kernels():
    """Names of the micro-kernels this CPU, this build and the instruction-set row
    (``KERNPROP_MAX_ISA``) run: fp32 ones, then bf16."""
    return _float_kernels() + _bf16_kernels()


def full_name(name):
    """The kernel's name with its kind, instruction set and tile: ``fp32_avx2_6x16``."""
    if name.endswith("bf16"):
        return f"bf16_{name[:-len('_bf16')]}_{_TILES[name]}"
    return f"fp32_{name}_{_TILES[name]}"


def _short_name(name):
    # a full name (as kernel_info prints it) -> the kernel's own name; others unchanged
    for known in _cy.KERNEL_NAMES:
        if name == full_name(known):
            return known
    return name


def _is_bf16(name):
    return name.endswith("bf16")


def _kernel_precision(name):
    # the precision a kernel computes natively
    return "bf16" if _is_bf16(name) else "fp32"


def _einsum_product(a, b, precision):
    # the reference product at ``precision`` in float64, without BLAS: a NumPy matmul
    # here would wake OpenBLAS's threads, which then spin against the OpenMP threads of
    # the first products (measured: 256^3 took 24 ms instead of 0.07 for 0.2 s)
    if precision == "bf16":
        a, b = _reference.round_bf16(a), _reference.round_bf16(b)
    elif precision == "bf16x3":
        (a_hi, a_lo), (b_hi, b_lo) = _reference.split_bf16(a), _reference.split_bf16(b)
        return (_einsum_product(a_hi, b_hi, "fp32")
                + (_einsum_product(a_hi, b_lo, "fp32") + _einsum_product(a_lo, b_hi, "fp32")))
    return np.einsum("ik,kj->ij", a.astype(np.float64), b.astype(np.float64), optimize=False)


def self_check(product, precision, seed=0):
    """None when ``product(a, b)`` matches the reference at ``precision`` on a small
    odd-shaped float32 product (edge tiles, two K blocks), else the reason as a string.

    The bound is float32 accumulation, 4 sqrt(K) 2^-24 sum|a||b| per element (rounding
    errors of a K-long sum grow as sqrt(K); the worst case K 2^-24 would let through an
    error as large as bf16 rounding, 2^-9 relative, which this must catch)."""
    rng = np.random.default_rng(seed)
    m, k, n = 23, 301, 37
    a = rng.uniform(-2, 2, (m, k)).astype(np.float32)
    b = rng.uniform(-2, 2, (k, n)).astype(np.float32)[:, ::-1]
    want = _einsum_product(a, b, precision)
    try:
        got = np.asarray(product(a, b), dtype=np.float64)
    except Exception as error:  # a kernel that cannot even run is refused too
        return f"self-check raised {error!r}"
    bound = 4 * np.sqrt(k) * 2.0**-24 * _einsum_product(np.abs(a), np.abs(b), "fp32")
    if got.shape != want.shape or not np.all(np.abs(got - want) <= bound):
        error = np.max(np.abs(got - want) / bound) if got.shape == want.shape else np.inf
        return f"self-check failed: {m}x{k}x{n} product off by {error:.3g} x the float32 bound"
    return None


def _forced_product(name):
    code = _cy.kernel_code(name)

    def product(a, b):
        out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
        _cy.gemm(a, b, out, False, None, 0, code)
        return out

    return product


def _seconds(name, repeats=3):
    # best time of a (192, 512) @ (512, 256) product with kernel ``name``, one thread's
    # worth of tiles: enough to rank kernels, a few milliseconds in all
    rng = np.random.default_rng(1)
    a = rng.standard_normal((192, 512)).astype(np.float32)
    b = rng.standard_normal((512, 256)).astype(np.float32)
    product = _forced_product(name)
    product(a, b)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b)
        best = min(best, time.perf_counter() - start)
    return best


def _parse_override(text):
    # "avx2" -> every precision; "fp32=avx2,bf16=avx512_bf16" -> per precision
    if not text:
        return {}
    forced = {}
    for item in text.split(","):
        precision, _, name = item.strip().rpartition("=")
        for p in (precision,) if precision else PRECISIONS:
            if p not in PRECISIONS:
                raise ValueError(f"{ENV_OVERRIDE}: unknown precision {p!r}; known: {', '.join(PRECISIONS)}")
            forced[p] = _short_name(name)
    return forced


class _Selection:
    """The kernel each precision runs, chosen at the first product by the rule (or an
    override), each kernel self-checked once; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._chosen = {}    # precision -> (kernel name, note)
        self._checked = {}   # kernel name -> None (passed) or the reason it failed

    def _check(self, name):
        if name not in self._checked:
            self._checked[name] = self_check(_forced_product(name), _kernel_precision(name))
        return self._checked[name]

    def _validate(self, precision, name):
        if name not in available_kernels():
            raise ValueError(f"GEMM kernel {name!r} not available here; have {available_kernels()}")
        if _is_bf16(name) and precision != "bf16":
            raise ValueError(f"GEMM kernel {name!r} is less accurate than precision {precision!r}")
        reason = self._check(name)
        if reason is not None:
            raise ValueError(f"GEMM kernel {name!r} refused: {reason}")

    def _rule(self, precision):
        fp32 = None
        for name in reversed(_float_kernels()):
            if self._check(name) is None:
                fp32 = (name, "")
                break
            note = f"{name} refused: {self._checked[name]}"
        if fp32 is None:
            raise RuntimeError(f"no GEMM kernel passed its self-check ({note})")
        if precision == "fp32":
            return fp32
        if precision == "bf16x3":
            return fp32[0], "more accurate than bf16x3: no faster bf16x3 kernel without AMX"
        # amx_bf16 is never chosen here: no test has run it (see pyx/gemm/amx_bf16.c)
        for name in [name for name in _bf16_kernels() if name != "amx_bf16"]:
            reason = self._check(name)
            if reason is not None:
                return fp32[0], f"fp32 kernel: {name} refused ({reason})"
            # interleaved, best of each: one measurement alone was once disturbed enough
            # (another process on the core) to give 0.02x and keep a 2x faster kernel out
            bf16_s, fp32_s = np.inf, np.inf
            for _ in range(3):
                bf16_s, fp32_s = min(bf16_s, _seconds(name)), min(fp32_s, _seconds(fp32[0]))
            if bf16_s < fp32_s:
                return name, f"measured {fp32_s / bf16_s:.2f}x the fp32 kernel"
            return fp32[0], f"fp32 kernel: {name} measured {fp32_s / bf16_s:.2f}x its speed"
        return fp32[0], f"fp32 kernel: the {ROW.name} row has no bf16 unit"

    def kernel(self, precision):
        chosen = self._chosen.get(precision)
        if chosen is None:
            with self._lock:
                chosen = self._chosen.get(precision)
                if chosen is None:
                    forced = _parse_override(os.environ.get(ENV_OVERRIDE)).get(precision)
                    if forced is not None:
                        self._validate(precision, forced)
                        chosen = (forced, f"forced by {ENV_OVERRIDE}")
                    else:
                        chosen = self._rule(precision)
                    self._chosen[precision] = chosen
        return chosen[0]

    def select(self, precision, name):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        with self._lock:
            previous = self._chosen.get(precision, (None, ""))[0]
            if name is None:
                self._chosen.pop(precision, None)
            else:
                name = _short_name(name)
                self._validate(precision, name)
                self._chosen[precision] = (name, "forced by select_kernel")
        return previous

    def info(self):
        out = {}
        for precision in PRECISIONS:
            name = self.kernel(precision)
            note = self._chosen[precision][1]
            detail = {"avx512_bf16": " vdpbf16ps", "amx_bf16": " tdpbf16ps (untested)"}.get(name, "" if name == "generic" else " fma")
            out[precision] = f"{full_name(name)}{detail}" + (f" ({note})" if note else "")
        return out


_selection = _Selection()


def blocking_for(l1d, l2, sliver_row_bytes=128):
    """(K-block words, A-block rows) for caches of ``l1d`` and ``l2`` bytes: a B sliver
    of the row's tile (``sliver_row_bytes`` a row: 128 for the AVX-512 tiles, 64 for
    avx2) fills two thirds of L1 (the A sliver and C streaming past take the rest); the
    packed A block a quarter of L2.  Measured on AMD EPYC Zen 5 (48 KiB, 1 MiB -> 256,
    252): fp32 flat from 128 to 384 words, bf16 10% slower at 128; rows 72 to 504 within
    noise.  On AMD EPYC Zen 3 (32 KiB, 512 KiB; avx2 -> 336, 96) 1024^3 on one core ran
    at 72-81 GFLOP/s against 55-72 with the AVX-512 tile's 160 words."""
    kc = max(128, min(384, (2 * l1d // 3) // sliver_row_bytes // 16 * 16))
    mc = max(72, min(504, l2 // 4 // (4 * kc) // 12 * 12))
    return kc, mc


_cy.set_blocking(*blocking_for(isa.cache_bytes(1, ("Data",)) or 32 * 1024, isa.cache_bytes(2) or 1 << 20,
                               max(64, ROW.cython_tile.nvec * ROW.cython_tile.vector_bytes)))


def check_kernel(precision):
    """Choose the kernel of float32 products at ``precision`` now (once per process): a
    bad ``KERNPROP_CYTHON_GEMM_KERNEL`` is a ValueError here, before any product."""
    _selection.kernel(precision)


def kernel_info():
    """{precision: the micro-kernel float32 products at that precision run here, with
    the reason when it is not the precision's own}, e.g. ``{"fp32": "fp32 avx512 6x32",
    "bf16": "bf16 avx512_bf16 vdpbf16ps 6x32 (measured 1.7x the fp32 kernel)", ...}``."""
    return _selection.info()


def select_kernel(precision, name):
    """Force micro-kernel ``name`` (one of ``available_kernels()``; None: the rule
    again) for float32 products at ``precision``; returns the previous kernel's name.
    A kernel less accurate than the precision, unavailable here or failing its
    self-check is a ValueError.  Not thread-safe against products in flight."""
    return _selection.select(precision, name)


def _code(dtype, precision):
    # float64 computes in float64 whatever the precision: the fp32/fp64 kernel
    if dtype == np.float64:
        precision = "fp32"
    return _cy.kernel_code(_selection.kernel(precision))


def gemm(a, b, out, accumulate=False, bias=None, activation=0, precision="fp32"):
    """``out = activation(a @ b + bias)`` (or ``out += a @ b``) with the kernel chosen
    for ``precision``; ``out`` C-contiguous rows.  Returns ``out``."""
    _cy.gemm(a, b, out, accumulate, bias, activation, _code(a.dtype, precision))
    return out


def matmul(a, b, precision="fp32"):
    # a (M, K), b (K, N) -> (M, N)
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    return gemm(a, b, out, precision=precision)


def contiguous_bias(b):
    """The bias as the kernel reads it: None, or a contiguous (OUT,) array."""
    return None if b is None else np.ascontiguousarray(b)


def linear_forward(x, w, b, activation, precision="fp32"):
    # x (N, IN), w (IN, OUT), b (OUT,) or None -> y (N, OUT); bias and activation are
    # applied by the thread that owns each block of rows, right after its product.
    y = np.empty((x.shape[0], w.shape[1]), dtype=x.dtype)
    return gemm(x, w, y, False, contiguous_bias(b), _ACTIVATION_CODES[activation], precision)


def linear_backward(x, w, dy, has_bias, need_dx=True, precision="fp32"):
    # y = x @ w + b: dx (N, IN) = dy @ w.T, dw (IN, OUT) = x.T @ dy, db (OUT,) = dy summed
    # over rows (in float64, then cast)
    dx = None
    if need_dx:
        dx = gemm(dy, w.T, np.empty(x.shape, dtype=x.dtype), precision=precision)
    dw = gemm(x.T, dy, np.empty(w.shape, dtype=x.dtype), precision=precision)
    db = None
    if has_bias:
        sums = np.zeros(dy.shape[1], dtype=np.float64)
        _cy.column_sums(dy, sums)
        db = sums.astype(x.dtype)
    return dx, dw, db
