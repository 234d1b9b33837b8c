"""Is kernprop fast on this CPU?  The first lines of ``kernprop bench --quick``, from an
installed package: the instruction-set row and the kernels it runs, then kernprop's
float32 GEMM against NumPy (and PyTorch when installed) at a few shapes, here and now.

Each contender is timed in a block of its own after a pause and an untimed call (an
idle pool of another library's threads would otherwise spin on the cores it needs), the
best of the block counted; every product is checked against NumPy's once.  A shared or
busy machine gives lower figures: run it twice before you believe one.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["SHAPES", "gemm_rates", "headline"]

# square products and an MLP layer (batch 256, 784 -> 512)
SHAPES = ((256, 256, 256), (1024, 1024, 1024), (256, 784, 512))


def _best_seconds(function, block_s):
    time.sleep(0.15)  # the previous contender's idle threads go to sleep
    function()
    best, end = np.inf, time.perf_counter() + block_s
    while time.perf_counter() < end:
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def _contenders(a, b, backends):
    import kernprop

    contenders = {"numpy": lambda: a @ b}
    for name in backends:
        contenders[name] = lambda name=name: kernprop.matmul(a, b, backend=name)
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        contenders["torch"] = lambda: torch.mm(ta, tb)
    except ImportError:
        pass
    return contenders


def gemm_rates(shapes=SHAPES, backends=None, block_s=0.4, seed=0):
    """{(m, k, n): {contender: GFLOP/s}} of float32 ``a (m, k) @ b (k, n)`` for NumPy,
    each of ``backends`` (default: the available CPU backends) and PyTorch when installed.
    A backend whose product disagrees with NumPy's raises AssertionError."""
    import kernprop

    if backends is None:
        backends = [name for name in ("numba", "cython") if name in kernprop.available_backends()]
    rng = np.random.default_rng(seed)
    rates = {}
    for m, k, n in shapes:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        want = a.astype(np.float64) @ b.astype(np.float64)
        row = {}
        for name, product in _contenders(a, b, backends).items():
            got = np.asarray(product())
            bound = 4 * k * np.finfo(np.float32).eps * (np.abs(a).astype(np.float64) @ np.abs(b))
            assert np.all(np.abs(got - want) <= bound), f"{name}: {m}x{k}x{n} product off the reference"
            row[name] = 2.0 * m * k * n / _best_seconds(product, block_s) / 1e9
        rates[(m, k, n)] = row
    return rates


def headline(rates=None, threads=None):
    """The lines: CPU and row, kernels, then per shape each contender's GFLOP/s and
    kernprop's ratio to NumPy (and PyTorch)."""
    from kernprop import isa
    from kernprop.backends import get_num_threads

    rates = gemm_rates() if rates is None else rates
    lines = [isa.describe(), f"threads: {threads or get_num_threads()}; float32 GEMM, GFLOP/s "
             "(ratio: kernprop / NumPy, kernprop / PyTorch; best of a block each):"]
    for (m, k, n), row in rates.items():
        parts = []
        for name, rate in row.items():
            part = f"{name} {rate:.0f}"
            if name not in ("numpy", "torch"):
                part += f" ({rate / row['numpy']:.2f}x" + (f", {rate / row['torch']:.2f}x" if "torch" in row else "") + ")"
            parts.append(part)
        lines.append(f"  {m}x{k}x{n}: " + " | ".join(parts))
    return "\n".join(lines)
