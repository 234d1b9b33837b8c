"""GPU benchmarks of the ``cuda`` backend against cuBLAS (through CuPy) and PyTorch CUDA
eager, and the page ``RESULTS-gpu.md`` that records them.  Run by ``bench/gpu.sh``.

Each contender is validated once against a reference, then timed: one untimed call, then
blocks of calls between two device synchronisations (wall clock over the block, so every
launch, allocation and host round trip the op makes is paid), the best block kept.
Inputs are drawn at random on the device (never zeros).  Ceilings are measured here, not
taken from a datasheet: the copy bandwidth of a 2 GiB device-to-device copy (bytes read
plus written), and cuBLAS's SGEMM rate without TF32.

    python bench/gpu_bench.py --out RESULTS-gpu.md [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import platform
import re
import sys
import time

os.environ.setdefault("CUPY_TF32", "0")  # cuBLAS SGEMM in full float32, as kernprop

import numpy as np  # noqa: E402


def _sync():
    from numba import cuda

    cuda.synchronize()
    import torch

    torch.cuda.synchronize()


def timeit(fn, reps, blocks=3):
    """Seconds per call: the best of ``blocks`` blocks of ``reps`` calls, after one warm call."""
    fn()
    _sync()
    best = float("inf")
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def rel_error(got, want) -> float:
    """||got - want|| / ||want|| in float64 (torch tensors or anything array-like)."""
    import torch

    g = torch.as_tensor(got, device="cuda").detach().double()
    w = torch.as_tensor(want, device="cuda").detach().double()
    if not torch.isfinite(g).all():
        return float("nan")
    return float(torch.linalg.vector_norm(g - w) / torch.linalg.vector_norm(w))


def nb(t):
    """A torch CUDA tensor seen by Numba, without a copy."""
    from numba import cuda

    return cuda.as_cuda_array(t.detach())


def th(d):
    """A Numba device array seen by torch, without a copy."""
    import torch

    return torch.as_tensor(d, device="cuda")


def bench_copy(quick):
    import torch

    n = (1 << 28) if not quick else (1 << 26)  # 1 GiB of float32 (256 MiB quick)
    a = torch.rand(n, device="cuda")
    b = torch.empty_like(a)
    seconds = timeit(lambda: b.copy_(a), reps=10)
    return {"op": f"device copy {4 * n >> 20} MiB", "contender": "torch copy_", "ms": seconds * 1e3,
            "rate": 2 * 4 * n / seconds / 1e9, "unit": "GB/s", "check": ""}


def bench_rows(bandwidth, quick):
    """log_softmax and cross-entropy with its gradient at 8192 x 32000 float32."""
    import torch
    import torch.nn.functional as F

    import kernprop

    n, c = (8192, 32000) if not quick else (1024, 32000)
    x = torch.randn(n, c, device="cuda") * 4
    labels = torch.randint(0, c, (n,), device="cuda")
    labels_host = labels.cpu().numpy()
    xd = nb(x)
    nbytes = 2 * 4 * n * c  # the floor: logits read once, result written once
    rows = []

    want = torch.log_softmax(x.double(), -1)
    got = kernprop.log_softmax(xd, backend="cuda")
    err = rel_error(th(got), want)
    del got
    t = timeit(lambda: kernprop.log_softmax(xd, backend="cuda"), reps=10)
    rows.append(("kernprop cuda", t, err))
    err_t = rel_error(torch.log_softmax(x, -1), want)
    t = timeit(lambda: torch.log_softmax(x, -1), reps=10)
    rows.append(("torch eager", t, err_t))
    del want
    out = []
    for contender, seconds, err in rows:
        rate = nbytes / seconds / 1e9
        out.append({"op": f"log_softmax {n}x{c} f32", "contender": contender, "ms": seconds * 1e3,
                    "rate": rate, "unit": "GB/s", "share": rate / bandwidth, "check": f"rel err {err:.1e}"})

    # cross-entropy, mean over rows, loss and d loss / d logits
    x64 = x.double().requires_grad_()
    loss64 = F.cross_entropy(x64, labels)
    (grad64,) = torch.autograd.grad(loss64, x64)
    loss64 = loss64.item()
    del x64
    loss, grad = kernprop.cross_entropy_with_grad(xd, labels_host, backend="cuda")
    err_k = max(rel_error(th(grad), grad64), abs(float(loss) - loss64) / abs(loss64))
    del grad
    xt = x.clone().requires_grad_()

    def torch_ce():
        loss = F.cross_entropy(xt, labels)
        return torch.autograd.grad(loss, xt)

    lt = F.cross_entropy(xt, labels)
    (gt,) = torch.autograd.grad(lt, xt)
    err_t = max(rel_error(gt, grad64), abs(lt.item() - loss64) / abs(loss64))
    del gt, grad64
    t_k = timeit(lambda: kernprop.cross_entropy_with_grad(xd, labels_host, backend="cuda"), reps=10)
    t_t = timeit(torch_ce, reps=10)
    for contender, seconds, err in (("kernprop cuda", t_k, err_k), ("torch eager", t_t, err_t)):
        rate = nbytes / seconds / 1e9
        out.append({"op": f"cross_entropy + grad {n}x{c} f32", "contender": contender, "ms": seconds * 1e3,
                    "rate": rate, "unit": "GB/s", "share": rate / bandwidth, "check": f"rel err {err:.1e}"})
    return out


def bench_sgemm(quick):
    import cupy
    import torch

    import kernprop

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    n = 4096 if not quick else 1024
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    want = a.double() @ b.double()
    flops = 2 * n**3
    out = []
    ad, bd = nb(a), nb(b)
    ac, bc = cupy.asarray(a), cupy.asarray(b)
    contenders = [
        ("kernprop cuda", lambda: kernprop.matmul(ad, bd, backend="cuda"), lambda r: th(r)),
        ("cuBLAS (CuPy, no TF32)", lambda: cupy.matmul(ac, bc), lambda r: torch.as_tensor(r, device="cuda")),
        ("torch eager (no TF32)", lambda: a @ b, lambda r: r),
    ]
    ceiling = None
    for contender, fn, to_torch in contenders:
        err = rel_error(to_torch(fn()), want)
        seconds = timeit(fn, reps=5 if not quick else 20)
        rate = flops / seconds / 1e12
        if contender.startswith("cuBLAS"):
            ceiling = rate
        out.append({"op": f"SGEMM {n}^3", "contender": contender, "ms": seconds * 1e3, "rate": rate,
                    "unit": "TFLOP/s", "check": f"rel err {err:.1e}"})
    for row in out:
        row["share"] = row["rate"] / ceiling if ceiling else float("nan")
    return out


def bench_mlp_step(quick):
    """One SGD step of a 784-512-256-10 ReLU MLP at batch 1024, float32."""
    import torch
    import torch.nn.functional as F

    import kernprop

    torch.backends.cuda.matmul.allow_tf32 = False
    sizes = [784, 512, 256, 10]
    batch, lr = 1024, 0.05
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, sizes[0], device="cuda", generator=g)
    y = torch.randint(0, sizes[-1], (batch,), device="cuda", generator=g)
    y_host = y.cpu().numpy()
    init = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        w = torch.randn(fan_in, fan_out, device="cuda", generator=g) / fan_in**0.5
        init.append((w, torch.zeros(fan_out, device="cuda")))

    # kernprop: device arrays throughout (weights (in, out), as kernprop's layout)
    from numba import cuda

    kp = [(cuda.to_device(w.cpu().numpy()), cuda.to_device(b.cpu().numpy())) for w, b in init]
    xd = nb(x)

    def kernprop_step():
        acts = [xd]
        for i, (w, b) in enumerate(kp):
            last = i == len(kp) - 1
            acts.append(kernprop.linear(acts[-1], w, b, activation=None if last else "relu", backend="cuda"))
        loss, dy = kernprop.cross_entropy_with_grad(acts[-1], y_host, backend="cuda")
        for i in reversed(range(len(kp))):
            w, b = kp[i]
            dx, dw, db = kernprop.linear_backward(acts[i], w, dy, need_dx=i > 0, backend="cuda")
            kernprop.sgd_step(w, dw, lr=lr, backend="cuda")
            kernprop.sgd_step(b, db, lr=lr, backend="cuda")
            if i > 0:
                dy = kernprop.relu_backward(acts[i], dx, backend="cuda")  # relu output > 0 iff input > 0
        return loss

    # torch eager: nn.Linear layers hold (out, in); same initial weights
    layers = torch.nn.Sequential(*[
        m for i, (w, b) in enumerate(init)
        for m in ([torch.nn.Linear(w.shape[0], w.shape[1])] + ([torch.nn.ReLU()] if i < len(init) - 1 else []))
    ]).cuda()
    with torch.no_grad():
        for layer, (w, b) in zip([m for m in layers if isinstance(m, torch.nn.Linear)], init):
            layer.weight.copy_(w.T)
            layer.bias.copy_(b)
    opt = torch.optim.SGD(layers.parameters(), lr=lr)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(layers(x), y)
        loss.backward()
        opt.step()
        return loss

    # validate: one step each from the same weights, then compare the first layer
    loss_k = float(kernprop_step())
    loss_t = torch_step().item()
    err = rel_error(th(kp[0][0]), layers[0].weight.detach().T)
    check = f"loss {loss_k:.5f} vs torch {loss_t:.5f}; W1 after 1 step rel err {err:.1e}"
    out = []
    for contender, fn in (("kernprop cuda", kernprop_step), ("torch eager", torch_step)):
        seconds = timeit(fn, reps=20)
        out.append({"op": f"MLP 784-512-256-10 SGD step, batch {batch} f32", "contender": contender,
                    "ms": seconds * 1e3, "rate": batch / seconds, "unit": "samples/s", "check": check})
    return out


def bench_small_op():
    """relu on a 256 x 512 device array: what one op costs when launching dominates."""
    import torch

    import kernprop

    x = torch.randn(256, 512, device="cuda")
    xd = nb(x)
    err = rel_error(th(kernprop.relu(xd, backend="cuda")), torch.relu(x.double()))
    out = []
    for contender, fn in (("kernprop cuda", lambda: kernprop.relu(xd, backend="cuda")),
                          ("torch eager", lambda: torch.relu(x))):
        seconds = timeit(fn, reps=200)
        out.append({"op": "relu 256x512 f32 (launch-bound)", "contender": contender, "ms": seconds * 1e3,
                    "rate": seconds * 1e6, "unit": "us/call", "check": f"rel err {err:.1e}"})
    return out


def _bandwidth_rows(op, contenders, nbytes, bandwidth, want, reps=20):
    """Rows of a memory-bound op: each contender ``(name, fn, to_torch)`` checked against
    ``want`` (float64) once, then timed; rate in GB/s of ``nbytes`` moved per call."""
    out = []
    for contender, fn, to_torch in contenders:
        err = rel_error(to_torch(fn()), want)
        seconds = timeit(fn, reps=reps)
        rate = nbytes / seconds / 1e9
        out.append({"op": op, "contender": contender, "ms": seconds * 1e3, "rate": rate, "unit": "GB/s",
                    "share": rate / bandwidth, "check": f"rel err {err:.1e}"})
    return out


def bench_transformer(bandwidth, quick):
    """The transformer ops, forward and backward, float32, against PyTorch CUDA eager:
    gelu and layer_norm at GPT-2 small's activations (8192 tokens x 3072 and x 768),
    causal attention with heads of 64 and 128 (FLOP rates: forward 4 B H L^2 D, halved
    by the mask, backward 2.5 times that, FlashAttention's convention; kernprop's
    backward does 7 of those tile products, not 5, to stay free of atomics), and the
    embedding of GPT-2's 50257-token vocabulary."""
    import torch
    import torch.nn.functional as F

    import kernprop

    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(26)
    tokens = 8192 if not quick else 1024
    out = []

    # gelu, elementwise: read x (and dy), write the result
    x = torch.randn(tokens, 3072, device="cuda", generator=g) * 2
    dy = torch.randn(tokens, 3072, device="cuda", generator=g)
    xd, dyd = nb(x), nb(dy)
    n = x.numel()
    for approximate in ("none", "tanh"):
        want = F.gelu(x.double(), approximate=approximate)
        out += _bandwidth_rows(f"gelu ({approximate}) {tokens}x3072 f32", [
            ("kernprop cuda", lambda: kernprop.gelu(xd, approximate, backend="cuda"), th),
            ("torch eager", lambda: F.gelu(x, approximate=approximate), lambda r: r),
        ], 2 * 4 * n, bandwidth, want)
    want = torch.ops.aten.gelu_backward(dy.double(), x.double(), approximate="tanh")
    out += _bandwidth_rows(f"gelu_backward (tanh) {tokens}x3072 f32", [
        ("kernprop cuda", lambda: kernprop.gelu_backward(xd, dyd, "tanh", backend="cuda"), th),
        ("torch eager", lambda: torch.ops.aten.gelu_backward(dy, x, approximate="tanh"), lambda r: r),
    ], 3 * 4 * n, bandwidth, want)
    del x, dy, xd, dyd, want

    # layer_norm over 768 channels: forward reads x, writes y; backward reads x, dy, writes dx
    c = 768
    x = torch.randn(tokens, c, device="cuda", generator=g) * 3 + 1
    w = torch.rand(c, device="cuda", generator=g) + 0.5
    b = torch.randn(c, device="cuda", generator=g)
    dy = torch.randn(tokens, c, device="cuda", generator=g)
    xd, wd, bd, dyd = nb(x), nb(w), nb(b), nb(dy)
    want = F.layer_norm(x.double(), (c,), w.double(), b.double(), 1e-5)
    out += _bandwidth_rows(f"layer_norm {tokens}x{c} f32", [
        ("kernprop cuda", lambda: kernprop.layer_norm(xd, wd, bd, backend="cuda")[0], th),
        ("torch eager", lambda: F.layer_norm(x, (c,), w, b, 1e-5), lambda r: r),
    ], 2 * 4 * x.numel(), bandwidth, want)
    _, mean, rstd = kernprop.layer_norm(xd, wd, bd, backend="cuda")
    _, t_mean, t_rstd = torch.ops.aten.native_layer_norm(x, [c], w, b, 1e-5)
    _, m64, r64 = torch.ops.aten.native_layer_norm(x.double(), [c], w.double(), b.double(), 1e-5)
    want, _, _ = torch.ops.aten.native_layer_norm_backward(dy.double(), x.double(), [c], m64, r64, w.double(),
                                                           b.double(), [True, True, True])
    out += _bandwidth_rows(f"layer_norm_backward (dx, dweight, dbias) {tokens}x{c} f32", [
        ("kernprop cuda", lambda: kernprop.layer_norm_backward(xd, wd, mean, rstd, dyd, backend="cuda")[0], th),
        ("torch eager", lambda: torch.ops.aten.native_layer_norm_backward(
            dy, x, [c], t_mean, t_rstd, w, b, [True, True, True])[0], lambda r: r),
    ], 3 * 4 * x.numel(), bandwidth, want)
    del x, dy, xd, dyd, want, m64, r64

    # attention: (B, H, L, D) causal, forward, and forward + backward
    shapes = [(8, 12, 1024, 64), (4, 16, 1024, 128)] if not quick else [(2, 4, 256, 64), (1, 4, 256, 128)]
    for batch, heads, length, depth in shapes:
        q, k, v, dout = (torch.randn(batch, heads, length, depth, device="cuda", generator=g) for _ in range(4))
        qd, kd, vd, doutd = nb(q), nb(k), nb(v), nb(dout)
        flops = 4 * batch * heads * length * length * depth / 2  # causal: half the scores
        leaves = [t.double().requires_grad_() for t in (q, k, v)]
        want_out = F.scaled_dot_product_attention(*leaves, is_causal=True)
        want_grads = torch.autograd.grad(want_out, leaves, dout.double())
        want_out = want_out.detach()
        del leaves
        label = f"attention causal B{batch} H{heads} L{length} D{depth} f32"

        def kernprop_both():
            o, lse = kernprop.attention(qd, kd, vd, causal=True, backend="cuda")
            return o, kernprop.attention_backward(qd, kd, vd, o, lse, doutd, causal=True, backend="cuda")

        tq, tk, tv = (t.clone().requires_grad_() for t in (q, k, v))

        def torch_both():
            o = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
            return o, torch.autograd.grad(o, (tq, tk, tv), dout)

        def errors(result, to_torch):
            o, grads = result
            return max([rel_error(to_torch(o), want_out)]
                       + [rel_error(to_torch(gr), w) for gr, w in zip(grads, want_grads)])

        for contender, fwd, both, to_torch in (
            ("kernprop cuda", lambda: kernprop.attention(qd, kd, vd, causal=True, backend="cuda"), kernprop_both, th),
            ("torch eager (SDPA)", lambda: (F.scaled_dot_product_attention(q, k, v, is_causal=True),), torch_both,
             lambda r: r),
        ):
            err = errors(both(), to_torch)
            seconds = timeit(fwd, reps=10)
            check = f"rel err (out, dq, dk, dv) {err:.1e}"
            out.append({"op": label + ", forward", "contender": contender, "ms": seconds * 1e3,
                        "rate": flops / seconds / 1e12, "unit": "TFLOP/s", "check": check})
            seconds = timeit(both, reps=5)
            out.append({"op": label + ", forward + backward", "contender": contender, "ms": seconds * 1e3,
                        "rate": 3.5 * flops / seconds / 1e12, "unit": "TFLOP/s", "check": check})
        del q, k, v, dout, qd, kd, vd, doutd, tq, tk, tv, want_out, want_grads

    # embedding: GPT-2's vocabulary, 768 channels; the backward writes the whole (V, C) table
    vocabulary = 50257
    table = torch.randn(vocabulary, c, device="cuda", generator=g)
    ids = torch.randint(0, vocabulary, (tokens // 1024 or 1, min(tokens, 1024)), device="cuda", generator=g)
    ids_host = ids.cpu().numpy()
    dy = torch.randn(*ids.shape, c, device="cuda", generator=g)
    tabled, dyd = nb(table), nb(dy)
    out += _bandwidth_rows(f"embedding {tuple(ids.shape)} of {vocabulary}x{c} f32", [
        ("kernprop cuda", lambda: kernprop.embedding(ids_host, tabled, backend="cuda"), th),
        ("torch eager", lambda: F.embedding(ids, table), lambda r: r),
    ], 2 * 4 * ids.numel() * c, bandwidth, F.embedding(ids, table.double()))
    want = torch.ops.aten.embedding_dense_backward(dy.double(), ids, vocabulary, -1, False)
    out += _bandwidth_rows(f"embedding_backward {tuple(ids.shape)} -> {vocabulary}x{c} f32", [
        ("kernprop cuda (deterministic)",
         lambda: kernprop.embedding_backward(ids_host, dyd, vocabulary, backend="cuda"), th),
        ("torch eager", lambda: torch.ops.aten.embedding_dense_backward(dy, ids, vocabulary, -1, False), lambda r: r),
    ], 4 * (ids.numel() * c + vocabulary * c), bandwidth, want)
    return out


def signatures_section(folder):
    """The merged report of bench/gpu_signatures.py, as Markdown lines."""
    files = sorted(glob.glob(os.path.join(folder, "*.tsv"))) if folder else []
    if not files:
        return ["No signature report (the test step did not run the plugin)."]
    seen = set()
    for path in files:
        with open(path) as f:
            seen.update(tuple(line.rstrip("\n").split("\t")) for line in f if line.strip())
    missing = sorted(row for row in seen if row[-1] != "listed")
    lines = [f"The test run compiled {len(seen)} distinct kernel specialisations; "
             f"{len(missing)} of them are not in `launches.py` (never statically checked)."]
    lines += [f"- `{k}` {d} `{s}`" for k, d, s, _ in missing]
    return lines


def environment():
    import numba
    import torch
    from numba import cuda

    try:
        from importlib.metadata import version

        numba_cuda = version("numba-cuda")
    except Exception:  # noqa: BLE001
        numba_cuda = "?"
    try:
        import cupy

        cupy_version = cupy.__version__
    except Exception:  # noqa: BLE001
        cupy_version = "not installed"
    dev = cuda.get_current_device()
    props = torch.cuda.get_device_properties(0)
    return (f"{torch.cuda.get_device_name(0)} (compute capability {dev.compute_capability[0]}."
            f"{dev.compute_capability[1]}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB); "
            f"CUDA driver {cuda.driver.driver.get_version()}; Python {platform.python_version()}, numba {numba.__version__}, "
            f"numba-cuda {numba_cuda}, torch {torch.__version__}, CuPy {cupy_version}")


POOL_SECTION = ("With the caching allocator",
                "Same benchmarks in a second process with `kernprop.kernels.numba_cuda.pool` installed "
                "(freed device blocks reused instead of cuMemFree / cuMemAlloc):")
TRANSFORMER_SECTION = ("Transformer ops (issue 26)",
                       "Measured in a process of their own by `gpu_bench.py --only copy,transformer --append`: "
                       "forward and backward against PyTorch CUDA eager (aten's own backward kernels where "
                       "there is one, autograd for SDPA), float32, every contender checked first against "
                       "PyTorch in float64. Bandwidth shares are of the copy in this table.")


def append_pool_rows(path, results, errors, section=POOL_SECTION) -> int:
    """Rows measured in a second process, as a section of the page: ``section`` is
    (title, one paragraph)."""
    title, intro = section
    lines = ["", f"## {title}", "", intro, "",
             "| op | contender | ms | rate | share | check |", "|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['op']} | {r['contender']} | {r['ms']:.3f} | {r['rate']:,.1f} {r['unit']} | "
              f"{format(r['share'], '.0%') if 'share' in r else ''} | {r['check']} |" for r in results]
    lines += [f"- failed: {e}" for e in errors]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {path}")
    return 1 if errors else 0


def last_lines(path, pattern, count=3):
    """The last ``count`` lines of the file at ``path`` that match the regex ``pattern``."""
    if not path or not os.path.exists(path):
        return []
    regex = re.compile(pattern)
    with open(path, errors="replace") as f:
        lines = [line.rstrip() for line in f if regex.search(line)]
    return lines[-count:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/RESULTS-gpu.md", help="the Markdown page to write")
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    parser.add_argument("--tests-log", default=None, help="pytest log whose summary the page quotes")
    parser.add_argument("--train-log", default=None, help="kernprop train log the page quotes")
    parser.add_argument("--signatures", default=None, help="folder of bench/gpu_signatures.py reports")
    parser.add_argument("--only", default=None,
                        help="comma-separated benchmarks: copy,rows,sgemm,mlp,small,transformer "
                             "(default: all but transformer, which gpu.sh runs in a process of its own)")
    parser.add_argument("--append", action="store_true",
                        help="append the rows to --out as a section (the transformer ops) instead of writing the page")
    parser.add_argument("--pool", action="store_true",
                        help="kernprop's caching allocator (kernels/numba_cuda/pool.py); append its kernprop rows to --out")
    args = parser.parse_args(argv)
    if args.pool:
        from kernprop.kernels.numba_cuda import pool

        pool.install()  # before the first CUDA call makes the context

    try:
        env = environment()
    except Exception as exc:  # noqa: BLE001 - the page still records what ran
        env = f"(environment unreadable: {type(exc).__name__}: {exc})"
    print(env, flush=True)
    results, errors = [], []
    copy = None
    for name, fn in (("copy", lambda: [bench_copy(args.quick)]),
                     ("rows", lambda: bench_rows(copy["rate"] if copy else float("nan"), args.quick)),
                     ("sgemm", lambda: bench_sgemm(args.quick)),
                     ("mlp", lambda: bench_mlp_step(args.quick)),
                     ("small", bench_small_op),
                     ("transformer", lambda: bench_transformer(copy["rate"] if copy else float("nan"), args.quick))):
        if args.only and name not in args.only.split(","):
            continue
        if not args.only and name == "transformer":
            continue
        try:
            rows = fn()
        except Exception as exc:  # noqa: BLE001 - record it, measure the rest
            import traceback

            traceback.print_exc()
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if name == "copy":
            copy = rows[0]
        if args.pool:
            rows = [dict(row, contender=row["contender"] + " + pool") for row in rows
                    if row["contender"].startswith("kernprop")]
        for row in rows:
            share = f", {row['share']:.0%}" if "share" in row else ""
            print(f"{row['op']:48} {row['contender']:26} {row['ms']:9.3f} ms  {row['rate']:10.1f} {row['unit']}{share}  {row['check']}",
                  flush=True)
        results += rows

    if args.pool:
        return append_pool_rows(args.out, results, errors)
    if args.append:
        return append_pool_rows(args.out, results, errors, TRANSFORMER_SECTION)
    commit = os.environ.get("KERNPROP_COMMIT", "?")
    lines = [
        "# kernprop on a GPU: measured results",
        "",
        f"Measured by `bench/gpu.sh` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"commit {commit}{' (quick shapes)' if args.quick else ''}.",
        "",
        f"Device and software: {env}.",
        "",
        "Times are wall clock per call between device synchronisations, best of 3 blocks after a warm call; "
        "every contender was checked first (‖got − want‖/‖want‖ against a float64 PyTorch reference). "
        "Bandwidth shares are of the measured device copy; SGEMM shares are of cuBLAS without TF32.",
        "",
        "| op | contender | ms | rate | share | check |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in results:
        share = f"{row['share']:.0%}" if "share" in row else ""
        lines.append(f"| {row['op']} | {row['contender']} | {row['ms']:.3f} | {row['rate']:,.1f} {row['unit']} | {share} | {row['check']} |")
    if errors:
        lines += ["", "Benchmarks that failed:", ""] + [f"- {e}" for e in errors]
    tests = last_lines(args.tests_log, r"^=*\s*\d+ (passed|failed)|^(FAILED|ERROR) ", 5)
    train = last_lines(args.train_log, r"^(test accuracy|training speed|epoch 1/)|^\w*Error\b", 4)
    lines += ["", "## Test suite on the device", ""] + ([f"    {t}" for t in tests] or ["not run"])
    lines += ["", "## Training run, `kernprop train --backend cuda`", ""] + ([f"    {t}" for t in train] or ["not run"])
    lines += ["", "## Kernel specialisations compiled on the device", ""] + signatures_section(args.signatures)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
