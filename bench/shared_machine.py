"""kernprop on a shared machine: beside a busy core, and beside NumPy's OpenBLAS pool.

    flock /tmp/kernprop-bench.lock python bench/shared_machine.py [--backends numba cython] [--out bench/SHARED_MACHINE.md]

Issue 19's three measurements, each a ratio of median per-call times in one process:

- **busy core**: another process spins on one core (``while True: pass``); each op runs at
  2 threads and at 1 thread, and the table gives ``2 threads / 1 thread`` (target <= 1.5).
- **beside OpenBLAS**: a loop alternates the kernprop op with NumPy's 256x256 @ 256x256
  matmul; the table gives the op's time in the loop over its time alone, and NumPy's time
  in the loop over NumPy's alone (target <= 1.3 each).
- **quiet**: the op alone at 2 threads, for comparison between policies and commits.

Each configuration runs in a child process of its own (the threading layer and the wait
policy are fixed when a process starts its pools).  Not collected by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

OPS = ("relu 256x512", "relu", "sigmoid", "log_softmax", "cross_entropy_with_grad", "matmul", "linear_backward")


def _make_ops(backend):
    import numpy as np

    import kernprop

    rng = np.random.default_rng(0)
    small = rng.standard_normal((256, 512)).astype(np.float32)
    x = rng.standard_normal((4096, 1000)).astype(np.float32)
    labels = rng.integers(0, 1000, 4096)
    a = rng.standard_normal((256, 784)).astype(np.float32)
    w = rng.standard_normal((784, 512)).astype(np.float32)
    dy = rng.standard_normal((256, 512)).astype(np.float32)
    return {
        "relu 256x512": lambda: kernprop.relu(small, backend=backend),
        "relu": lambda: kernprop.relu(x, backend=backend),
        "sigmoid": lambda: kernprop.sigmoid(x, backend=backend),
        "log_softmax": lambda: kernprop.log_softmax(x, backend=backend),
        "cross_entropy_with_grad": lambda: kernprop.cross_entropy_with_grad(x, labels, backend=backend),
        "matmul": lambda: kernprop.matmul(a, w, backend=backend),
        "linear_backward": lambda: kernprop.linear_backward(a, w, dy, backend=backend),
    }


def _median_call(fn, seconds=0.4, max_calls=400, min_calls=15):
    """Median seconds of single calls, after a pause and one untimed call."""
    time.sleep(0.15)
    fn()
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def _alternating(fn, other, seconds=0.6, max_calls=300, min_calls=15):
    """Median seconds of ``fn`` and of ``other`` when each call of one follows one of the other."""
    time.sleep(0.15)
    fn(), other()
    mine, theirs = [], []
    deadline = time.perf_counter() + seconds
    while len(mine) < max_calls and (len(mine) < min_calls or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        middle = time.perf_counter()
        other()
        mine.append(middle - start)
        theirs.append(time.perf_counter() - middle)
    mine.sort(), theirs.sort()
    return mine[len(mine) // 2], theirs[len(theirs) // 2]


def _spinner():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _one_round(fn, numpy_matmul, numpy_alone, threads, kernprop, blas_threads):
    kernprop.set_num_threads(threads)
    quiet = _median_call(fn)
    with kernprop.threadpolicy.blas_threads(blas_threads) if blas_threads else contextlib.nullcontext():
        in_loop, numpy_in_loop = _alternating(fn, numpy_matmul)
    spinner = _spinner()
    try:
        time.sleep(0.3)
        busy = _median_call(fn)
        kernprop.set_num_threads(1)
        busy_one = _median_call(fn)
    finally:
        spinner.kill()
        spinner.wait()
        kernprop.set_num_threads(threads)
    return {
        "quiet_us": quiet * 1e6,
        "busy_us": busy * 1e6,
        "busy_1thread_us": busy_one * 1e6,
        "busy_ratio": busy / busy_one,
        "after_numpy_ratio": in_loop / quiet,
        "numpy_after_ratio": numpy_in_loop / numpy_alone,
    }


def child(backend, ops, threads, n_rounds, blas_threads, other="numpy"):
    """Measure in this process; print one JSON line of results."""
    import numpy as np

    import kernprop
    import kernprop.threadpolicy

    kernprop.set_num_threads(threads)
    table = _make_ops(backend)
    a = np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32)
    numpy_matmul = lambda: a @ a  # noqa: E731
    if other == "torch":  # PyTorch's own OpenMP pool (its bundled libgomp) instead of OpenBLAS's
        import torch

        torch_a = torch.from_numpy(a)
        numpy_matmul = lambda: torch.mm(torch_a, torch_a)  # noqa: E731
    results = {"threading_layer": None, "policy": None}
    for op in ops:
        table[op]()  # compile or load before anything is timed
    try:
        import numba

        results["threading_layer"] = numba.threading_layer()
    except (ImportError, ValueError):
        pass
    policy = kernprop.threadpolicy.policy()
    results["policy"] = f"idle OpenMP workers: {policy.openmp_wait}; busy cores: {policy.busy_cores.split(' (now')[0]}"
    row = {}
    numpy_alone = _median_call(numpy_matmul)
    for op in ops:
        rounds = [_one_round(table[op], numpy_matmul, numpy_alone, threads, kernprop, blas_threads) for _ in range(n_rounds)]
        row[op] = {key: sorted(r[key] for r in rounds)[len(rounds) // 2] for key in rounds[0]}
        row[op]["busy_ratio_range"] = (min(r["busy_ratio"] for r in rounds), max(r["busy_ratio"] for r in rounds))
    results["ops"] = row
    results["numpy_us"] = numpy_alone * 1e6
    print("RESULT " + json.dumps(results))


def run_child(backend, ops, threads, rounds, blas_threads, env_extra, other="numpy"):
    env = dict(os.environ, **env_extra)
    cmd = [sys.executable, __file__, "--child", "--backends", backend, "--threads", str(threads), "--rounds", str(rounds),
           "--blas-threads", str(blas_threads), "--other", other, "--ops", *ops]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child failed ({backend}, {env_extra}):\n{out.stdout}\n{out.stderr}")


def markdown(title, results):
    lines = [f"### {title}", "",
             f"threading layer: {results['threading_layer']}; policy: {results['policy']}; "
             f"NumPy 256^3 matmul alone: {results['numpy_us']:.1f} µs", "",
             "| op | quiet µs | busy core: 2 threads / 1 thread (<= 1.5) | op after NumPy (<= 1.3) | NumPy after op (<= 1.3) |",
             "|---|---|---|---|---|"]
    for op, r in results["ops"].items():
        lines.append(f"| {op} | {r['quiet_us']:.1f} | {r['busy_ratio']:.2f} [{r['busy_ratio_range'][0]:.2f}-{r['busy_ratio_range'][1]:.2f}] ({r['busy_us']:.0f} / {r['busy_1thread_us']:.0f} µs) "
                     f"| {r['after_numpy_ratio']:.2f} | {r['numpy_after_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["numba", "cython"])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="each figure is the median of this many rounds")
    parser.add_argument("--env", action="append", default=[],
                        help="NAME=VALUE for the measured processes (repeatable), e.g. NUMBA_THREADING_LAYER=tbb")
    parser.add_argument("--blas-threads", type=int, default=0,
                        help="run the alternating loop inside kernprop.threadpolicy.blas_threads(N) "
                             "(NumPy alone is still timed at its default threads)")
    parser.add_argument("--other", choices=("numpy", "torch"), default="numpy",
                        help="the other library's 256^3 product in the alternating loop")
    parser.add_argument("--out", help="append the markdown tables to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.backends[0], args.ops, args.threads, args.rounds, args.blas_threads, args.other)
        return 0
    env_extra = dict(item.split("=", 1) for item in args.env)
    text = []
    for backend in args.backends:
        results = run_child(backend, args.ops, args.threads, args.rounds, args.blas_threads, env_extra, args.other)
        title = (f"{backend}, {args.threads} threads" + (f", {' '.join(args.env)}" if args.env else "")
                 + (f", loop inside blas_threads({args.blas_threads})" if args.blas_threads else "")
                 + (", beside PyTorch's torch.mm (the NumPy columns are PyTorch's)" if args.other == "torch" else ""))
        block = markdown(title, results)
        print(block, flush=True)
        text.append(block)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
