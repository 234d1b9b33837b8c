"""Which micro-kernel runs each precision on this CPU, chosen once per process.

Rule, per float32 precision, among the kernels at least as accurate as asked:
  * "fp32" runs the float32 FMA kernel.
  * "bf16" runs the bf16 pair kernel (``vdpbf16ps``) where the CPU has AVX512_BF16, it
    passes its self-check, and its measured peak is at least ``BF16_MIN_GAIN`` times the
    FMA kernel's (on Zen 4/5 it is twice: a pair per lane at the FMA's rate; on the
    Intel cores measured for issue 13 it is half the FMA rate, so there fp32 runs);
  * "bf16x3" is a bf16 GEMM over three times K: it runs the bf16 kernel only where
    that is ``BF16_MIN_GAIN`` times 3 faster than fp32, otherwise the fp32 kernel
    (faster there, and more accurate than asked).
Before a kernel is first used for a precision it multiplies a small odd-shaped product
(transposed and strided operands, K not a multiple of 2 or of a block) and compares it
with the NumPy reference of that precision (``self_check``); a kernel that fails is not
selected and ``kernel_info`` says why.  ``KERNPROP_GEMM_KERNEL`` (for example
``bf16=fp32`` or ``bf16=bf16,bf16x3=bf16``) or ``select_kernel`` forces a choice, which
must still be at least as accurate as the precision and available on the CPU.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from .microkernels import MR, NVEC, VECTOR_BYTES, host_has_avx512_bf16, peak_loop
from ....precision import PRECISIONS

BF16_MIN_GAIN = 1.25

# Pack dtypes: the micro-kernel follows them (drivers.micro_tile).
FLOAT_PACK = None  # the operands' own float dtype
BF16_PACK = np.dtype(np.uint32)


@dataclass(frozen=True)
class Kernel:
    """A micro-kernel: its name, the pack dtype that selects it, the precisions it can
    serve (at the bf16x3 terms it needs), and a one-line description."""

    name: str
    pack_dtype: object
    serves: tuple
    description: str

    def computes(self, precision):
        """The precision this kernel really computes when it serves ``precision``."""
        return precision if self.pack_dtype is BF16_PACK else "fp32"

    def terms(self, precision):
        """Virtual K steps per K step: 3 for bf16x3 on a bf16 kernel, else 1."""
        return 3 if self.pack_dtype is BF16_PACK and precision == "bf16x3" else 1


def _isa():
    from llvmlite import binding as llvm

    features = llvm.get_host_cpu_features()
    if features.get("avx512f"):
        return "avx512"
    return "avx2" if features.get("avx2") else "generic"


FP32 = Kernel("fp32", FLOAT_PACK, PRECISIONS, f"fp32 fma {_isa()} {MR}x{NVEC * VECTOR_BYTES // 4}")
BF16 = Kernel("bf16", BF16_PACK, ("bf16x3", "bf16"),
              f"bf16 avx512_bf16 vdpbf16ps {MR}x{NVEC * VECTOR_BYTES // 4}")
KERNELS = {kernel.name: kernel for kernel in (FP32, BF16)}


def unavailable_reason(kernel: Kernel) -> str | None:
    """Why ``kernel`` cannot run on this CPU, or None."""
    if kernel is BF16 and not host_has_avx512_bf16():
        return "this CPU has no AVX512_BF16"
    return None


@njit(cache=True)
def _peak_fp32(steps):
    return peak_loop(steps, 0)


@njit(cache=True)
def _peak_bf16(steps):
    return peak_loop(steps, 1)


def measured_peaks(steps=200_000, repeats=3):
    """One core's peak GFLOP/s of the FMA kernel's and the bf16 kernel's instruction
    (register-only loops of 24 independent accumulators, the best of ``repeats``)."""
    peaks = {}
    for name, loop, flops in (("fp32", _peak_fp32, 32), ("bf16", _peak_bf16, 64)):
        if name == "bf16" and not host_has_avx512_bf16():
            continue
        loop(10)
        best = min(_timed(loop, steps) for _ in range(repeats))
        peaks[name] = 24 * steps * flops / best / 1e9
    return peaks


def _timed(loop, steps):
    start = time.perf_counter()
    loop(steps)
    return time.perf_counter() - start


def self_check(product, precision, reference, seed=0):
    """Run ``product(a, b)`` on a small odd-shaped float32 product (a transposed view, a
    strided view, K odd and longer than one block) and compare it with
    ``reference(a, b, precision)``; returns None when it agrees within the accumulation
    bound of float32, else a one-line reason."""
    rng = np.random.default_rng(seed)
    m, k, n = 29, 601, 45
    a = rng.standard_normal((k, m)).astype(np.float32).T  # transposed view
    b = rng.standard_normal((k, 2 * n)).astype(np.float32)[:, ::2]  # strided view
    try:
        got = np.asarray(product(a, b))
    except Exception as error:  # a broken kernel must be refused, whatever it raises
        return f"self-check raised {type(error).__name__}: {error}"
    want = reference(a, b, precision)
    bound = 4 * k * np.finfo(np.float32).eps * (np.abs(a).astype(np.float64) @ np.abs(b))
    if got.shape != want.shape or not np.all(np.abs(got - want) <= bound):
        worst = np.nanmax(np.abs(got - want) - bound) if got.shape == want.shape else float("nan")
        return f"self-check failed: {precision} {m}x{k}x{n} off the reference by {worst:.3g} beyond the bound"
    return None


def parse_override(text):
    """``KERNPROP_GEMM_KERNEL``'s value -> {precision: kernel name}; a bare name applies
    to every precision it serves."""
    chosen = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        precision, _, name = item.rpartition("=")
        if name not in KERNELS:
            raise ValueError(f"KERNPROP_GEMM_KERNEL: unknown kernel {name!r}; known: {', '.join(KERNELS)}")
        if precision and precision not in PRECISIONS:
            raise ValueError(f"KERNPROP_GEMM_KERNEL: unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        for p in ([precision] if precision else KERNELS[name].serves):
            chosen[p] = name
    return chosen


class Selection:
    """The kernel of each precision, chosen on first use and remembered (thread-safe)."""

    def __init__(self, run_product, reference):
        self._run = run_product  # (a, b, precision, kernel) -> a @ b with that kernel
        self._reference = reference
        self._lock = threading.Lock()
        self._chosen = {}  # precision -> (Kernel, note)
        self._checked = {}  # (kernel name, precision) -> None or reason
        self._peaks = None

    def peaks(self):
        """Measured one-core peaks (GFLOP/s) by kernel name, measured once."""
        if self._peaks is None:
            self._peaks = measured_peaks()
        return self._peaks

    def check(self, kernel, precision):
        """None if ``kernel`` runs here and passes its self-check at ``precision``, else why not."""
        key = (kernel.name, precision)
        if key not in self._checked:
            reason = unavailable_reason(kernel)
            if reason is None:
                reason = self_check(lambda a, b: self._run(a, b, precision, kernel), kernel.computes(precision),
                                    self._reference)
            self._checked[key] = reason
        return self._checked[key]

    def _choose(self, precision):
        forced = parse_override(os.environ.get("KERNPROP_GEMM_KERNEL")).get(precision)
        if forced is not None:
            return self._force(precision, KERNELS[forced], "forced by KERNPROP_GEMM_KERNEL")
        if precision == "fp32":
            return FP32, ""
        reason = self.check(BF16, precision)
        if reason is not None:
            return FP32, f"bf16 kernel not used: {reason}"
        peaks = self.peaks()
        gain = peaks["bf16"] / peaks["fp32"] / BF16_MIN_GAIN
        needed = 3.0 if precision == "bf16x3" else 1.0
        if gain < needed:
            return FP32, (f"bf16 pairs run at {peaks['bf16'] / peaks['fp32']:.2f}x the fp32 rate here, "
                          f"so {precision} as bf16 would not be faster than fp32")
        return BF16, ""

    def _force(self, precision, kernel, note):
        if precision not in kernel.serves:
            raise ValueError(f"kernel {kernel.name!r} is less accurate than precision {precision!r}")
        reason = self.check(kernel, precision)
        if reason is not None:
            raise ValueError(f"kernel {kernel.name!r} cannot run {precision!r} here: {reason}")
        return kernel, note

    def kernel(self, precision):
        """The Kernel that runs float32 products at ``precision``."""
        chosen = self._chosen.get(precision)
        if chosen is None:
            with self._lock:
                chosen = self._chosen.get(precision)
                if chosen is None:
                    chosen = self._chosen[precision] = self._choose(precision)
        return chosen[0]

    def select(self, precision, name):
        """Force kernel ``name`` (or the rule again, for None) for ``precision``; returns
        the previous kernel's name.  Raises ValueError for a kernel less accurate than the
        precision or one that cannot run here."""
        check_precision_name(precision)
        previous = self.kernel(precision).name
        with self._lock:
            if name is None:
                self._chosen.pop(precision, None)
            else:
                if name not in KERNELS:
                    raise ValueError(f"unknown kernel {name!r}; known: {', '.join(KERNELS)}")
                self._chosen[precision] = self._force(precision, KERNELS[name], "forced by select_kernel")
        return previous

    def info(self):
        """{precision: description of the kernel it runs (and why, when not the obvious one)}."""
        out = {}
        for precision in PRECISIONS:
            kernel = self.kernel(precision)
            note = self._chosen[precision][1]
            out[precision] = kernel.description + (f" ({note})" if note else "")
        return out


def check_precision_name(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
