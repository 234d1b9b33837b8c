"""Static verification of the CUDA kernels without a GPU: ``kernprop cuda-check``.

The simulator runs kernels as Python, so it cannot see what only the device compilers
know: register pressure, spills to local memory, shared memory, a block size that cannot
launch, float64 arithmetic slipped into a float32 kernel.  This module compiles every
kernel variant the launchers start (``kernels.numba_cuda.launches``) to PTX with
numba-cuda (libNVVM, with NVRTC for its runtime helpers), assembles the PTX to SASS
with ``ptxas -v`` for a target architecture, and reads the report:

* registers per thread, stack frame, spill stores and loads, static shared memory;
* whether the launcher's block fits the register file and shared memory of one
  multiprocessor of that architecture, and the theoretical occupancy (resident warps
  over the maximum), computed as NVIDIA's occupancy calculator does;
* ``.f64`` arithmetic instructions in the PTX of float32 kernels.

A kernel fails when it spills (every kernel here is one loop nest around its hot loop,
so a spill is taken to be in it), when its block cannot launch, or when a float32 kernel
does float64 arithmetic it was not meant to (``Launch.wide``).  No GPU and no CUDA
driver are needed; the compilers come from the ``cuda`` extra's wheels (numba-cuda's
``cu13`` toolkit and ``nvidia-cuda-nvcc`` for ``ptxas``) or a CUDA toolkit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

__all__ = ["ARCHS", "Arch", "occupancy", "find_ptxas", "compilers", "parse_ptxas", "assemble", "compile_ptx",
           "check_one", "run", "markdown", "environment", "main", "report_page", "add_parser"]


@dataclass(frozen=True)
class Arch:
    """Per-multiprocessor limits of one architecture (CUDA C Programming Guide, table
    "Technical Specifications per Compute Capability")."""

    name: str
    cc: tuple
    gpus: str
    regs_per_sm: int = 65536
    regs_per_thread: int = 255
    threads_per_block: int = 1024
    warps_per_sm: int = 64
    blocks_per_sm: int = 32
    static_smem_per_block: int = 48 * 1024
    smem_per_sm: int = 0
    reserved_smem_per_block: int = 1024  # kept by the runtime for each resident block
    reg_unit: int = 256  # registers are allocated per warp in units of this
    subpartitions: int = 4  # the register file is split between 4 schedulers


ARCHS = {
    "sm_80": Arch("sm_80", (8, 0), "A100", smem_per_sm=164 * 1024),
    "sm_90": Arch("sm_90", (9, 0), "H100, H200", smem_per_sm=228 * 1024),
}


@dataclass(frozen=True)
class Occupancy:
    """How one kernel's block fits one multiprocessor."""

    launchable: bool
    limit: str  # what bounds the resident blocks: "threads", "registers", "smem", "blocks"
    blocks: int  # resident blocks per multiprocessor
    occupancy: float  # resident warps / maximum warps
    reason: str = ""  # why it cannot launch


