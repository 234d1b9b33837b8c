"""The CPU GEMM configuration: one row per instruction set, read by both CPU engines.

The shape of BLIS's ``config/<arch>/`` and oneDNN's ``cpu_isa_traits``: the GEMM
framework (packing, blocking, drivers) never hard-codes a register tile; it asks the row
of the instruction set it runs on.  Both engines read this table: the ``numba`` engine
(``kernels/numba_cpu/gemm``) builds its LLVM-IR micro-kernels from the row's tile, the
``cython`` engine (``pyx/gemm``) runs the C micro-kernel the row names.

    row           vectors  fp32 tile (numba | cython)  bf16 kernel     CPUs
    generic       16 B     6 x 8   | 4 x 8             -               any (x86-64 baseline, SSE2)
    avx2          32 B     6 x 16  | 6 x 16            -               Haswell+, Zen 1-3, Intel client cores
    avx512        64 B     12 x 32 | 6 x 32            -               Skylake-SP+, Zen 4/5
    avx512_bf16   64 B     12 x 32 | 6 x 32            vdpbf16ps       Zen 4/5, Cooper Lake, Sapphire Rapids+
    amx           64 B     12 x 32 | 6 x 32            tdpbf16ps 32x32 Sapphire Rapids+
    neon          16 B     8 x 12  | 4 x 8             -               ARM64 (Graviton, Ampere, Apple)

Each tile fills the vector registers without spilling: ``mr * nvec`` accumulators, ``nvec``
B vectors and one broadcast of A (avx2: 12 + 2 + 1 of 16 ymm, BLIS haswell's 6x16;
avx512: 24 + 2 + 1 of 32 zmm; neon: 24 + 3 + 1 of 32 q registers, BLIS armv8a's 8x12).
``tests/test_isa.py`` compiles every row's micro-kernel for the CPUs of its row
(haswell, znver3, skylake-avx512, znver4, sapphirerapids, neoverse-n1, neoverse-v1,
apple-m1) and checks that the inner loop touches no stack.

``KERNPROP_MAX_ISA`` caps the row (like ``ONEDNN_MAX_CPU_ISA`` and
``OPENBLAS_CORETYPE``): ``KERNPROP_MAX_ISA=avx2`` on an AVX-512 machine runs and tests
the avx2 row exactly as an AVX2 machine picks it (tiles, kernels, blocking, selection);
a cap above what the CPU runs changes nothing.  It is read once, at the first product.

Adding an instruction set: one ``IsaRow`` here and one micro-kernel per engine.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

__all__ = ["IsaRow", "Tile", "ROWS", "ENV_MAX_ISA", "active_row", "native_row", "row", "blocking",
           "cache_bytes", "cpu_features"]

ENV_MAX_ISA = "KERNPROP_MAX_ISA"


@dataclass(frozen=True)
class Tile:
    """A register tile: ``mr`` rows of A broadcast against ``nvec`` vectors of
    ``vector_bytes`` of a row of B (``cols`` = nvec * vector_bytes / itemsize)."""

    mr: int
    nvec: int
    vector_bytes: int

    def cols(self, itemsize):
        return self.nvec * self.vector_bytes // itemsize

    def shape(self, itemsize=4):
        return f"{self.mr}x{self.cols(itemsize)}"


@dataclass(frozen=True)
class IsaRow:
    """One instruction set: what it needs of the CPU, its register tiles and kernels."""

    name: str
    arch: str                 # "x86_64", "aarch64" or "any"
    needs: tuple              # LLVM feature names the CPU must report
    level: int                # order of the cap: a row runs where every lower one does
    tile: Tile                # the numba engine's fp32/fp64 tile (fp64: half the columns)
    cython_kernel: str        # the cython engine's fp32/fp64 micro-kernel
    cython_tile: Tile
    fused_multiply_add: bool  # whether the row's CPUs have FMA (else mul + add)
    bf16_kernels: tuple = ()  # bf16 kernels the row adds: "vdpbf16ps", "amx"
    registers: int = 16       # vector registers

    def kernel_name(self, dtype="fp32", engine="numba"):
        """The name of the row's float kernel, instruction set and shape: ``fp32_avx2_6x16``."""
        itemsize = 8 if dtype == "fp64" else 4
        tile = self.tile if engine == "numba" else self.cython_tile
        return f"{dtype}_{self.name}_{tile.shape(itemsize)}"


_ZMM_TILE, _ZMM_CYTHON = Tile(12, 2, 64), Tile(6, 2, 64)
_AVX512 = ("avx512f", "fma")
ROWS = {
    row.name: row
    for row in (
        # SSE2's 16 xmm: 12 accumulators + 2 B + 1 broadcast; no FMA assumed
        IsaRow("generic", arch="any", needs=(), level=0, tile=Tile(6, 2, 16), cython_kernel="generic",
               cython_tile=Tile(4, 2, 16), fused_multiply_add=False),
        # BLIS haswell's 6x16: 15 of 16 ymm (4x24, the other shape that fits, measured
        # slower at 1024^3 on a Zen 3 core: 55 against 84 GFLOP/s)
        IsaRow("avx2", arch="x86_64", needs=("avx2", "fma"), level=1, tile=Tile(6, 2, 32), cython_kernel="avx2",
               cython_tile=Tile(6, 2, 32), fused_multiply_add=True),
        # 27 of 32 zmm: twice the rows of the cython tile, so each B load feeds 12 FMAs
        IsaRow("avx512", arch="x86_64", needs=_AVX512, level=2, tile=_ZMM_TILE, cython_kernel="avx512",
               cython_tile=_ZMM_CYTHON, fused_multiply_add=True, registers=32),
        IsaRow("avx512_bf16", arch="x86_64", needs=_AVX512 + ("avx512bf16",), level=3, tile=_ZMM_TILE,
               cython_kernel="avx512", cython_tile=_ZMM_CYTHON, fused_multiply_add=True,
               bf16_kernels=("vdpbf16ps",), registers=32),
        IsaRow("amx", arch="x86_64", needs=_AVX512 + ("avx512bf16", "amx-tile", "amx-bf16"), level=4,
               tile=_ZMM_TILE, cython_kernel="avx512", cython_tile=_ZMM_CYTHON, fused_multiply_add=True,
               bf16_kernels=("vdpbf16ps", "amx"), registers=32),
        # BLIS armv8a's 8x12: 28 of 32 q registers; the cython engine has no NEON unit yet
        IsaRow("neon", arch="aarch64", needs=("neon",), level=1, tile=Tile(8, 3, 16), cython_kernel="generic",
               cython_tile=Tile(4, 2, 16), fused_multiply_add=True, registers=32),
    )
}


