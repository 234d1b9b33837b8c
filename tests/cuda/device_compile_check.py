"""Compile every CUDA kernel for a real GPU target, without a GPU.

The simulator runs kernels as Python, so it never types them: code that runs there may
still fail to compile for a device (a shared array shaped by an expression, say).  This
script compiles each kernel, for float32 and float64, to PTX for sm_80 when libNVVM and
NVRTC are installed, else types and lowers it to LLVM IR only (no driver or device
needed either way).  It then checks that float32 kernels do no float64 arithmetic,
except where a kernel accumulates in float64 on purpose.  Run it without ``NUMBA_ENABLE_CUDASIM``:

    python tests/cuda/device_compile_check.py

It prints one line per kernel and exits non-zero on any failure.
"""

from __future__ import annotations

import os
import re
import sys
import time

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    sys.exit("run without NUMBA_ENABLE_CUDASIM: the simulator replaces the compiler")

import numpy as np  # noqa: E402
from numba import cuda, types  # noqa: E402
from numba.cuda.compiler import compile_cuda  # noqa: E402

from kernprop.cuda_check import F64_PTX as DOUBLE_PTX  # noqa: E402
from kernprop.kernels.numba_cuda import launches  # noqa: E402

CC = (8, 0)
# float64 arithmetic in LLVM IR, or a call to libdevice's float64 exp/log/sqrt/tanh
DOUBLE_IR = re.compile(r'\b(fadd|fsub|fmul|fdiv)( \w+)* double\b|@"?__nv_(exp|log|sqrt|tanh)"?\(')


def kernels(dtype):
    """(name, dispatcher, argument types, float64 arithmetic intended) for one dtype: every
    variant the launchers start (``kernprop/kernels/numba_cuda/launches.py``)."""
    return [(launch.name, launch.dispatcher, launch.argtypes, launch.wide)
            for launch in launches.launches((dtype,))]


def can_make_ptx() -> bool:
    """Whether this machine has what numba-cuda needs for PTX (libNVVM and NVRTC)."""

    def probe(x):
        x[0] = 1.0

    try:
        cuda.compile_ptx(probe, (types.float32[::1],), cc=CC)
    except Exception:  # noqa: BLE001 - any failure: no PTX here, LLVM IR it is
        return False
    return True


def compile_one(kernel, argtypes, ptx):
    """(code, pattern of float64 arithmetic in it)."""
    if ptx:
        code, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=CC)
        return code, DOUBLE_PTX
    result = compile_cuda(kernel.py_func, types.void, argtypes, cc=CC)
    return result.library.get_llvm_str(), DOUBLE_IR


def main() -> int:
    ptx = can_make_ptx()
    print(f"compiling to {'PTX' if ptx else 'LLVM IR (no libNVVM)'} for sm_{CC[0]}{CC[1]}")
    failures = 0
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        for name, kernel, argtypes, wide_on_purpose in kernels(dtype):
            start = time.perf_counter()
            try:
                code, double_math = compile_one(kernel, argtypes, ptx)
            except Exception as exc:  # noqa: BLE001 - report every kernel, then fail
                failures += 1
                print(f"FAIL {dtype.name:8} {name}: {type(exc).__name__}: {exc}".splitlines()[0])
                continue
            note = ""
            if dtype == np.float32 and not wide_on_purpose:
                match = double_math.search(code)
                if match:
                    failures += 1
                    print(f"FAIL {dtype.name:8} {name}: float64 arithmetic in a float32 kernel: {match.group(0)!r}")
                    continue
                note = ", no float64 arithmetic"
            print(f"ok   {dtype.name:8} {name} ({time.perf_counter() - start:.1f}s{note})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