def occupancy(arch: Arch, threads: int, registers: int, smem: int) -> Occupancy:
    """Theoretical occupancy of a block of ``threads`` using ``registers`` per thread and
    ``smem`` bytes of static shared memory on ``arch``."""
    if threads < 1 or registers < 0 or smem < 0:
        raise ValueError(f"threads must be >= 1 and registers, smem >= 0; got {threads}, {registers}, {smem}")
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // arch.reg_unit) * arch.reg_unit
    # each scheduler (subpartition) holds whole warps of its share of the register file
    warps_by_regs = (arch.regs_per_sm // arch.subpartitions // regs_per_warp) * arch.subpartitions
    smem_per_block = smem + arch.reserved_smem_per_block
    why = []
    if threads > arch.threads_per_block:
        why.append(f"{threads} threads > {arch.threads_per_block}")
    if registers > arch.regs_per_thread:
        why.append(f"{registers} registers > {arch.regs_per_thread}")
    if warps_by_regs < warps:
        why.append(f"{warps} warps x {regs_per_warp} registers > the register file")
    if smem > arch.static_smem_per_block:
        why.append(f"{smem} B static shared memory > {arch.static_smem_per_block}")
    if why:
        return Occupancy(False, "", 0, 0.0, "; ".join(why))
    bounds = {
        "threads": arch.warps_per_sm // warps,
        "registers": warps_by_regs // warps,
        "smem": arch.smem_per_sm // smem_per_block,
        "blocks": arch.blocks_per_sm,
    }
    limit = min(bounds, key=bounds.get)
    blocks = bounds[limit]
    return Occupancy(True, limit, blocks, blocks * warps / arch.warps_per_sm)


# --- compilers ---------------------------------------------------------------------------


def find_ptxas() -> str | None:
    """Path of ``ptxas``: ``$KERNPROP_PTXAS``, NVIDIA's wheels or a CUDA toolkit (found by
    cuda-pathfinder, as numba-cuda finds libNVVM), else the ``PATH``."""
    override = os.environ.get("KERNPROP_PTXAS")
    if override:
        return override
    try:
        from cuda.pathfinder import find_nvidia_binary_utility

        found = find_nvidia_binary_utility("ptxas")
        if found:
            return found
    except Exception:  # noqa: BLE001 - an old or missing pathfinder: fall back to PATH
        pass
    return shutil.which("ptxas")


def compilers(arch: Arch) -> tuple[str | None, str]:
    """(ptxas path, "") when PTX and SASS can be made here for ``arch``, else (None, why)."""
    try:
        import numba  # noqa: F401
        from numba import cuda
    except ImportError as exc:
        return None, f"numba-cuda is not installed ({exc}); pip install 'kernprop[cuda]'"
    if numba.config.ENABLE_CUDASIM:
        return None, "NUMBA_ENABLE_CUDASIM=1 replaces the compiler with the simulator; unset it"
    ptxas = find_ptxas()
    if ptxas is None:
        return None, "ptxas not found (pip install 'kernprop[cuda]', or a CUDA toolkit on PATH)"
    from numba import types

    def probe(x):
        x[0] = 1.0

    try:
        cuda.compile_ptx(probe, (types.float32[::1],), cc=arch.cc)
    except Exception as exc:  # noqa: BLE001 - libNVVM or NVRTC missing, said in the message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"numba-cuda cannot make PTX ({first}); pip install 'kernprop[cuda]'"
    return ptxas, ""


# float64 arithmetic in PTX; conversions (cvt) and comparisons are not counted: storing a
# float64 result or testing a float64 scalar argument does no float64 math per element.
F64_PTX = re.compile(r"^\s*(?:@!?%p\d+\s+)?(add|sub|mul|div|fma|sqrt|rcp|neg|abs|min|max|ex2|lg2|rsqrt|tanh)(\.\w+)*\.f64\b",
                     re.MULTILINE)
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass(frozen=True)
class Report:
    """What ``ptxas -v`` and the PTX say about one compiled kernel on one architecture."""

    registers: int
    stack: int  # bytes of local memory per thread (arrays the compiler kept in memory)
    spill_stores: int
    spill_loads: int
    smem: int
    f64: int  # float64 arithmetic instructions in the PTX


def parse_ptxas(text: str) -> tuple[int, int, int, int, int]:
    """(registers, stack frame, spill stores, spill loads, shared memory) of the entry
    function in ``ptxas -v`` output; spills and stack summed over every function."""
    used = _USED.findall(text)
    if not used:
        raise ValueError(f"no register count in the ptxas report: {text.strip()[:200]!r}")
    frames = [tuple(map(int, m)) for m in _FRAME.findall(text)]
    smem = _SMEM.findall(text)
    return (
        max(map(int, used)),
        sum(f[0] for f in frames),
        sum(f[1] for f in frames),
        sum(f[2] for f in frames),
        max(map(int, smem)) if smem else 0,
    )


def assemble(ptx: str, arch: Arch, ptxas: str) -> Report:
    """``ptxas -v`` on ``ptx`` for ``arch``: the Report of the kernel in it."""
    with tempfile.TemporaryDirectory(prefix="kernprop-ptx-") as tmp:
        source = os.path.join(tmp, "kernel.ptx")
        with open(source, "w") as f:
            f.write(ptx)
        result = subprocess.run(
            [ptxas, f"-arch={arch.name}", "-v", "-o", os.path.join(tmp, "kernel.cubin"), source],
            capture_output=True, text=True, timeout=300,
        )
    if result.returncode != 0:
        raise RuntimeError(f"ptxas failed: {(result.stderr or result.stdout).strip()[:500]}")
    registers, stack, stores, loads, smem = parse_ptxas(result.stderr + result.stdout)
    return Report(registers, stack, stores, loads, smem, len(F64_PTX.findall(ptx)))


def compile_ptx(launch, arch: Arch) -> str:
    """The PTX Numba makes for ``launch`` on ``arch`` (as the dispatcher would on a GPU of
    that compute capability)."""
    from numba import cuda

    ptx, _ = cuda.compile_ptx(launch.dispatcher.py_func, launch.argtypes, cc=arch.cc)
    return ptx


# --- the check -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the table: a kernel variant on one architecture, and its verdict."""

    arch: str
    launch: object
    report: Report | None
    occupancy: Occupancy | None
    problems: tuple

    @property
    def ok(self) -> bool:
        return not self.problems


def check_one(launch, arch: Arch, ptxas: str) -> Row:
    """Compile, assemble and judge one kernel variant."""
    try:
        report = assemble(compile_ptx(launch, arch), arch, ptxas)
    except Exception as exc:  # noqa: BLE001 - one kernel failing must not hide the others
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Row(arch.name, launch, None, None, (f"does not compile: {type(exc).__name__}: {first[:200]}",))
    occ = occupancy(arch, launch.threads, report.registers, report.smem)
    problems = []
    if report.spill_stores or report.spill_loads:
        problems.append(f"spills {report.spill_stores} B stored, {report.spill_loads} B loaded")
    if not occ.launchable:
        problems.append(f"block {launch.threads} cannot launch: {occ.reason}")
    if launch.dtype.itemsize == 4 and not launch.wide and report.f64:
        problems.append(f"{report.f64} float64 instructions in a float32 kernel")
    return Row(arch.name, launch, report, occ, tuple(problems))


def run(arch_names=("sm_80", "sm_90"), dtypes=None, progress=None) -> list[Row]:
    """Check every launched kernel variant on each architecture; ``progress(row)`` is
    called after each.  Raises RuntimeError with the reason when the compilers are missing."""
    from kernprop.kernels.numba_cuda import launches as launch_table

    archs = []
    for name in arch_names:
        if name not in ARCHS:
            raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHS)}")
        archs.append(ARCHS[name])
    table = launch_table.launches() if dtypes is None else launch_table.launches(dtypes)
    rows = []
    for arch in archs:
        ptxas, why = compilers(arch)
        if ptxas is None:
            raise RuntimeError(why)
        for launch in table:
            row = check_one(launch, arch, ptxas)
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


