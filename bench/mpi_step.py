"""Step time of data-parallel training over MPI, and the share spent in the Allreduce.

    NUMBA_NUM_THREADS=1 mpirun -n 2 python bench/mpi_step.py [--batch 512] [--steps 20]
    NUMBA_NUM_THREADS=1 python bench/mpi_step.py --distributed none     # no MPI at all

The 784-512-256-10 ReLU MLP (535,818 float32 parameters, 2.14 MB of gradients) on
synthetic data, Adam, through ``Trainer.fit`` (the numba backend by default).  The first
epoch warms the JIT and is not counted.  Two runs of ``fit``:

* plain: the step time (wall time of the epoch / steps), nothing added, and the CPU
  time of each rank per step (less sensitive to other processes on a shared machine);
* instrumented: ``allreduce_gradients`` wrapped to time a ``Barrier`` first (the wait
  for the slowest rank: load imbalance and noise) and then the gradient Allreduce
  itself (pack, ``Allreduce``, unpack); medians over steps, robust to a rank being
  descheduled now and then on a shared machine;
* a bare ``Allreduce`` of the same 2.14 MB buffer, 30 times.

Rank 0 prints one JSON line.  Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from kernprop import nn, optim
from kernprop.train import Trainer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=512, help="global batch size")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--distributed", default="mpi", choices=("none", "mpi"))
    args = parser.parse_args()

    sizes = [784, 512, 256, 10]
    n = args.batch * args.steps
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n)

    def make():
        model = nn.MLP(sizes, rng=0)
        return Trainer(model, optimizer=optim.Adam(1e-3), backend=args.backend, batch_size=args.batch,
                       seed=0, distributed=args.distributed)

    # Plain: epoch wall time / steps.
    trainer = make()
    dist = trainer.distributed
    trainer.fit(X, y, 1, verbose=0)  # warm-up (JIT, caches, first-touch)
    times, cpu = [], []
    for _ in range(args.epochs):
        if dist is not None:
            dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.fit(X, y, 1, verbose=0)
        times.append((time.perf_counter() - t0) / args.steps)
        cpu.append((time.process_time() - c0) / args.steps)
    cpus = dist.comm.gather(min(cpu), root=0) if dist is not None else [min(cpu)]
    result = {
        "ranks": dist.size if dist is not None else 1,
        "distributed": args.distributed,
        "threads_per_rank": int(os.environ.get("NUMBA_NUM_THREADS", "0")) or None,
        "global_batch": args.batch,
        "backend": args.backend,
        "parameters": int(sum(p.size for p in trainer.model.parameters())),
        "step_ms": [round(1e3 * t, 3) for t in times],
        "step_cpu_ms_per_rank": [round(1e3 * c, 3) for c in cpus] if cpus else None,
    }

    if dist is not None:
        # Instrumented: split each Allreduce call into the wait for the slowest rank and
        # the reduction itself; the time between the ends of two calls is a step.
        trainer = make()
        dist = trainer.distributed
        reduce_gradients = dist.allreduce_gradients
        waits, reduces, ends = [], [], []

        def timed(*a, **k):
            t0 = time.perf_counter()
            dist.barrier()
            t1 = time.perf_counter()
            out = reduce_gradients(*a, **k)
            t2 = time.perf_counter()
            waits.append(t1 - t0)
            reduces.append(t2 - t1)
            ends.append(t2)
            return out

        trainer.fit(X, y, 1, verbose=0)
        dist.allreduce_gradients = timed
        trainer.fit(X, y, args.epochs, verbose=0)
        steps = np.diff(ends)
        reduces = np.array(reduces[1:])
        # A pure Allreduce of the same flat buffer, nothing else running in this job.
        buf = np.ones(result["parameters"] + 1, dtype=np.float32)
        pure = []
        for _ in range(30):
            dist.barrier()
            t0 = time.perf_counter()
            dist.comm.Allreduce(dist.MPI.IN_PLACE, buf, op=dist.MPI.SUM)
            pure.append(time.perf_counter() - t0)
        compute = steps - np.array(waits[1:]) - reduces  # this rank's own work per step
        stats = dist.comm.gather((float(np.median(waits)), float(np.median(compute))), root=0)
        result.update({
            "median_step_ms": round(1e3 * float(np.median(steps)), 3),
            "median_allreduce_ms": round(1e3 * float(np.median(reduces)), 3),
            "mean_allreduce_share": round(float(reduces.sum() / steps.sum()), 4),
            "median_allreduce_share": round(float(np.median(reduces / steps)), 4),
            "median_wait_for_slowest_ms_per_rank": [round(1e3 * w[0], 3) for w in stats] if stats else None,
            "median_compute_ms_per_rank": [round(1e3 * w[1], 3) for w in stats] if stats else None,
            "pure_allreduce_2MB_median_ms": round(1e3 * float(np.median(pure)), 3),
            "pure_allreduce_2MB_min_ms": round(1e3 * float(np.min(pure)), 3),
        })
    if dist is None or dist.is_root:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
