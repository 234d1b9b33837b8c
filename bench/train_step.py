"""Step time of ``Trainer.fit`` against a plain NumPy training step, and where it goes.

    python bench/train_step.py [--sizes 64,32,10] [--batch 32] [--threads 1]

The digits MLP (64-32-10 ReLU, batch 32, float32) by default.  Reported, all in
microseconds per step (best of several epochs; the first epoch warms the JIT):

* ``plain numpy``: a hand-written NumPy step (forward, softmax cross-entropy, backward,
  SGD), the yardstick;
* ``trainer <backend> <optimizer>``: ``Trainer.fit``'s step loop (from its
  ``samples_per_s``, so fit's once-per-call checks are not counted);
* ``kernels <backend>``: each kernel the step calls, timed alone, and their sum;
* ``trainer overhead``: the step loop with every kernel replaced by a function that
  returns a preallocated result, i.e. the Python cost of the trainer itself (an upper
  bound: it includes the stand-ins' own cost, about 3 us).

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import time
import timeit
from types import SimpleNamespace

import numpy as np

import kernprop
from kernprop import nn, optim
from kernprop.train import Trainer


def plain_numpy_step(sizes, rng):
    (n_in, n_hidden, n_out) = sizes
    w1 = rng.uniform(-0.3, 0.3, (n_in, n_hidden)).astype(np.float32)
    b1 = np.zeros(n_hidden, np.float32)
    w2 = rng.uniform(-0.3, 0.3, (n_hidden, n_out)).astype(np.float32)
    b2 = np.zeros(n_out, np.float32)
    lr = np.float32(0.05)

    def step(xb, yb):
        h = np.maximum(xb @ w1 + b1, 0)
        z = h @ w2 + b2
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        rows = np.arange(xb.shape[0])
        loss = -np.log(p[rows, yb]).mean()
        dz = p
        dz[rows, yb] -= 1
        dz /= xb.shape[0]
        dw2, db2 = h.T @ dz, dz.sum(0)
        dh = dz @ w2.T
        dh *= h > 0
        dw1, db1 = xb.T @ dh, dh.sum(0)
        for param, grad in ((w1, dw1), (b1, db1), (w2, dw2), (b2, db2)):
            param -= lr * grad
        return loss

    return step


def trainer_step_us(backend, optimizer, sizes, X, y, batch, epochs=5):
    trainer = Trainer(nn.MLP(sizes, rng=0), optimizer=optimizer, backend=backend, batch_size=batch)
    history = trainer.fit(X, y, epochs=epochs + 1, verbose=0)
    return batch / max(history["samples_per_s"][1:]) * 1e6


def kernel_times_us(backend, sizes, batch):
    k = nn.raw_kernels(backend)
    rng = np.random.default_rng(0)
    f = np.float32
    n_in, n_hidden, n_out = sizes
    x = rng.random((batch, n_in), dtype=f)
    w1, b1 = rng.random((n_in, n_hidden), dtype=f), rng.random(n_hidden, dtype=f)
    w2, b2 = rng.random((n_hidden, n_out), dtype=f), rng.random(n_out, dtype=f)
    y = rng.integers(0, n_out, batch)
    h = k.linear_forward(x, w1, b1, "relu")
    z = k.linear_forward(h, w2, b2, None)
    _, dz = k.cross_entropy_with_grad(z, y, "mean", -100, 0.0, None)
    params = [w1.copy(), b1.copy(), w2.copy(), b2.copy()]
    flat = np.concatenate([p.ravel() for p in params])
    flat_grad = np.ones_like(flat)
    cases = {
        "linear_forward relu": lambda: k.linear_forward(x, w1, b1, "relu"),
        "linear_forward": lambda: k.linear_forward(h, w2, b2, None),
        "cross_entropy_with_grad": lambda: k.cross_entropy_with_grad(z, y, "mean", -100, 0.0, None),
        "linear_backward (out)": lambda: k.linear_backward(h, w2, dz, True),
        "relu_backward": lambda: k.relu_backward(h, h),
        "linear_backward (in)": lambda: k.linear_backward(x, w1, h, True),
        # The Trainer packs the parameters into one buffer: one call per step.
        "sgd_step packed": lambda: k.sgd_step(flat, flat_grad, None, 0.0, 0.0, False, 0.0),
    }
    out = {}
    for name, fn in cases.items():
        fn()
        out[name] = min(timeit.repeat(fn, number=500, repeat=5)) / 500 * 1e6
    return out


def overhead_us(sizes, X, y, batch):
    """The step loop with kernels that return preallocated results."""
    import kernprop.nn as knn

    real = knn.raw_kernels("numpy")
    f = np.float32
    n_in, n_hidden, n_out = sizes
    h, z, x_in = np.ones((batch, n_hidden), f), np.ones((batch, n_out), f), np.ones((batch, n_in), f)
    grads = {s: np.ones(s, f) for s in [(n_in, n_hidden), (n_hidden,), (n_hidden, n_out), (n_out,)]}
    fake = SimpleNamespace(**vars(real))
    fake.linear_forward = lambda x, w, b, a: (h if w.shape[1] == n_hidden else z)[: x.shape[0]]
    fake.linear_backward = lambda x, w, dy, hb: (x, grads[w.shape], grads[(w.shape[1],)])
    fake.relu_backward = lambda a, b: b
    fake.cross_entropy_with_grad = lambda logits, *a: (f(1.0), logits)
    fake.sgd_step = lambda *a: None
    saved = knn._KERNEL_CACHE.get("numpy")
    knn._KERNEL_CACHE["numpy"] = fake
    try:
        return trainer_step_us("numpy", optim.SGD(0.1), sizes, X, y, batch)
    finally:
        knn._KERNEL_CACHE["numpy"] = saved


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="64,32,10")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if len(sizes) != 3:
        parser.error("--sizes takes three sizes: in,hidden,out")
    kernprop.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = 45 * args.batch
    X = rng.random((n, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], n)

    step = plain_numpy_step(sizes, rng)
    steps = n // args.batch

    def epoch():
        for s in range(steps):
            step(X[s * args.batch:(s + 1) * args.batch], y[s * args.batch:(s + 1) * args.batch])

    epoch()
    best = min(timeit.repeat(epoch, number=1, repeat=10)) / steps * 1e6
    print(f"MLP {args.sizes}, batch {args.batch}, {args.threads} thread(s)")
    print(f"  plain numpy step            {best:8.1f} us")
    print(f"  trainer overhead (no math)  {overhead_us(sizes, X, y, args.batch):8.1f} us")
    for backend in kernprop.available_backends():
        if backend == "cuda":
            continue
        for name, opt in (("sgd", optim.SGD(0.05)), ("adam", optim.Adam(1e-3))):
            t = trainer_step_us(backend, opt, sizes, X, y, args.batch)
            print(f"  trainer {backend:6s} {name:4s}        {t:8.1f} us  ({best / t:.2f}x plain numpy)")
        times = kernel_times_us(backend, sizes, args.batch)
        print(f"  kernels {backend:6s} sum          {sum(times.values()):8.1f} us: "
              + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.1f} s)")