def _machine():
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@functools.lru_cache(maxsize=None)
def cpu_features():
    """The features LLVM reports for this CPU (what Numba compiles for), as a frozenset."""
    from llvmlite import binding as llvm

    features = {name for name, on in llvm.get_host_cpu_features().items() if on}
    if _machine() == "aarch64":
        features.add("neon")  # every ARMv8-A has Advanced SIMD; LLVM may not list it
    return frozenset(features)


def _runs(candidate, features, machine):
    return candidate.arch in ("any", machine) and all(name in features for name in candidate.needs)


def native_row(features=None, machine=None):
    """The highest row this CPU runs (by ``features``/``machine`` when given: tests)."""
    features = cpu_features() if features is None else frozenset(features)
    machine = machine or _machine()
    best = ROWS["generic"]
    for candidate in ROWS.values():
        if _runs(candidate, features, machine) and candidate.level > best.level:
            best = candidate
    return best


def row(name):
    """The row called ``name``; a ValueError naming the known ones otherwise."""
    try:
        return ROWS[name]
    except KeyError:
        raise ValueError(f"unknown instruction set {name!r}; known: {', '.join(ROWS)}") from None


def capped(cap, native):
    """The row that runs under the cap ``cap`` (a row name, or None/"" for none) on a CPU
    whose best row is ``native``: the cap's row where the CPU runs it, else ``native``.
    A row of another architecture (``neon`` on x86-64) is a ValueError."""
    if not cap:
        return native
    limit = row(cap.strip().lower())
    if limit.arch not in ("any", native.arch) and native.arch != "any":
        raise ValueError(f"{limit.name} is a row for {limit.arch} CPUs; this one runs {native.arch} rows")
    return limit if limit.level < native.level else native


@functools.lru_cache(maxsize=None)
def _active(cap):
    return capped(cap, native_row())


def active_row():
    """The row both engines run: the CPU's own, capped by ``KERNPROP_MAX_ISA``.  A bad
    value of the variable is a ValueError naming it."""
    cap = os.environ.get(ENV_MAX_ISA, "")
    try:
        return _active(cap.strip().lower())
    except ValueError as error:
        raise ValueError(f"{ENV_MAX_ISA}={cap!r}: {error}") from None


def cache_bytes(level, kinds=("Data", "Unified")):
    """This CPU's cache of ``level`` (1: the data cache) in bytes, from sysfs; None when
    it cannot be read."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            path = os.path.join(base, entry)
            with open(os.path.join(path, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(path, "type")) as f:
                if f.read().strip() not in kinds:
                    continue
            with open(os.path.join(path, "size")) as f:
                text = f.read().strip().upper()
            scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1], 1)
            return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return None


def blocking(tile, itemsize, l1=None, l2=None):
    """(KC, MC rows, NC columns) for ``tile`` on elements of ``itemsize`` bytes: the K
    depth keeps an A micro-panel (KC x MR) in half of L1 while B micro-panels stream past
    it; a task's B block (KC x NC) fits in half of L2; a task's A block is 12 micro-panels
    (BLIS's MC).  Caches default to 32 KiB and 1 MiB where sysfs does not tell."""
    l1 = l1 or cache_bytes(1, ("Data",)) or 32 * 1024
    l2 = l2 or cache_bytes(2) or 1024 * 1024
    kc = max(128, min(512, l1 // (2 * tile.mr * itemsize)) // 16 * 16)
    nr = tile.cols(itemsize)
    nc_panels = max(2, min(16, l2 // (2 * kc * nr * itemsize)))
    return kc, 12 * tile.mr, nc_panels * nr


def cpu_name():
    """The CPU's model name (``/proc/cpuinfo``), or the machine type when not known."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or _machine()


def describe():
    """One line for ``kernprop info``: the CPU, the row both engines run and why, and
    the row's kernels.  A bad ``KERNPROP_MAX_ISA`` is a ValueError naming it."""
    active, native = active_row(), native_row()
    why = (f"{ENV_MAX_ISA}={os.environ.get(ENV_MAX_ISA)} caps this CPU's {native.name}" if active is not native
           else "this CPU's best")
    bf16 = ", ".join(active.bf16_kernels) or "none"
    return (f"CPU: {cpu_name()}; GEMM row: {active.name} ({why}); kernels: numba "
            f"{active.kernel_name('fp32')} / {active.kernel_name('fp64')}, cython "
            f"{active.kernel_name('fp32', 'cython')} / {active.kernel_name('fp64', 'cython')}; bf16 units: {bf16}")