def markdown(rows, header=True) -> str:
    """The table of ``rows`` in Markdown."""
    lines = []
    if header:
        lines += [
            "| arch | kernel | dtype | signature | regs | stack B | spill B (st/ld) | smem B | block | fits | blocks/SM (limit) | occupancy | f64 | verdict |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---|",
        ]
    for row in rows:
        launch, rep, occ = row.launch, row.report, row.occupancy
        verdict = "ok" if row.ok else "FAIL: " + "; ".join(row.problems)
        if rep is None:
            cells = ["-"] * 9
        else:
            wide = " (wide)" if launch.wide and rep.f64 else ""
            cells = [
                str(rep.registers), str(rep.stack), f"{rep.spill_stores}/{rep.spill_loads}", str(rep.smem),
                "x".join(map(str, launch.block)), "yes" if occ.launchable else "no",
                f"{occ.blocks} ({occ.limit})" if occ.launchable else "-",
                f"{occ.occupancy:.0%}", f"{rep.f64}{wide}",
            ]
        lines.append("| " + " | ".join([row.arch, launch.name, launch.dtype.name, f"`{launch.signature}`", *cells, verdict]) + " |")
    return "\n".join(lines)


def environment() -> str:
    """One line naming the compilers used, for the report."""
    import numba
    from numba import cuda

    ptxas = find_ptxas() or "ptxas not found"
    version = ""
    try:
        out = subprocess.run([ptxas, "--version"], capture_output=True, text=True, timeout=60).stdout
        match = re.search(r"release [\d.]+, V[\d.]+", out)
        version = f" ({match.group(0)})" if match else ""
    except Exception:  # noqa: BLE001 - the version is decoration
        pass
    try:
        nvvm = ".".join(map(str, cuda.cudadrv.nvvm.NVVM().get_version()))
    except Exception:  # noqa: BLE001
        nvvm = "?"
    try:
        from importlib.metadata import version as dist_version

        numba_cuda = dist_version("numba-cuda")
    except Exception:  # noqa: BLE001
        numba_cuda = "?"
    return f"numba {numba.__version__}, numba-cuda {numba_cuda}, libNVVM {nvvm}, {ptxas}{version}"


