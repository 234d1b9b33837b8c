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

``--issue15`` prints issue 15's table: whole ``fit`` epochs of 784-512-256-10 (batch 256)
and 784-2048-2048-10 (batch 512) on numba at each matmul precision (``Trainer(precision=
...)``) against PyTorch eager fp32 and under ``torch.autocast("cpu", torch.bfloat16)``,
then where a kernprop step's time goes (products, ReLU masks, loss, update).

``--issue7`` instead prints the table of issue 7, all in one run and each model twice:
the digits MLP 64-32-10 and 64-128-10 at batch 32 and 784-512-256-10 ReLU at batch 256,
per step and in samples/s, for the plain NumPy step, PyTorch eager (``nn.Sequential``,
``F.cross_entropy``, ``backward``, ``torch.optim.SGD``; ``torch.set_num_threads(2)``)
when installed, and ``Trainer.fit`` on numba with the fused whole-step kernel
(``engines/mlp_step.py``) and with the layer-by-layer kernels, each with SGD
(the plain step's update) and Adam; ``auto`` marks the path the Trainer picks.  The
NumPy and torch loops step through the rows in order, so those Trainer rows run
``fit(shuffle=False)``: the same work, a full step each; the last row is fit's default,
its per-epoch shuffle (a permutation and a gather of X) included.

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import contextlib
import time
import timeit
import warnings
from types import SimpleNamespace

import numpy as np

import kernprop
from kernprop import engines, nn, optim
from kernprop.train import Trainer


def plain_numpy_step(sizes, rng):
    # ReLU MLP of any depth: forward, softmax cross-entropy (mean), backward, plain SGD
    weights = [rng.uniform(-0.3, 0.3, (a, b)).astype(np.float32) for a, b in zip(sizes[:-1], sizes[1:])]
    biases = [np.zeros(b, np.float32) for b in sizes[1:]]
    lr = np.float32(0.05)

    def step(xb, yb):
        acts = [xb]
        for i, (w, b) in enumerate(zip(weights, biases)):
            z = acts[-1] @ w + b
            acts.append(np.maximum(z, 0) if i < len(weights) - 1 else z)
        z = acts.pop()
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        rows = np.arange(xb.shape[0])
        loss = -np.log(p[rows, yb]).mean()
        dz = p
        dz[rows, yb] -= 1
        dz /= xb.shape[0]
        for i in range(len(weights) - 1, -1, -1):
            h = acts[i]
            dw, db = h.T @ dz, dz.sum(0)
            if i > 0:
                dz = dz @ weights[i].T
                dz *= h > 0
            weights[i] -= lr * dw
            biases[i] -= lr * db
        return loss

    return step


def torch_step(sizes, rng, threads=2, autocast=False):
    """PyTorch eager: the same ReLU MLP and SGD, with the forward pass under
    ``torch.autocast("cpu", torch.bfloat16)`` when ``autocast`` (the products in bf16,
    the loss in fp32, fp32 parameters); None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cross_entropy = torch.nn.functional.cross_entropy
    forward_precision = (torch.autocast("cpu", dtype=torch.bfloat16) if autocast
                         else contextlib.nullcontext())

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        with forward_precision:
            logits = model(xb)
        loss = cross_entropy(logits.float(), yb)
        loss.backward()
        opt.step()
        return loss

    return step, torch.from_numpy


def trainer_step_us(backend, optimizer, sizes, X, y, batch, epochs=5, engine="auto", shuffle=True):
    """Best step time of Trainer.fit with ``engine`` (a name, or "auto": the Trainer's
    choice)."""
    trainer = Trainer(nn.MLP(sizes, rng=0), optimizer=optimizer, backend=backend, batch_size=batch,
                      engine=engine)
    history = trainer.fit(X, y, epochs=epochs + 1, verbose=0, shuffle=shuffle)
    return batch / max(history["samples_per_s"][1:]) * 1e6


def loop_step_us(step, X, y, batch, repeat=10, min_steps=45):
    """Best time per step of ``step(xb, yb)`` over epochs of consecutive batches."""
    steps = X.shape[0] // batch

    def epoch():
        for s in range(steps):
            step(X[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch])

    epoch()
    return min(timeit.repeat(epoch, number=1, repeat=repeat)) / steps * 1e6


ISSUE7_MODELS = (((64, 32, 10), 32), ((64, 128, 10), 32), ((784, 512, 256, 10), 256))


def issue7(rounds=2):
    """Issue 7's table: each model ``rounds`` times, every contender in one run."""
    print(f"issue 7: train step, float32, numba threads {kernprop.get_num_threads()}, "
          f"torch eager on 2 threads; best epoch of several, us per step (samples/s)")
    for r in range(rounds):
        for sizes, batch in ISSUE7_MODELS:
            rng = np.random.default_rng(0)
            n = max(45 * batch, 2048)
            X = rng.random((n, sizes[0]), dtype=np.float32)
            y = rng.integers(0, sizes[-1], n)
            steps = 10 if batch >= 256 else 20
            # as many timed epochs as the loops above have repeats: on a shared machine a
            # burst of other work can cover a few short epochs
            epochs = steps
            rows = {"plain numpy (sgd)": loop_step_us(plain_numpy_step(sizes, rng), X, y, batch,
                                                      repeat=steps)}
            made = torch_step(sizes, rng)
            if made is not None:
                step, from_numpy = made
                Xt, yt = from_numpy(X), from_numpy(y)
                rows["torch eager (sgd)"] = loop_step_us(step, Xt, yt, batch, repeat=steps)
            for name, opt in (("sgd", lambda: optim.SGD(0.05)), ("adam", lambda: optim.Adam(1e-3))):
                model = nn.MLP(sizes, rng=0)
                auto, _ = engines.choose(model, nn.make_loss("cross_entropy"), opt(), "numba", batch)
                # the layer-by-layer engine of the rule's step 4 (packed for small models)
                size = sum(p.size for p in model.parameters())
                layers = "packed" if size <= engines.PACK_MAX_PARAMS else "layerwise"
                for engine in ("fused", layers):
                    label = f"numba {'fused' if engine == 'fused' else 'layers'} ({name})"
                    if engine == auto:
                        label += " auto"
                    rows[label] = trainer_step_us("numba", opt(), sizes, X, y, batch, epochs=epochs, engine=engine,
                                                  shuffle=False)
            # fit's default: the epoch's shuffle (a permutation and a gather of X) counted too
            rows["numba auto (sgd) + shuffle"] = trainer_step_us("numba", optim.SGD(0.05), sizes, X, y, batch,
                                                                 epochs=epochs)
            base = rows["plain numpy (sgd)"]
            torch_t = rows.get("torch eager (sgd)")
            print(f"round {r + 1}: {'-'.join(map(str, sizes))} batch {batch}")
            for label, t in rows.items():
                ratio = f"{base / t:5.2f}x numpy"
                if torch_t is not None:
                    ratio += f", {torch_t / t:6.2f}x torch"
                print(f"  {label:28s} {t:9.1f} us {batch / t * 1e6:11,.0f}/s   {ratio}", flush=True)


def step_breakdown_us(sizes, batch, precision, X, y, repeat=20):
    """Where one layer-by-layer numba step goes, each kernel timed alone in a block:
    the products (forward with bias and ReLU; dx and dw with db; packing and the bf16
    conversion inside them), the ReLU masks, the loss and the SGD updates; the
    remainder of the trainer's step is Python."""
    k = nn.raw_kernels("numba", precision)
    model = nn.MLP(list(sizes), rng=0)
    xb, yb = X[:batch], y[:batch]
    acts, outs = [], [xb]
    layers = model.layers if hasattr(model, "layers") else [model]
    linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
    for i, layer in enumerate(linears):
        act = "relu" if i < len(linears) - 1 else None
        outs.append(k.linear_forward(outs[-1], layer.weight, layer.bias, act))
        acts.append(act)
    _, dlogits = k.cross_entropy_with_grad(outs[-1], yb, "mean", -100, 0.0, None)

    def timed(fn):
        fn()
        return min(timeit.repeat(fn, number=1, repeat=repeat)) * 1e6

    parts = {"products": 0.0, "relu masks": 0.0, "loss": 0.0, "update": 0.0}
    for i, layer in enumerate(linears):
        parts["products"] += timed(lambda: k.linear_forward(outs[i], layer.weight, layer.bias, acts[i]))
        parts["products"] += timed(lambda: k.linear_backward(outs[i], layer.weight, dlogits if i == len(linears) - 1
                                                              else outs[i + 1], True, i > 0))
        if acts[i] is not None:
            parts["relu masks"] += timed(lambda: k.relu_backward(outs[i + 1], outs[i + 1]))
        for p in layer.parameters():
            grad = np.zeros_like(p)
            parts["update"] += timed(lambda: k.sgd_step(p, grad, None, 0.0, 0.0, False, 0.0))
    parts["loss"] = timed(lambda: k.cross_entropy_with_grad(outs[-1], yb, "mean", -100, 0.0, None))
    return parts


ISSUE15_MODELS = (((784, 512, 256, 10), 256), ((784, 2048, 2048, 10), 512))


def issue15(rounds=2, threads=2):
    """Issue 15's table: whole ``fit`` epochs (SGD, numba, layer by layer) at each
    precision against PyTorch eager fp32 and under autocast bf16, each model ``rounds``
    times, samples/s; then where a kernprop step goes."""
    print(f"issue 15: train step, float32 master weights, SGD, {threads} threads (numba and torch); "
          f"best epoch of several; samples/s")
    for r in range(rounds):
        for sizes, batch in ISSUE15_MODELS:
            rng = np.random.default_rng(0)
            n = 12 * batch
            X = rng.random((n, sizes[0]), dtype=np.float32)
            y = rng.integers(0, sizes[-1], n)
            rows = {}
            for name, made in (("torch fp32", torch_step(sizes, rng, threads)),
                               ("torch autocast bf16", torch_step(sizes, rng, threads, autocast=True))):
                if made is not None:
                    step, from_numpy = made
                    rows[name] = loop_step_us(step, from_numpy(X), from_numpy(y), batch, repeat=5)
            for precision in ("fp32", "bf16x3", "bf16"):
                trainer = Trainer(nn.MLP(list(sizes), rng=0), optimizer=optim.SGD(0.05), backend="numba",
                                  batch_size=batch, precision=precision)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    history = trainer.fit(X, y, epochs=6, verbose=0)
                label = f"kernprop {precision} ({trainer.engine_choice[0]}, products {history['precision'][-1]})"
                rows[label] = batch / max(history["samples_per_s"][1:]) * 1e6
            print(f"round {r + 1}: {'-'.join(map(str, sizes))} batch {batch}")
            base, autocast = rows.get("torch fp32"), rows.get("torch autocast bf16")
            for label, t in rows.items():
                ratio = "" if base is None else f"{base / t:5.2f}x torch fp32, {autocast / t:5.2f}x autocast"
                print(f"  {label:48s} {batch / t * 1e6:10,.0f}/s  {t:9.1f} us/step  {ratio}", flush=True)
    for sizes, batch in ISSUE15_MODELS:
        rng = np.random.default_rng(0)
        X = rng.random((batch, sizes[0]), dtype=np.float32)
        y = rng.integers(0, sizes[-1], batch)
        for precision in ("fp32", "bf16"):
            parts = step_breakdown_us(sizes, batch, precision, X, y)
            print(f"where a step goes, {'-'.join(map(str, sizes))} batch {batch}, {precision}: "
                  + ", ".join(f"{k} {v:,.0f} us" for k, v in parts.items()) + f" (sum {sum(parts.values()):,.0f})")


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


def fused_kernel_us(sizes, X, y, batch):
    """One call of the numba fused whole-step kernel (what the Trainer's loop calls)."""
    from kernprop.engines.mlp_step import MLPStep

    model = nn.MLP(sizes, rng=0)
    params = model.parameters()
    flat = np.concatenate([p.ravel() for p in params])
    layers, offset = [], 0
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append((a, b, offset, offset + a * b, "relu" if i < len(sizes) - 2 else None))
        offset += a * b + b
    plan = MLPStep(layers, batch, np.float32, flat, np.zeros_like(flat), None, None,
                   loss="cross_entropy", reduction="mean", optimizer="sgd")
    step = plan.bind(X, y, np.zeros(X.shape[0], np.int64))
    step(0, batch, 0.0, 1)  # lr 0: the weights stay put
    return min(timeit.repeat(lambda: step(0, batch, 0.0, 1), number=500, repeat=5)) / 500 * 1e6


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
    fake.linear_backward = lambda x, w, dy, hb, need_dx=True: (x, grads[w.shape], grads[(w.shape[1],)])
    fake.relu_backward = lambda a, b: b
    fake.cross_entropy_with_grad = lambda logits, *a: (f(1.0), logits)
    fake.sgd_step = lambda *a: None
    key = ("numpy", False)  # the unchecked table the Trainer binds (nn.kernel_table)
    saved = knn._TABLES.get(key)
    knn._TABLES[key] = fake
    try:
        return trainer_step_us("numpy", optim.SGD(0.1), sizes, X, y, batch)
    finally:
        knn._TABLES[key] = saved


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="64,32,10")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--issue7", action="store_true", help="issue 7's table (see the docstring)")
    parser.add_argument("--issue15", action="store_true", help="issue 15's table: precisions against torch "
                        "fp32 and autocast bf16 (see issue15)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kernprop.set_num_threads(args.threads)
    if args.issue7:
        issue7()
        return
    if args.issue15:
        issue15(threads=args.threads)
        return
    if len(sizes) != 3:
        parser.error("--sizes takes three sizes: in,hidden,out")
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
              + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
              + (" (the layer-by-layer path)" if backend == "numba" else ""))
        if backend == "numba":
            print(f"  kernel  numba  mlp_step       {fused_kernel_us(sizes, X, y, args.batch):8.1f} us "
                  "(the fused whole step, one call; sgd)")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.1f} s)")
