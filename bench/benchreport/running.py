"""Running the benchmarks (the parts that need a quiet machine): ``pytest bench/`` in a
subprocess, this machine's copy and GEMM peaks, Numba's start-up per backend (fresh
subprocesses), the fused linear cross-entropy's peak memory; ``run`` composes them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .machine import sample_others, wait_for_quiet
from .parsing import BACKEND_ORDER, OTHERS_MARGIN, BenchError, OP_ORDER, busy_rows, load, merge, records


def find_bench_dir() -> Path:
    """``bench/`` of the source checkout the (editable) package was installed from."""
    import kernprop

    root = Path(kernprop.__file__).resolve().parent.parent
    bench = root / "bench"
    if not (bench / "conftest.py").is_file():
        raise BenchError(
            f"the benchmark suites (bench/) are not next to the kernprop package: looked in {bench}. "
            "kernprop bench needs a source checkout installed in editable mode "
            "(git clone ...; pip install -e '.[test]')"
        )
    return bench



def cache_sizes() -> dict:
    """{"L2": bytes, "L3": bytes} of the first CPU's data/unified caches, from Linux's
    sysfs; {} where it is not readable (the report then has no cache-resident peaks)."""
    sizes = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        if level < 2 or kind == "Instruction":
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            sizes[f"L{level}"] = int(text.rstrip("KMG")) * scale
        except ValueError:
            continue
    return sizes



def _copy_gbs(nbytes, repeats):
    """Best read + write GB/s of np.copyto over ``nbytes`` (source and destination
    together), each timing over enough copies to last well above the timer's resolution."""
    import numpy as np

    src = np.ones(max(1, nbytes // 8), dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    inner = max(1, (64 * 2**20) // max(nbytes, 1))

    def copies():
        for _ in range(inner):
            np.copyto(dst, src)

    best = min(_timed(copies) for _ in range(repeats)) / inner
    return 2 * src.nbytes / best / 1e9



def measure_peaks(copy_mib=256, gemm_n=2048, repeats=5) -> dict:
    """This machine's copy bandwidth (GB/s, read + write) from DRAM and, per cache level,
    of a copy that fits in half that cache (``levels``: name, bytes, copy_gbs; a small
    op's data stays in cache, so its GB/s is set against the peak of the level it fits
    in), and OpenBLAS GEMM GFLOP/s."""
    import numpy as np

    copy_gbs = _copy_gbs(copy_mib * 2**20 * 2, repeats)
    levels = [{"name": name, "bytes": size, "copy_gbs": _copy_gbs(size // 2, repeats)}
              for name, size in sorted(cache_sizes().items(), key=lambda kv: kv[1])]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((gemm_n, gemm_n), dtype=np.float32)
    b = rng.standard_normal((gemm_n, gemm_n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(max(3, repeats // 2)))
    return {"copy_gbs": copy_gbs, "copy_bytes": copy_mib * 2**20, "gemm_gflops": 2 * gemm_n**3 / best / 1e9,
            "gemm_n": gemm_n, "levels": levels}



def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start



def blas_threads():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [i.get("num_threads") for i in threadpool_info() if i.get("user_api") == "blas"]
    return counts[0] if counts else None



# One process: import kernprop, optionally kernprop.warmup(), then every public op once.
_STARTUP_SCRIPT = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np
import kernprop
result = {"import": time.perf_counter() - start, "ops": {}, "warmup": None}
backend = sys.argv[1]
rng = np.random.default_rng(0)
f32 = lambda *shape: rng.uniform(-1, 1, shape).astype(np.float32)
x, w, b, dy, z = f32(8, 16), f32(16, 4), f32(4), f32(8, 4), f32(8, 4)
labels = rng.integers(0, 4, 8)
y = kernprop.log_softmax(z, backend="numpy")
p, g, m, v, vel = f32(8, 4), f32(8, 4), np.zeros((8, 4), np.float32), np.zeros((8, 4), np.float32), np.zeros((8, 4), np.float32)
calls = {
    "matmul": lambda: kernprop.matmul(x, w, backend=backend),
    "linear": lambda: kernprop.linear(x, w, b, activation="relu", backend=backend),
    "linear_backward": lambda: kernprop.linear_backward(x, w, dy, backend=backend),
    "relu": lambda: kernprop.relu(z, backend=backend),
    "relu_backward": lambda: kernprop.relu_backward(z, dy, backend=backend),
    "sigmoid": lambda: kernprop.sigmoid(z, backend=backend),
    "sigmoid_backward": lambda: kernprop.sigmoid_backward(z, dy, backend=backend),
    "tanh": lambda: kernprop.tanh(z, backend=backend),
    "tanh_backward": lambda: kernprop.tanh_backward(z, dy, backend=backend),
    "log_softmax": lambda: kernprop.log_softmax(z, backend=backend),
    "log_softmax_backward": lambda: kernprop.log_softmax_backward(y, dy, backend=backend),
    "softmax": lambda: kernprop.softmax(z, backend=backend),
    "cross_entropy": lambda: kernprop.cross_entropy(z, labels, backend=backend),
    "cross_entropy_with_grad": lambda: kernprop.cross_entropy_with_grad(z, labels, backend=backend),
    "mse": lambda: kernprop.mse(z, dy, backend=backend),
    "mse_backward": lambda: kernprop.mse_backward(z, dy, backend=backend),
    "linear_cross_entropy": lambda: kernprop.linear_cross_entropy(x, w, b, labels, backend=backend),
    "sgd_step": lambda: kernprop.sgd_step(p, g, vel, lr=0.1, momentum=0.9, backend=backend),
    "adam_step": lambda: kernprop.adam_step(p, g, m, v, 1, backend=backend),
}
warmup = getattr(kernprop, "warmup", None)
if callable(warmup):
    t = time.perf_counter()
    try:
        warmup(backend=backend)
    except TypeError:
        warmup(backend)
    result["warmup"] = time.perf_counter() - t
for name, call in calls.items():
    t = time.perf_counter()
    call()
    result["ops"][name] = time.perf_counter() - t
result["total"] = time.perf_counter() - start
print("KERNPROP-STARTUP " + json.dumps(result))
"""



def _startup_process(backend, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    proc = subprocess.run([sys.executable, "-c", _STARTUP_SCRIPT, backend], env=env,
                          capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("KERNPROP-STARTUP "):
            return json.loads(line.split(" ", 1)[1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    raise RuntimeError(f"exit status {proc.returncode}: {tail[0]}")



def measure_startup(backends) -> dict:
    """Per CPU backend: a cold process (fresh, empty NUMBA_CACHE_DIR: Numba compiles every
    kernel) then a cached one (same cache directory), each calling every op once."""
    out = {}
    for backend in backends:
        if backend in ("torch", "cuda"):
            continue
        with tempfile.TemporaryDirectory(prefix="kernprop-numba-cache-") as cache:
            try:
                cold = _startup_process(backend, cache)
                cached = _startup_process(backend, cache)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                out[backend] = {"error": f"failed: {exc}"}
                continue
        out[backend] = {"cold": cold, "cached": cached}
    return out



def measure_lce_memory(rows=4096, classes=32000, features=512, backends=("numba",)) -> dict:
    """Peak traced memory (tracemalloc) and time of the fused linear cross-entropy against
    the unfused linear -> cross_entropy_with_grad -> linear_backward, per backend."""
    import gc
    import tracemalloc

    import numpy as np

    import kernprop

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (rows, features)).astype(np.float32)
    w = (rng.uniform(-1, 1, (features, classes)) / np.sqrt(features)).astype(np.float32)
    bias = np.zeros(classes, np.float32)
    labels = rng.integers(0, classes, rows)

    def fused(backend):
        return kernprop.linear_cross_entropy(x, w, bias, labels, backend=backend)

    def unfused(backend):
        logits = kernprop.linear(x, w, bias, backend=backend)
        loss, dlogits = kernprop.cross_entropy_with_grad(logits, labels, backend=backend)
        del logits
        dx, dw, db = kernprop.linear_backward(x, w, dlogits, True, backend=backend)
        return loss, dx, dw, db

    results = []
    for backend in backends:
        # Compile (or load) the kernels first, on a tiny problem, outside the trace.
        kernprop.linear_cross_entropy(x[:2], w[:, :8], bias[:8], labels[:2] % 8, backend=backend)
        unfused_small = kernprop.linear(x[:2], w[:, :8], bias[:8], backend=backend)
        kernprop.cross_entropy_with_grad(unfused_small, labels[:2] % 8, backend=backend)
        for path, fn in (("fused linear_cross_entropy", fused), ("unfused linear + cross_entropy_with_grad "
                                                                  "+ linear_backward", unfused)):
            gc.collect()
            tracemalloc.start()
            try:
                start = time.perf_counter()
                out = fn(backend)
                seconds = time.perf_counter() - start
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            del out
            results.append({"backend": backend, "path": path, "peak": peak, "seconds": seconds})
    return {"rows": rows, "classes": classes, "features": features, "results": results}



def _git(root, *args):
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None



def run_pytest(bench_dir, json_path, quick=False, ops=None, backends=None, max_time=None,
               min_rounds=15, log_path=None, targets=None) -> int:
    """``python -m pytest bench/ --benchmark-only --benchmark-json=json_path``; returns
    pytest's exit status (the JSON holds the benchmarks that passed).  Its output (with
    pytest-benchmark's own tables, hundreds of lines) streams to stderr, or with
    ``log_path`` goes to that file and only pytest's summary line is shown.  ``targets``:
    these pytest node ids instead of the whole of ``bench/`` (a retry of busy rows)."""
    cmd = [sys.executable, "-m", "pytest", *(targets or [str(bench_dir)]), "--benchmark-only",
           f"--benchmark-json={json_path}", "-q", "-p", "no:cacheprovider",
           f"--benchmark-min-rounds={min_rounds}", "--benchmark-columns=median,rounds",
           "--bench-quick" if quick else "--bench-full"]
    if max_time is not None:
        cmd.append(f"--benchmark-max-time={max_time}")
    if ops:
        cmd.append("--bench-ops=" + ",".join(ops))
    if backends:
        cmd.append("--bench-backends=" + ",".join(backends))
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    if log_path is None:
        proc = subprocess.run(cmd, cwd=bench_dir.parent, stdout=sys.stderr)
        where = "see the output above"
    else:
        print(f"pytest's output: {log_path} (-v shows it here)", file=sys.stderr, flush=True)
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, cwd=bench_dir.parent, stdout=log, stderr=subprocess.STDOUT)
        lines = [line for line in Path(log_path).read_text(errors="replace").splitlines() if line.strip()]
        shown = lines[-15:] if proc.returncode not in (0, 5) else lines[-1:]
        print("\n".join(shown), file=sys.stderr, flush=True)
        where = f"see {log_path}"
    if not Path(json_path).is_file():
        raise BenchError(f"the benchmarks failed (pytest exit status {proc.returncode}); {where}")
    return proc.returncode



def run(quick=False, ops=None, backends=None, json_path=None, max_time=None, startup=True, memory=True,
        command=None, note=None, log=print, pytest_log=None, wait_s=60.0, retries=1) -> dict:
    """Run the benchmarks and the extra measurements; returns the JSON dict (also written
    to ``json_path`` when given).  ``pytest_log``: a file for pytest's output (None:
    streamed to stderr).  A busy machine: wait up to ``wait_s`` for it to go quiet before
    the benchmarks, and time the unreliable rows again (after the same wait) up to
    ``retries`` times, each row kept from its reliable, fastest run (``merge``)."""
    import numpy as np

    import kernprop

    bench_dir = find_bench_dir()
    if backends:
        unknown = set(backends) - set(BACKEND_ORDER)
        if unknown:
            raise BenchError(f"unknown backend(s) {', '.join(sorted(unknown))}; known: {', '.join(BACKEND_ORDER)}")
    if ops:
        unknown = set(ops) - set(OP_ORDER)
        if unknown:
            raise BenchError(f"unknown op(s) {', '.join(sorted(unknown))}; known: {', '.join(OP_ORDER)}")
    if max_time is None:
        max_time = 0.1 if quick else 0.3
    extra = {"command": command, "note": note}
    root = bench_dir.parent
    extra["commit"] = _git(root, "rev-parse", "HEAD")
    extra["dirty"] = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    extra["blas_threads"] = blas_threads()
    log("measuring the machine's copy bandwidth and GEMM peak ...")
    extra["peaks"] = measure_peaks(copy_mib=128 if quick else 256, gemm_n=1024 if quick else 2048)
    # Quiet enough: every thread of a row has a core the other processes leave free.
    quiet = max(0.0, (os.cpu_count() or 1) - kernprop.get_num_threads() + OTHERS_MARGIN)
    min_rounds = 10 if quick else 15
    with tempfile.TemporaryDirectory(prefix="kernprop-bench-") as tmp:
        out_json = json_path or os.path.join(tmp, "bench.json")
        others_before = wait_for_quiet(quiet, wait_s, log)
        before = os.getloadavg()[0]
        status = run_pytest(bench_dir, out_json, quick, ops, backends, max_time, min_rounds=min_rounds,
                            log_path=pytest_log)
        if status not in (0, 5, None):
            extra["failures"] = (f"pytest exited with status {status}: some benchmarks failed their check "
                                 "against the reference or errored (see its output); they are missing below.")
            log("warning: " + extra["failures"])
        extra["load"] = (before, os.getloadavg()[0])
        extra["others"] = (others_before, sample_others())
        data = load(out_json)
        for attempt in range(retries):
            busy = busy_rows(records(data))
            if not busy:
                break
            log(f"{len(busy)} rows were timed on a busy machine; timing them again "
                f"({attempt + 1} of {retries}) ...")
            wait_for_quiet(quiet, wait_s, log)
            again = os.path.join(tmp, f"retry{attempt}.json")
            retry_log = str(Path(pytest_log).with_suffix(f".retry{attempt + 1}.log")) if pytest_log else None
            try:
                run_pytest(bench_dir, again, quick, ops, backends, max_time, min_rounds=min_rounds,
                           log_path=retry_log, targets=[r.name for r in busy])
            except BenchError as exc:  # the first run's rows stand, marked
                log(f"warning: the retry failed: {exc}")
                break
            data = merge([data, load(again)])
            data.pop("kernprop_report", None)
            extra["retried"] = extra.get("retried", 0) + len(busy)
    from kernprop.backends import available_backends

    cpu = [b for b in available_backends() if b != "cuda" and (not backends or b in backends)]
    if startup:
        log(f"measuring start-up (cold compile, then cached) for {', '.join(cpu)} ...")
        extra["startup"] = measure_startup(cpu)
    if memory and (not ops or "linear_cross_entropy" in ops):
        mem_backends = [b for b in ("numba",) if b in cpu] or cpu[:1]
        rows = 512 if quick else 4096
        log(f"measuring fused vs unfused linear cross-entropy memory at {rows}x32000x512 on "
            f"{', '.join(mem_backends)} ...")
        try:
            extra["memory"] = measure_lce_memory(rows=rows, backends=mem_backends)
        except Exception as exc:  # noqa: BLE001 - the report says what went wrong instead
            extra["memory"] = {"rows": rows, "classes": 32000, "features": 512, "results": [],
                               "error": f"{type(exc).__name__}: {exc}"}
    extra["numpy"] = np.__version__
    data["kernprop_report"] = extra
    for bench in data["benchmarks"]:  # every round's time: megabytes, and the report needs none
        (bench.get("stats") or {}).pop("data", None)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1)
    return data



THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")



def set_thread_env(n, environ=None):
    """Every backend (Numba, Cython's OpenMP, torch through the bench conftest, and NumPy's
    BLAS) on ``n`` threads, in this process (before NumPy or Numba is imported) and the
    benchmark subprocesses; ``environ``: set these variables there instead."""
    for name in THREAD_VARIABLES:
        (os.environ if environ is None else environ)[name] = str(n)
    if environ is None and ("numpy" in sys.modules or "numba" in sys.modules):  # too late for the environment
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(n)
        except ImportError:
            pass
        if "numba" in sys.modules:
            import numba

            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