def main(args) -> int:
    """``kernprop cuda-check``: print the table (and write it with ``--output``); 1 when a
    kernel fails, 2 when the compilers are missing or the arguments are wrong."""
    import sys

    archs = args.arch or ["sm_80", "sm_90"]
    start = time.perf_counter()
    failures = []

    def progress(row):
        if not row.ok:
            failures.append(row)
        if args.verbose:
            state = "ok  " if row.ok else "FAIL"
            print(f"{state} {row.arch} {row.launch.dtype.name:8} {row.launch.name}"
                  + ("" if row.ok else ": " + "; ".join(row.problems)), file=sys.stderr, flush=True)

    try:
        rows = run(archs, progress=progress)
    except (RuntimeError, ValueError) as exc:
        print(f"kernprop cuda-check: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    table = markdown(rows)
    summary = (f"{len(rows)} kernel variants on {', '.join(archs)}: {len(rows) - len(failures)} ok, "
               f"{len(failures)} failing ({elapsed:.0f} s)")
    print(table)
    print(summary)
    for row in failures:
        print(f"FAIL {row.arch} {row.launch.dtype.name} {row.launch.name}: {'; '.join(row.problems)}")
    if args.output:
        with open(args.output, "w") as f:
            f.write(report_page(table, summary, archs))
        print(f"wrote {args.output}")
    return 1 if failures else 0


def report_page(table: str, summary: str, archs) -> str:
    """bench/GPU_STATIC.md: the table with what made it."""
    import datetime

    commit = ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=30, cwd=os.path.dirname(__file__)).stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    targets = ", ".join(f"{a} ({ARCHS[a].gpus})" for a in archs)
    return f"""# CUDA kernels, statically: registers, spills, shared memory, occupancy

Written by `kernprop cuda-check --output bench/GPU_STATIC.md` (no GPU involved) on
{datetime.date.today().isoformat()} at commit {commit or "?"}: every kernel variant the `cuda` backend launches
(`kernprop/kernels/numba_cuda/launches.py`), compiled to PTX by numba-cuda and assembled by
`ptxas -v` for {targets}.

Compilers: {environment()}.

Columns: registers per thread; stack frame (bytes of local memory per thread: an array
the compiler could not keep in registers); spill stores/loads in bytes; static shared
memory per block; the block the launcher uses; whether it fits one multiprocessor;
resident blocks per multiprocessor and what bounds them; theoretical occupancy (resident
warps / 64); float64 arithmetic instructions in the PTX ("wide": a float64 accumulator on
purpose).  Signatures: `f4[:,:]C` is a C-contiguous float32 matrix, `A` any strides,
`i8`/`f8`/`b1` the int64, float64 and boolean scalars Python passes.  A kernel fails on a
spill, a block that cannot launch, or unintended float64 arithmetic in float32.

{summary}

{table}
"""


def add_parser(sub) -> None:
    """Register ``cuda-check`` on the ``kernprop`` command line's subparsers."""
    parser = sub.add_parser(
        "cuda-check",
        help="compile every CUDA kernel to SASS (no GPU needed): registers, spills, shared memory, occupancy",
    )
    parser.add_argument("--arch", action="append", choices=sorted(ARCHS), default=None,
                        help="target architecture, repeatable (default: sm_80 and sm_90)")
    parser.add_argument("--output", metavar="PATH", default=None,
                        help="also write the table as a Markdown page (bench/GPU_STATIC.md)")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per kernel on stderr as it goes")
    parser.set_defaults(func=main)
