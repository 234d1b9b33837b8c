"""The GEMM engine against the machine's peaks, NumPy (OpenBLAS) and PyTorch, fp32 and bf16.

    flock /tmp/kernprop-bench.lock python bench/gemm.py [--threads 2] [--rounds 2] [--out bench/GEMM.md]

Measures, in one run: the peak of this CPU's float32 FMA and of its bf16 pair instruction
(``vdpbf16ps``; register-only loops of the engine's micro-kernel instructions, one per
thread), then for each shape the GFLOP/s of kernprop's numba matmul at each precision,
its share of the matching peak, and its ratio against NumPy's float32 matmul, PyTorch
fp32 (``mm``), PyTorch on bf16 tensors and PyTorch fp32 with
``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` (when installed), and
``linear_backward`` against NumPy's two products.  Each contender is timed in a block
after one untimed call (another pool's idle threads spin for milliseconds and steal
the cores from the next contender otherwise); the whole table is measured ``--rounds``
times and every round is printed.  The bf16x3 error is the relative RMS error against
float64.  Not collected by pytest (no ``test_`` prefix); ``measure`` is used by
bench/test_gemm.py at small sizes.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time

import numpy as np

import kernprop
from kernprop.backends import matmul_kernels

SHAPES = [(256, 256, 256), (1024, 1024, 1024), (2048, 2048, 2048), (256, 784, 512)]


def cpu_name():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def block_time(fn, min_seconds=0.3, max_reps=200):
    """Seconds per call: a pause (the previous contender's idle threads stop spinning),
    one untimed call, then the best mean of 3 blocks of calls."""
    time.sleep(0.2)
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    reps = int(max(1, min(max_reps, min_seconds / 3 / once)))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def peaks(threads):
    """Measured peak GFLOP/s of the fp32 FMA and bf16 pair instructions on ``threads`` threads."""
    from numba import njit, prange

    from kernprop.kernels.numba_cpu.gemm.microkernels import host_has_avx512_bf16, peak_loop

    @njit(parallel=True)
    def loop(steps, threads, kind):
        total = np.zeros(threads, np.float32)
        for t in prange(threads):
            total[t] = peak_loop(steps, 0) if kind == 0 else peak_loop(steps, 1)
        return total.sum()

    steps = 2_000_000
    out = {"fp32": 24 * 32 * steps * threads / block_time(lambda: loop(steps, threads, 0), 0.2) / 1e9}
    if host_has_avx512_bf16():
        out["bf16"] = 24 * 64 * steps * threads / block_time(lambda: loop(steps, threads, 1), 0.2) / 1e9
    return out


def rel_rms(got, a, b):
    exact = a.astype(np.float64) @ b.astype(np.float64)
    return float(np.sqrt(np.mean((got - exact) ** 2)) / np.sqrt(np.mean(exact**2)))


def measure(shapes, torch=None):
    """{shape: {contender: seconds}} and {shape: bf16x3 relative RMS error}."""
    rng = np.random.default_rng(0)
    times, errors = {}, {}
    for m, k, n in shapes:
        a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        b = rng.uniform(-1, 1, (k, n)).astype(np.float32)
        dy = rng.uniform(-1, 1, (m, n)).astype(np.float32)
        out = {"numpy": block_time(lambda: a @ b)}
        for precision in ("fp32", "bf16x3", "bf16"):
            out[f"numba {precision}"] = block_time(lambda: kernprop.matmul(a, b, precision=precision, backend="numba"))
        out["numpy linear_backward"] = block_time(lambda: (a.T @ dy, dy @ b.T))
        out["numba linear_backward"] = block_time(
            lambda: kernprop.linear_backward(a, b, dy, False, backend="numba"))
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            ta16, tb16 = ta.bfloat16(), tb.bfloat16()
            out["torch fp32"] = block_time(lambda: torch.mm(ta, tb))
            out["torch bf16"] = block_time(lambda: torch.mm(ta16, tb16))
            setting = torch.backends.mkldnn.matmul
            previous = getattr(setting, "fp32_precision", None)
            if previous is not None:
                setting.fp32_precision = "bf16"
                try:
                    out["torch fp32 as bf16"] = block_time(lambda: torch.mm(ta, tb))
                finally:
                    setting.fp32_precision = previous
        times[(m, k, n)] = out
        errors[(m, k, n)] = rel_rms(kernprop.matmul(a, b, precision="bf16x3", backend="numba"), a, b)
    return times, errors


def table(times, errors, peak):
    rows = ["| shape | precision | kernprop GFLOP/s | % of peak | vs NumPy fp32 | vs torch fp32 | vs torch bf16 | "
            "vs torch fp32-as-bf16 |", "|---|---|---|---|---|---|---|---|"]
    for shape, out in times.items():
        m, k, n = shape
        flops = 2 * m * k * n
        for precision in ("fp32", "bf16x3", "bf16"):
            seconds = out[f"numba {precision}"]
            peak_key = "bf16" if precision == "bf16" and "bf16" in peak else "fp32"
            ratio = lambda name: f"{out[name] / seconds:.2f}" if name in out else "-"  # noqa: E731
            note = f" (err {errors[shape]:.1e})" if precision == "bf16x3" else ""
            rows.append(f"| {m}x{k}x{n} | {precision}{note} | {flops / seconds / 1e9:.0f} | "
                        f"{100 * flops / seconds / 1e9 / peak[peak_key]:.0f}% | {ratio('numpy')} | "
                        f"{ratio('torch fp32')} | {ratio('torch bf16')} | {ratio('torch fp32 as bf16')} |")
        rows.append(f"| {m}x{k}x{n} | linear_backward fp32 | {2 * flops / out['numba linear_backward'] / 1e9:.0f} | | "
                    f"{out['numpy linear_backward'] / out['numba linear_backward']:.2f} | | | |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the report to this Markdown file")
    args = parser.parse_args(argv)
    kernprop.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)  # NumPy's OpenBLAS on the same threads as the others
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [f"# GEMM engine: {cpu_name()}, {args.threads} threads, commit {commit}", "",
             "`flock /tmp/kernprop-bench.lock python bench/gemm.py "
             f"--threads {args.threads} --rounds {args.rounds}`; ratios > 1: kernprop faster.", "",
             "Kernels: " + "; ".join(f"{p}: {d}" for p, d in matmul_kernels()["numba"].items())]
    for round_number in range(1, args.rounds + 1):
        peak = peaks(args.threads)
        times, errors = measure(SHAPES, torch)
        lines += ["", f"## Round {round_number}", "",
                  "Measured peaks: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()), "",
                  table(times, errors, peak)]
        print("\n".join(lines[-5:]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
