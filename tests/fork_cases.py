"""Child-process cases of tests/test_fork.py: ``python fork_cases.py CASE BACKEND``.

Each case first runs parallel kernels in this process (inputs above the serial sizes:
numba 16,384 elements, cython 32,768, GEMM 4 MFLOP), so libgomp's workers and Numba's
``omp`` layer are started, then runs the same ops in workers started by CASE and checks
that the workers give this process's results bit for bit.  It prints one JSON line,
``{"ok": true}`` or ``{"ok": false, "why": ...}``.  A hung worker is reported by the
timeouts here; tests/test_fork.py runs this file under a timeout of its own as well.

Run as a file (not ``-c``) so that spawn and forkserver workers can import the
functions below; ``import kernprop`` finds the installed package, not the checkout.
"""

import json
import os
import pickle
import select
import sys
import threading
import time

import numpy as np

import kernprop as kp

STAGE_S = 180  # a worker stage that takes longer has hung (first runs compile kernels)


def battery(backend):
    """Ops whose inputs are large enough for the parallel kernels, by name."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 256)).astype(np.float32)  # 65,536 elements
    w = rng.standard_normal((256, 192)).astype(np.float32)  # 256x256x192: 25 MFLOP
    b = rng.standard_normal(192).astype(np.float32)
    labels = rng.integers(0, 192, 256)
    out = {
        "matmul": kp.matmul(x, w, backend=backend),
        "linear": kp.linear(x, w, b, activation="relu", backend=backend),
        "relu": kp.relu(x, backend=backend),
        "log_softmax": kp.log_softmax(x, backend=backend),
    }
    out["ce_loss"], out["ce_grad"] = kp.cross_entropy_with_grad(x, labels % 256, backend=backend)
    for name, value in zip(("lce_loss", "lce_dx", "lce_dw", "lce_db"),
                           kp.linear_cross_entropy(x, w, b, labels, backend=backend)):
        out[name] = value
    p, m1, m2 = x.copy(), np.zeros_like(x), np.zeros_like(x)
    kp.adam_step(p, x * 0.5, m1, m2, 1, lr=0.01, backend=backend)
    out["adam"] = p
    return {name: np.asarray(value) for name, value in out.items()}


def fit(backend, engine):
    """A short Trainer.fit; the trained parameters by name."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((1024, 128)).astype(np.float32)
    y = rng.integers(0, 10, 1024)
    model = kp.MLP([128, 256, 10], rng=0)
    kp.Trainer(model, optimizer=kp.SGD(lr=0.05, momentum=0.9), backend=backend, batch_size=256,
               engine=engine).fit(X, y, epochs=2, verbose=0)
    return {f"fit {engine} param{i}": np.asarray(p) for i, p in enumerate(model.parameters())}


def run_all(backend):
    # "auto" picks the packed or fused engine for this small model; "layerwise" runs
    # the backend's parallel ops
    return {**battery(backend), **fit(backend, "auto"), **fit(backend, "layerwise")}


def differences(want, got):
    """Names of the results that differ in any bit (with the largest difference)."""
    bad = []
    for name, value in want.items():
        other = got.get(name)
        if other is None or other.shape != value.shape:
            bad.append(f"{name}: missing or shape {None if other is None else other.shape}")
        elif not np.array_equal(value, other, equal_nan=True):
            bad.append(f"{name}: max |diff| {np.max(np.abs(value.astype(np.float64) - other)):.3g}")
    return bad


def _in_forked_child(function):
    """``function()`` in a child made by os.fork; its result (pickled through a pipe), or
    an error string when the child died or hung."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's code
        os.close(read)
        try:
            payload = pickle.dumps(("ok", function()))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
        os.write(write, payload)
        os._exit(0)
    os.close(write)
    data, deadline = b"", time.monotonic() + STAGE_S
    while time.monotonic() < deadline:
        if select.select([read], [], [], 1.0)[0]:
            chunk = os.read(read, 1 << 20)
            if not chunk:
                break
            data += chunk
    else:
        os.kill(pid, 9)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if not data:
        return ("error", f"forked child hung or died (wait status {status})")
    return pickle.loads(data)


def _child_checks(backend, want):
    """In an os.fork child: the ops and fit, the thread policy, a thread, a grandchild."""
    bad = differences(want, run_all(backend))
    if backend in ("numba", "cython"):  # the parent started OpenMP threads
        info = str(kp.threadpolicy.policy())
        if "after fork: 1, for good" not in info:
            bad.append(f"policy does not say one thread: {info}")
        kp.set_num_threads(2)  # a forked child keeps one thread
        if kp.get_num_threads() != 1:
            bad.append(f"set_num_threads(2) in a forked child gave {kp.get_num_threads()} threads")
    in_thread = {}
    thread = threading.Thread(target=lambda: in_thread.update(run_all(backend)))
    thread.start()
    thread.join(STAGE_S)
    bad += ["thread: hung"] if thread.is_alive() else [f"thread: {d}" for d in differences(want, in_thread)]
    kind, grandchild = _in_forked_child(lambda: run_all(backend))
    bad += [f"grandchild: {grandchild}"] if kind == "error" else [
        f"grandchild: {d}" for d in differences(want, grandchild)]
    return bad


def case_os_fork(backend, want):
    kind, result = _in_forked_child(lambda: _child_checks(backend, want))
    return [result] if kind == "error" else result


def case_pool(backend, want, method):
    import multiprocessing

    pool = multiprocessing.get_context(method).Pool(2)
    try:
        results = pool.map_async(run_all, [backend] * 4).get(STAGE_S)
    except multiprocessing.TimeoutError:
        pool.terminate()
        return [f"{method} pool: no result in {STAGE_S} s (a worker died or hung)"]
    pool.close()
    pool.join()
    return [f"{method} worker {i}: {d}" for i, got in enumerate(results) for d in differences(want, got)]


class _Items:
    """A torch Dataset whose items are computed by kernprop in the loader's workers."""

    def __init__(self, backend):
        self.backend = backend

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return battery(self.backend)["matmul"][index]


def case_dataloader(backend, want):
    from torch.utils.data import DataLoader

    loader = DataLoader(_Items(backend), batch_size=2, num_workers=2, timeout=STAGE_S,
                        multiprocessing_context="fork")
    rows = np.concatenate([batch.numpy() for batch in loader])
    return [] if np.array_equal(rows, want["matmul"][:4]) else ["DataLoader rows differ from the parent's"]


def main(case, backend):
    want = run_all(backend)  # the parent's results: its OpenMP threads are running now
    if case == "os_fork":
        bad = case_os_fork(backend, want)
    elif case == "dataloader":
        bad = case_dataloader(backend, want)
    else:
        bad = case_pool(backend, want, case)
    print(json.dumps({"ok": not bad, "why": bad, "kernprop": kp.__file__}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
