"""pytest-benchmark configuration of the suites in bench/ (not collected by plain ``pytest``).

    pytest bench/ --benchmark-only                 time everything (``kernprop bench`` does this)
    pytest bench/ --benchmark-disable -q           run each benchmark once and check it (CI)

Options (each also read from an environment variable, for CI scripts):

``--bench-quick`` / ``KERNPROP_BENCH_QUICK=1``
    drop the large shapes (matmul 1024^3 and 2048^3, 4096x1000, 65536x10, 1024x32000).
    On by default with ``--benchmark-disable``, where the large shapes would only cost
    time: the small and MLP-sized shapes check the same code paths.
``--bench-full`` / ``KERNPROP_BENCH_FULL=1``
    keep the large shapes even with ``--benchmark-disable``.
``--bench-ops relu,matmul`` / ``KERNPROP_BENCH_OPS``
    only these ops (names as in the benchmark groups: ``matmul``, ``linear``,
    ``cross_entropy_with_grad``, ``train_step``, ...).
``--bench-backends numba,torch`` / ``KERNPROP_BENCH_BACKENDS``
    only these backends (``numpy`` ``numba`` ``cython`` ``cuda`` ``torch``).

Every parametrised benchmark takes ``op``, ``shape`` and ``backend`` parameters; that
is what the filters read.  An unavailable backend is skipped with its reason.
"""

from __future__ import annotations

import os
import platform

import pytest

import benchlib


def pytest_addoption(parser):
    group = parser.getgroup("kernprop-bench")
    group.addoption("--bench-quick", action="store_true", default=False,
                    help="drop the large shapes (default with --benchmark-disable)")
    group.addoption("--bench-full", action="store_true", default=False,
                    help="keep the large shapes even with --benchmark-disable")
    group.addoption("--bench-ops", default=None, help="comma-separated ops to run (default all)")
    group.addoption("--bench-backends", default=None,
                    help="comma-separated backends to run (default all available)")


def _names(text):
    return {part.strip() for part in (text or "").split(",") if part.strip()}


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def is_quick(config):
    if config.getoption("bench_full") or _env_flag("KERNPROP_BENCH_FULL"):
        return False
    if config.getoption("bench_quick") or _env_flag("KERNPROP_BENCH_QUICK"):
        return True
    return bool(config.getoption("benchmark_disable", False))


def pytest_configure(config):
    torch = benchlib._torch()
    if torch is not None:
        # The outside comparison runs on as many threads as the kernprop CPU backends.
        import kernprop

        torch.set_num_threads(kernprop.get_num_threads())


def pytest_report_header(config):
    import kernprop

    quick = "quick (large shapes dropped)" if is_quick(config) else "full"
    torch = benchlib._torch()
    torch_threads = torch.get_num_threads() if torch is not None else "not installed"
    return (f"kernprop bench: {quick}; CPU threads: numba/cython {kernprop.get_num_threads()}, "
            f"torch {torch_threads}")


def pytest_collection_modifyitems(config, items):
    quick = is_quick(config)
    ops = _names(config.getoption("bench_ops") or os.environ.get("KERNPROP_BENCH_OPS"))
    backends = _names(config.getoption("bench_backends") or os.environ.get("KERNPROP_BENCH_BACKENDS"))
    unknown = backends - set(benchlib.BACKENDS)
    if unknown:
        raise pytest.UsageError(
            f"unknown backend(s) {', '.join(sorted(unknown))}; known: {', '.join(benchlib.BACKENDS)}"
        )
    known_ops = {item.callspec.params["op"] for item in items
                 if hasattr(item, "callspec") and "op" in item.callspec.params}
    if ops - known_ops:
        raise pytest.UsageError(
            f"unknown op(s) {', '.join(sorted(ops - known_ops))}; known: {', '.join(sorted(known_ops))}"
        )
    cudasim = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    keep, drop = [], []
    for item in items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        shape, op, backend = params.get("shape"), params.get("op"), params.get("backend")
        if (quick and getattr(shape, "label", "") == "large") or (ops and op not in ops) or (
            backends and backend not in backends
        ):
            drop.append(item)
            continue
        if backend is not None:
            reason = backend_reason(backend, cudasim)
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"backend {backend} unavailable: {reason}"))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def backend_reason(backend, cudasim=False):
    if backend == "cuda" and cudasim:
        return "the CUDA simulator is far too slow to benchmark"
    return benchlib.backend_unavailable(backend)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add what the report needs beside pytest-benchmark's own machine info."""
    import numpy

    import kernprop

    versions = {"kernprop": kernprop.__version__, "numpy": numpy.__version__,
                "python": platform.python_version()}
    for name in ("numba", "torch", "Cython", "pytest_benchmark"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = None
    torch = benchlib._torch()
    machine_info["kernprop"] = {
        "versions": versions,
        "threads": kernprop.get_num_threads(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "cpu_count": os.cpu_count(),
        "quick": is_quick(config),
        "backends": {name: (backend_reason(name) or "available") for name in benchlib.BACKENDS},
    }


@pytest.fixture
def harness(benchmark, request):
    """``harness.run(op, shape, backend, fn, want=..., flops=..., bytes=...)``."""
    return benchlib.Harness(benchmark, request.config)
