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

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import cuda, types  # noqa: E402
from numba.cuda.compiler import compile_cuda  # noqa: E402

from kernprop.kernels.numba_cuda import activations, losses, matmul, optimizers, softmax  # noqa: E402

CC = (8, 0)
# float64 arithmetic in LLVM IR, or a call to libdevice's float64 exp/log/sqrt/tanh
DOUBLE_IR = re.compile(r'\b(fadd|fsub|fmul|fdiv)( \w+)* double\b|@"?__nv_(exp|log|sqrt|tanh)"?\(')
# float64 arithmetic in PTX (conversions cvt.* are fine: storing a float64 result)
DOUBLE_PTX = re.compile(r"\b(add|sub|mul|div|fma|sqrt|rcp|neg|abs|min|max|ex2|lg2)(\.\w+)*\.f64\b")


def arr(dtype, ndim, layout="C"):
    return types.Array(numba.from_dtype(np.dtype(dtype)), ndim, layout)


def kernels(dtype):
    """(name, dispatcher, argument types, float64 arithmetic intended) for one dtype."""
    a1, c1, a2, c2 = arr(dtype, 1, "A"), arr(dtype, 1), arr(dtype, 2, "A"), arr(dtype, 2)
    f64, i64, b = types.float64, types.int64, types.boolean
    i64_1 = arr(np.int64, 1, "A")
    out = []
    for ta, tb in ((False, False), (False, True), (True, False)):
        out.append((f"gemm_kernel[trans_a={ta}, trans_b={tb}]", matmul._gemm_kernel(dtype, ta, tb),
                    (a2, a2, a1, a2, b, i64, b), False))
    out.append(("column_sum_kernel", matmul._column_sum_kernel(dtype), (a2, a1, b), True))
    for name, kernel in activations._kernels(dtype).items():
        nargs = 2 if name.endswith("forward") else 3
        out.append((f"{name}_kernel", kernel, (c1,) * nargs, False))
    for log in (True, False):
        out.append((f"softmax_forward_kernel[log={log}]", softmax._forward_kernel(dtype, log), (a2, c2), False))
    out.append(("log_softmax_backward_kernel", softmax._backward_kernel(dtype), (a2, a2, c2), False))
    for write_grad in (True, False):
        for loss_dtype in sorted({np.dtype(np.float64), dtype}, key=str):
            out.append((
                f"cross_entropy_kernel[write_grad={write_grad}, row_loss={np.dtype(loss_dtype).name}]",
                losses._cross_entropy_kernel(dtype, write_grad),
                (a2, i64_1, a1, b, i64, f64, f64, f64, arr(loss_dtype, 1, "A"), a2),
                False,
            ))
    partial, squared, backward = losses._mse_kernels(dtype)
    out.append(("mse_partial_kernel", partial, (c1, c1, arr(np.float64, 1)), True))
    out.append(("squared_error_kernel", squared, (c1, c1, c1), False))
    out.append(("mse_backward_kernel", backward, (c1, c1, f64, c1), False))
    sgd, adam = optimizers._kernels(dtype)
    out.append(("sgd_step_kernel", sgd, (c1, c1, c1, f64, f64, b, f64), False))
    out.append(("adam_step_kernel", adam, (c1, c1, c1, c1) + (f64,) * 6 + (b, f64), False))
    return out


def can_make_ptx() -> bool:
    """Whether this machine has what numba-cuda needs for PTX (libNVVM and NVRTC)."""

    def probe(x):
        x[0] = 1.0

    try:
        cuda.compile_ptx(probe, (arr(np.float32, 1),), cc=CC)
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
