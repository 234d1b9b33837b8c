"""pytest plugin for bench/gpu.sh: which CUDA kernel specialisations a run compiled.

``kernprop cuda-check`` assembles the kernel variants listed in
``kernprop/kernels/numba_cuda/launches.py``.  On a real GPU, Numba compiles a kernel
for every tuple of argument types it is launched with; this plugin records, at the end
of the session, every compiled tuple of every kernel in that list, and marks the ones
the list lacks (a launch the static check never saw).  One file per process (xdist
workers included) under ``$KERNPROP_SIGNATURES_DIR``; ``bench/gpu_bench.py`` merges them.

    pytest -p gpu_signatures ...        (with bench/ on PYTHONPATH)
"""

from __future__ import annotations

import os


def launched_signatures():
    """[(kernel name, dtype, short signature, listed in launches.py)] compiled so far in
    this process, for every dispatcher of the launch table."""
    from kernprop.kernels.numba_cuda import launches

    table = launches.launches()
    listed = {(id(launch.dispatcher), tuple(launch.argtypes)) for launch in table}
    seen = {}
    for launch in table:
        dispatcher = launch.dispatcher
        for argtypes in list(getattr(dispatcher, "overloads", {})):
            key = (id(dispatcher), tuple(argtypes))
            if key not in seen:
                signature = "(" + ", ".join(launches.short_type(t) for t in argtypes) + ")"
                seen[key] = (launch.kernel, launch.dtype.name, signature, key in listed)
    return sorted(seen.values())


def pytest_sessionfinish(session, exitstatus):
    folder = os.environ.get("KERNPROP_SIGNATURES_DIR")
    if not folder:
        return
    try:
        rows = launched_signatures()
    except Exception as exc:  # noqa: BLE001 - a report, never a test failure
        rows = [("error", "", f"{type(exc).__name__}: {exc}", False)]
    os.makedirs(folder, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(folder, f"{worker}.tsv"), "w") as f:
        for kernel, dtype, signature, listed in rows:
            f.write(f"{kernel}\t{dtype}\t{signature}\t{'listed' if listed else 'NOT LISTED'}\n")
