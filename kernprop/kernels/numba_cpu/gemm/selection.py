"""Which micro-kernel runs each precision on this CPU, chosen once per process.

Rule, per float32 precision, among the kernels at least as accurate as asked:
  * "fp32" runs the float32 FMA kernel.
  * "bf16" runs the fastest bf16 kernel that this CPU runs, that passes its self-check
    and whose measured peak is at least ``BF16_MIN_GAIN`` times the FMA kernel's: AMX
    (``tdpbf16ps``) first, then the AVX512_BF16 pair kernel (``vdpbf16ps``: on Zen 4/5
    twice the FMA rate; on the Intel cores measured for issue 13 half of it, so there
    fp32 runs unless AMX does).
  * "bf16x3" is a bf16 GEMM over three times K: it runs a bf16 kernel only where that
    is ``BF16_MIN_GAIN`` times 3 faster than fp32, otherwise the fp32 kernel (faster
    there, and more accurate than asked).
Before a kernel is first used for a precision it multiplies a small odd-shaped product
(transposed and strided operands, K not a multiple of 2 or of a block) and compares it
with the NumPy reference of that precision (``self_check``); a kernel that fails is not
selected and ``kernel_info`` says why.  The AMX kernel, which no test machine of this
project has run yet, first runs that check in a child process, so that a kernel that
crashes (SIGILL, a bad tile configuration) costs the child, not the caller.  ``KERNPROP_GEMM_KERNEL`` (for example
``bf16=fp32`` or ``bf16=bf16,bf16x3=bf16``) or ``select_kernel`` forces a choice, which
must still be at least as accurate as the precision and available on the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from .microkernels import (AMX_ROWS, F32_LANES, MR, NVEC, ROW, VECTOR_BYTES, host_has_amx_bf16,
                           host_has_avx512_bf16, peak_loop, request_amx)
from ....isa import ENV_MAX_ISA, native_row
from ....precision import PRECISIONS, check_precision

BF16_MIN_GAIN = 1.25

# Pack dtypes: the micro-kernel follows them (drivers.micro_tile).
FLOAT_PACK = None  # the operands' own float dtype
BF16_PACK = np.dtype(np.uint32)  # bf16 pairs, vdpbf16ps layout
AMX_PACK = np.dtype(np.int32)  # bf16 pairs, AMX tile layout
_BF16_PACKS = (BF16_PACK, AMX_PACK)
# set in the child process that runs an isolated self-check
_CHILD = "KERNPROP_GEMM_SELF_CHECK_CHILD"


@dataclass(frozen=True)
class Kernel:
    """A micro-kernel: its short name (``fp32``, ``bf16``, ``amx``: what
    ``KERNPROP_GEMM_KERNEL`` and ``select_kernel`` take), its full name (instruction set
    and tile: ``fp32_avx2_6x16``, also accepted), the pack dtype that selects it, the
    precisions it can serve (at the bf16x3 terms it needs), and a one-line description."""

    name: str
    full_name: str
    pack_dtype: object
    serves: tuple
    description: str
    rows: int = MR  # rows of its A panels and output tile
    peak_kind: int = 0  # microkernels.peak_loop kind
    flops_per_step: int = MR * NVEC * F32_LANES * 2  # of that peak loop, per step
    isolated_check: bool = False  # run the first self-check in a child process

    def computes(self, precision):
        """The precision this kernel really computes when it serves ``precision``."""
        return precision if self.pack_dtype in _BF16_PACKS else "fp32"

    def terms(self, precision):
        """Virtual K steps per K step: 3 for bf16x3 on a bf16 kernel, else 1."""
        return 3 if self.pack_dtype in _BF16_PACKS and precision == "bf16x3" else 1


_NR = NVEC * VECTOR_BYTES // 4
FP32 = Kernel("fp32", ROW.kernel_name("fp32"), FLOAT_PACK, PRECISIONS,
              f"{ROW.kernel_name('fp32')} fma")
BF16 = Kernel("bf16", f"bf16_avx512_bf16_{MR}x{_NR}", BF16_PACK, ("bf16x3", "bf16"),
              f"bf16_avx512_bf16_{MR}x{_NR} vdpbf16ps", peak_kind=1, flops_per_step=MR * NVEC * F32_LANES * 4)
AMX = Kernel("amx", f"bf16_amx_{AMX_ROWS}x32", AMX_PACK, ("bf16x3", "bf16"), f"bf16_amx_{AMX_ROWS}x32 tdpbf16ps",
             rows=AMX_ROWS, peak_kind=2, flops_per_step=4 * 16 * 16 * 32 * 2, isolated_check=True)
KERNELS = {kernel.name: kernel for kernel in (FP32, BF16, AMX)}
# the full names too, for one override syntax whatever a user copied from ``kernprop info``
_BY_ANY_NAME = {**KERNELS, **{kernel.full_name: kernel for kernel in KERNELS.values()}}
# the bf16 kernels, fastest first where several run
BF16_KERNELS = (AMX, BF16)


_CAPPED = f" ({ENV_MAX_ISA} caps this CPU's {native_row().name})" if native_row() != ROW else ""


def unavailable_reason(kernel: Kernel) -> str | None:
    """Why ``kernel`` cannot run on this CPU (or in this process), or None."""
    if kernel is BF16 and not host_has_avx512_bf16():
        return f"the {ROW.name} row runs no AVX512_BF16" + _CAPPED
    if kernel is AMX:
        if not host_has_amx_bf16():
            return f"the {ROW.name} row runs no AMX-BF16" + _CAPPED
        if not request_amx():
            return "Linux did not grant the AMX tile data state (arch_prctl)"
    return None


@njit(cache=True)
def _peak_fp32(steps):
    return peak_loop(steps, 0)


@njit(cache=True)
def _peak_bf16(steps):
    return peak_loop(steps, 1)


@njit(cache=True)
def _peak_amx(steps):
    return peak_loop(steps, 2)


_PEAK_LOOPS = {0: _peak_fp32, 1: _peak_bf16, 2: _peak_amx}


def measured_peaks(kernels=None, steps=200_000, repeats=3):
    """One core's peak GFLOP/s of the instruction of each of ``kernels`` (default: all
    that run here) (register-only loops: 24 independent FMA / ``vdpbf16ps``
    accumulators, or 4 AMX tiles; the best of ``repeats``), by kernel name."""
    peaks = {}
    for kernel in kernels or KERNELS.values():
        if unavailable_reason(kernel) is not None:
            continue
        loop = _PEAK_LOOPS[kernel.peak_kind]
        kernel_steps = steps if kernel.peak_kind != 2 else max(1, steps // 8)
        loop(10)
        best = min(_timed(loop, kernel_steps) for _ in range(repeats))
        peaks[kernel.name] = kernel_steps * kernel.flops_per_step / best / 1e9
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


def isolated_self_check(kernel, precision, timeout=300):
    """Run ``kernel``'s self-check at ``precision`` in a child Python process; None when
    it passes there, else the reason (a crash included)."""
    code = ("from kernprop.kernels.numba_cpu import gemm; "
            f"print(gemm.select_kernel({precision!r}, {kernel.name!r}) is not None)")
    env = dict(os.environ, **{_CHILD: "1"})
    env.pop("KERNPROP_GEMM_KERNEL", None)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"isolated self-check did not finish: {error}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return f"isolated self-check exited with status {done.returncode}: {lines[-1] if lines else ''}"
    return None


def parse_override(text):
    """``KERNPROP_GEMM_KERNEL``'s value -> {precision: kernel name}; a bare name applies
    to every precision it serves."""
    chosen = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        precision, _, name = item.rpartition("=")
        if name not in _BY_ANY_NAME:
            raise ValueError(f"KERNPROP_GEMM_KERNEL: unknown kernel {name!r}; known: {', '.join(_BY_ANY_NAME)}")
        name = _BY_ANY_NAME[name].name
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
        self._peaks = {}

    def peaks(self, kernels=(FP32,)):
        """Measured one-core peaks (GFLOP/s) of ``kernels`` by name, each measured once
        (only kernels that passed their self-check are ever asked for)."""
        missing = [kernel for kernel in kernels if kernel.name not in self._peaks]
        if missing:
            self._peaks.update(measured_peaks(missing))
        return self._peaks

    def check(self, kernel, precision):
        """None if ``kernel`` runs here and passes its self-check at ``precision``, else why not."""
        key = (kernel.name, precision)
        if key not in self._checked:
            reason = unavailable_reason(kernel)
            if reason is None and kernel.isolated_check and not os.environ.get(_CHILD):
                reason = isolated_self_check(kernel, precision)
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
        notes = []
        for kernel in BF16_KERNELS:
            if unavailable_reason(kernel) is not None:
                continue
            reason = self.check(kernel, precision)
            if reason is not None:
                notes.append(f"{kernel.name} not used: {reason}")
                continue
            peaks = self.peaks((FP32, kernel))
            ratio = peaks.get(kernel.name, 0.0) / peaks["fp32"]
            needed = 3.0 if precision == "bf16x3" else 1.0
            if ratio / BF16_MIN_GAIN < needed:
                notes.append(f"{kernel.name} runs at {ratio:.2f}x the fp32 rate here, so {precision} on it "
                             f"would not be faster than fp32")
                continue
            return kernel, "; ".join(notes)
        if not notes:
            notes.append("no bf16 kernel runs on this CPU")
        return FP32, "; ".join(notes)

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
        check_precision(precision)
        previous = self.kernel(precision).name
        with self._lock:
            if name is None:
                self._chosen.pop(precision, None)
            else:
                if name not in _BY_ANY_NAME:
                    raise ValueError(f"unknown kernel {name!r}; known: {', '.join(_BY_ANY_NAME)}")
                self._chosen[precision] = self._force(precision, _BY_ANY_NAME[name], "forced by select_kernel")
        return previous

    def info(self):
        """{precision: description of the kernel it runs (and why, when not the obvious one)}."""
        out = {}
        for precision in PRECISIONS:
            kernel = self.kernel(precision)
            note = self._chosen[precision][1]
            out[precision] = kernel.description + (f" ({note})" if note else "")
        return out
