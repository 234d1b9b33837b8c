"""Shared machinery of the benchmark suites: backends, shapes, inputs, validate-then-time.

Every benchmark goes through ``Harness.run``: it calls the op once (JIT compile, or
cache load), asserts the result against the NumPy reference with float32 tolerances,
and only then times it in a block of its own: a pause (``PAUSE_S``, so the previous
contender's idle threads have stopped spinning), one untimed call, then every round back
to back, never a single call of another contender in between.  ``benchmark.group =
f"{op} {shape}"`` puts the backends of one op and shape side by side, and
``extra_info`` holds the op, shape, backend,
floating-point operations and bytes moved (for GFLOP/s and GB/s in the report), and the
cores other processes used during the block (``others_cores``: the report's busy rule).

Backends: the kernprop backends (``numpy``, ``numba``, ``cython``, ``cuda``) and
``torch`` as an outside comparison (CPU, ``torch.set_num_threads`` set to Numba's count
in ``conftest.py``).  An unavailable one is skipped with its reason.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pytest

import kernprop
from kernprop.backends import NAMES, status
from benchreport.machine import cpu_sample, others_cores

DTYPE = np.dtype(np.float32)
BACKENDS = (*NAMES, "torch")  # numpy, numba, cython, cuda, torch

# float32 tolerances: |got - want| <= RTOL * |want| + ATOL * max|want| (different
# summation orders of long float32 sums agree to about sqrt(K) * 6e-8 of the largest term).
RTOL = 1e-4
ATOL = 1e-4

# Timing: ops whose one call takes longer than this are timed with ``pedantic`` and a
# fixed, small number of rounds; faster ones are calibrated by pytest-benchmark.
SLOW_CALL_S = 0.02
MIN_ROUNDS, MAX_ROUNDS = 3, 20
# Before each contender's block: OpenBLAS's idle threads spin for about 100 ms after a
# call (Numba's and OpenMP's for a while too), taking the cores the next contender needs.
PAUSE_S = 0.15


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def backend_unavailable(name):
    """Why ``name`` cannot run here, or None when it can."""
    if name == "torch":
        return None if _torch() is not None else "torch is not installed"
    state = status(name)
    return None if state.available else state.reason


# --- shapes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """``label`` is "small" (overhead-bound), "mlp" (MLP-sized) or "large"; ``quick``
    runs drop the large ones."""

    label: str
    dims: tuple

    @property
    def text(self):
        return "x".join(map(str, self.dims))

    def __str__(self):
        return self.text


def shape_params(*shapes):
    """pytest.param per shape, with ids like ``mlp-256x784x512``."""
    return [pytest.param(s, id=f"{s.label}-{s.text}") for s in shapes]


def backend_params():
    return [pytest.param(name, id=name) for name in BACKENDS]


# --- backends: moving data and running --------------------------------------------------


class Device:
    """How one backend takes inputs and gives results back: ``put`` a NumPy array (a
    fresh copy when ``copy``, for ops that update in place), ``host`` a result back to
    NumPy, ``sync`` before the clock stops (CUDA launches are asynchronous)."""

    def __init__(self, backend):
        self.backend = backend
        self.torch = _torch() if backend == "torch" else None
        if backend == "cuda":
            from numba import cuda

            self._cuda = cuda

    def put(self, array, copy=False):
        if self.backend == "torch":
            return self.torch.from_numpy(np.array(array) if copy else array)
        if self.backend == "cuda":
            return self._cuda.to_device(np.ascontiguousarray(array))
        return np.array(array) if copy else array

    def host(self, value):
        if value is None:
            return None
        if isinstance(value, (tuple, list)):
            return type(value)(self.host(v) for v in value)
        if self.torch is not None and isinstance(value, self.torch.Tensor):
            return value.detach().numpy()
        if hasattr(value, "copy_to_host"):
            return value.copy_to_host()
        return np.asarray(value)

    def sync(self):
        if self.backend == "cuda":
            self._cuda.synchronize()


# --- inputs and reference results, cached across the backends of one shape -------------


class _LRU(OrderedDict):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


_INPUTS = _LRU(3)
_REFERENCE = _LRU(6)


def inputs(key, make):
    """The inputs for ``key`` (made once by ``make(rng)`` and shared by every backend)."""
    return _INPUTS.get_or(key, lambda: make(np.random.default_rng(20261122)))


def reference(key, compute):
    """The reference (NumPy backend) result for ``key``, computed once."""
    return _REFERENCE.get_or(key, compute)


def assert_close(got, want, what):
    """Every array of ``got`` equals ``want`` within the float32 tolerances."""
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want), f"{what}: {len(got)} results, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{what}[{i}]")
        return
    if want is None:
        assert got is None, f"{what}: expected None"
        return
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    scale = float(np.abs(want[np.isfinite(want)]).max()) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * max(scale, 1e-30), err_msg=what)


# --- validate, then time ---------------------------------------------------------------


class Harness:
    """One benchmark: ``run(op, shape, backend, fn, want=..., flops=..., bytes=...)``."""

    def __init__(self, benchmark, config):
        self.benchmark = benchmark
        self.max_time = float(config.getoption("benchmark_max_time", 1.0) or 1.0)

    def run(self, op, shape, backend, fn, *, check=None, want=None, flops=0, bytes=0,
            device=None, family=""):
        """Warm up and check ``fn()`` once, then time it.

        ``check(result)`` validates the first result (default: ``assert_close`` of the
        result brought back to NumPy against ``want()``, skipped when ``want`` is None).
        ``flops`` and ``bytes`` are per call: the report turns them into GFLOP/s, GB/s.
        """
        device = device or Device(backend)
        benchmark = self.benchmark
        benchmark.group = f"{op} {shape}"
        benchmark.extra_info.update(
            op=op, shape=str(shape), shape_label=getattr(shape, "label", ""), backend=backend,
            family=family, flops=int(flops), bytes=int(bytes),
            threads=kernprop.get_num_threads(),
        )

        def call():
            result = fn()
            device.sync()
            return result

        first = call()  # JIT compile or cache load, then the one check
        if check is not None:
            check(first)
        elif want is not None:
            assert_close(device.host(first), want(), f"{op} {shape} on {backend}")
        del first
        if benchmark.disabled:
            benchmark(call)
            return
        # A block of this contender alone: a pause, so that the previous contender's pool
        # (or the reference's OpenBLAS call just above) has stopped spinning, then one
        # untimed call that wakes this contender's own pool, then every round back to back.
        # The other processes' cores over the whole block go with the row (the report's
        # busy rule reads them).
        before = cpu_sample()
        time.sleep(PAUSE_S)
        start = time.perf_counter()
        call()
        once_s = time.perf_counter() - start
        if once_s > SLOW_CALL_S:
            rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, self.max_time // once_s)))
            benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
        else:
            benchmark(call)
        others = others_cores(before, cpu_sample())
        if others is not None:
            benchmark.extra_info["others_cores"] = round(others, 3)
