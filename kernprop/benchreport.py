"""``kernprop bench``: run the pytest-benchmark suites in ``bench/`` and write a report.

The report (Markdown) holds, for every op and shape, the median time per backend, the
speed-up over the NumPy reference and over PyTorch, GFLOP/s for the compute-bound ops
(GEMM, linear, linear cross-entropy, training step) and GB/s for the memory-bound ones,
next to this machine's peaks measured in the same run (a large ``np.copyto`` for
bandwidth, an OpenBLAS float32 GEMM for GFLOP/s); the machine, thread counts and library
versions; Numba's first-call compile time and cached start-up per backend (measured in
fresh subprocesses); and the peak memory of the fused linear cross-entropy against the
unfused linear + cross-entropy + linear backward.

The benchmarks themselves run in a subprocess, ``python -m pytest bench/ --benchmark-only
--benchmark-json=...``; ``bench/`` is looked up next to the package's parent directory
(a source checkout with an editable install).  Everything here except ``run`` only reads
JSON, so the report, ``--compare`` and ``--plot`` are tested without benchmarking.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Families in report order, and the ops of each in the order they are listed.
FAMILIES = {
    "matmul": ("matmul", "linear", "linear_backward"),
    "activations": ("relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward"),
    "softmax": ("log_softmax", "log_softmax_backward", "softmax"),
    "losses": ("cross_entropy", "cross_entropy_with_grad", "mse", "mse_backward", "linear_cross_entropy"),
    "optimizers": ("sgd_step", "adam_step"),
    "train": ("train_step", "fit_epoch"),
}
OP_ORDER = [op for ops in FAMILIES.values() for op in ops]
# Throughput in GFLOP/s for these (compute-bound); GB/s for every other op.
COMPUTE_BOUND = {"matmul", "linear", "linear_backward", "linear_cross_entropy", "train_step", "fit_epoch"}
BACKEND_ORDER = ("numpy", "numba", "cython", "cuda", "torch")
BASELINES = ("numpy", "torch")  # speed-ups are reported over these
SHAPE_LABELS = {"small": "small", "mlp": "MLP-sized", "large": "large"}
LOCK_HINT = "flock /tmp/kernprop-bench.lock"
NOISY = 2.0  # a median over NOISY x the min is marked noisy in the report


class BenchError(RuntimeError):
    """A problem the command line reports in one line (exit status 2)."""


# --- reading pytest-benchmark JSON -----------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One benchmark: an op at a shape on a backend, its median seconds per call."""

    op: str
    shape: str
    label: str
    backend: str
    family: str
    median: float
    min: float
    iqr: float
    flops: int
    bytes: int
    rounds: int
    name: str

    @property
    def key(self):
        return (self.op, self.shape, self.backend)

    @property
    def noisy(self):
        """The median is over twice the fastest round: other work on the machine got in
        the way of many rounds (the min is then the better estimate of the kernel's cost)."""
        return self.min > 0 and self.median > NOISY * self.min

    def throughput(self):
        """(value, unit): GFLOP/s for compute-bound ops, GB/s otherwise; None if unknown."""
        if self.median <= 0:
            return None
        if self.op in COMPUTE_BOUND and self.flops:
            return self.flops / self.median / 1e9, "GFLOP/s"
        if self.bytes:
            return self.bytes / self.median / 1e9, "GB/s"
        return None


def _shape_size(shape):
    try:
        return math.prod(int(p) for p in shape.split("x"))
    except ValueError:
        return 0


def load(path) -> dict:
    """A pytest-benchmark JSON file as a dict (a clear error if it is not one)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise BenchError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise BenchError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    return data


def records(data) -> list[Record]:
    """The benchmarks of a pytest-benchmark JSON dict, in report order."""
    out = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info") or {}
        stats = bench.get("stats") or {}
        if "median" not in stats:
            continue
        group = bench.get("group") or ""
        op = info.get("op") or group.split(" ")[0] or bench.get("name", "?")
        shape = info.get("shape") or (group.split(" ", 1)[1] if " " in group else "")
        backend = info.get("backend") or (bench.get("params") or {}).get("backend") or "?"
        out.append(Record(
            op=op, shape=shape, label=info.get("shape_label", ""), backend=backend,
            family=info.get("family") or _family_of(op), median=float(stats["median"]),
            min=float(stats.get("min", stats["median"])), iqr=float(stats.get("iqr", 0.0)),
            flops=int(info.get("flops") or 0), bytes=int(info.get("bytes") or 0),
            rounds=int(stats.get("rounds") or 0), name=bench.get("fullname") or bench.get("name", ""),
        ))
    out.sort(key=_sort_key)
    return out


def _family_of(op):
    for family, ops in FAMILIES.items():
        if op in ops:
            return family
    return "other"


def _sort_key(r):
    op_index = OP_ORDER.index(r.op) if r.op in OP_ORDER else len(OP_ORDER)
    family_index = list(FAMILIES).index(r.family) if r.family in FAMILIES else len(FAMILIES)
    backend_index = BACKEND_ORDER.index(r.backend) if r.backend in BACKEND_ORDER else len(BACKEND_ORDER)
    label_index = {"small": 0, "mlp": 1, "large": 2}.get(r.label, 3)
    return (family_index, op_index, r.op, label_index, _shape_size(r.shape), r.shape, backend_index, r.backend)


def table(recs):
    """{(op, shape): {backend: Record}} keeping report order."""
    rows: dict = {}
    for r in recs:
        rows.setdefault((r.op, r.shape), {})[r.backend] = r
    return rows


def speedup(rows_entry, backend, baseline, stat="median"):
    """How many times faster ``backend`` is than ``baseline`` by ``stat`` ("median" or
    "min"); None if either is missing."""
    a, b = rows_entry.get(baseline), rows_entry.get(backend)
    if a is None or b is None or getattr(b, stat) <= 0:
        return None
    return getattr(a, stat) / getattr(b, stat)


# --- formatting ------------------------------------------------------------------------


def fmt_time(seconds):
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_ratio(ratio):
    if ratio is None:
        return "–"
    if ratio < 0.1:
        return f"{ratio:.1g}×"
    return f"{ratio:.2f}×" if ratio < 10 else f"{ratio:.1f}×"


def fmt_throughput(value_unit):
    if value_unit is None:
        return ""
    value, unit = value_unit
    return f"{value:.3g} {unit}"


def fmt_bytes(n):
    if n is None:
        return "–"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


# --- the report ------------------------------------------------------------------------


def _backends_present(recs):
    present = {r.backend for r in recs}
    return [b for b in BACKEND_ORDER if b in present] + sorted(present - set(BACKEND_ORDER))


def _contenders(backends):
    """The backends compared against the baselines (every one but numpy and torch)."""
    return [b for b in backends if b not in BASELINES]


HEADLINE_LABELS = ("small", "mlp", "large")


def headline(recs, stat="median") -> str:
    """Per op: each kernprop backend's speed-up over numpy and torch (by ``stat``) at the
    small, MLP-sized and large shapes, as "small / MLP / large" in one cell (geometric
    mean when a class has several shapes; "–" where not measured)."""
    rows = table(recs)
    backends = _backends_present(recs)
    contenders = _contenders(backends)
    baselines = [b for b in BASELINES if b in backends]
    pairs = [(c, base) for c in contenders for base in baselines]
    header = ["op", *(f"{c} vs {base} (small / MLP / large)" for c, base in pairs)]
    ops = []
    for op, _ in rows:
        if op not in ops:
            ops.append(op)
    body = []
    for op in ops:
        entries = {label: [e for (o, _), e in rows.items() if o == op and _label(e) == label]
                   for label in HEADLINE_LABELS}
        cells = [op]
        for c, base in pairs:
            ratios = [_geomean([speedup(e, c, base, stat) for e in entries[label]]) for label in HEADLINE_LABELS]
            cells.append(" / ".join(_short_ratio(r) for r in ratios))
        body.append(cells)
    return _md_table(header, body)


def _short_ratio(ratio):
    if ratio is None:
        return "–"
    if ratio < 0.1:
        return f"{ratio:.1g}"
    return f"{ratio:.2f}" if ratio < 10 else f"{ratio:.0f}"


def _label(entry):
    return next(iter(entry.values())).label


def family_tables(recs, peaks=None) -> str:
    """One table per family: a row per (op, shape), the median time (and throughput)
    per backend, the speed-ups, and the best throughput as a share of the measured peak."""
    peaks = peaks or {}
    rows = table(recs)
    backends = _backends_present(recs)
    contenders = _contenders(backends)
    baselines = [b for b in BASELINES if b in backends]
    out = []
    families = []
    for r in recs:
        if r.family not in families:
            families.append(r.family)
    for family in families:
        header = ["op", "shape", *backends]
        pairs = [(c, base) for c in contenders for base in baselines]
        header += [f"{c} vs {base}" for c, base in pairs]
        header.append("best of peak")
        body = []
        for (op, shape), entry in rows.items():
            first = next(iter(entry.values()))
            if first.family != family:
                continue
            cells = [op, f"{shape} ({SHAPE_LABELS.get(first.label, first.label)})" if first.label else shape]
            best = None
            for b in backends:
                rec = entry.get(b)
                if rec is None:
                    cells.append("–")
                    continue
                tp = rec.throughput()
                cells.append(fmt_time(rec.median) + (f" · {fmt_throughput(tp)}" if tp else "")
                             + (f" (min {fmt_time(rec.min)}) †" if rec.noisy else ""))
                if tp and (best is None or tp[0] > best[0]):
                    best = tp
            cells += [fmt_ratio(speedup(entry, c, base)) for c, base in pairs]
            cells.append(_of_peak(best, peaks))
            body.append(cells)
        out.append(f"### {family}\n\n" + _md_table(header, body))
    return "\n\n".join(out)


def _of_peak(best, peaks):
    if best is None:
        return "–"
    value, unit = best
    peak = peaks.get("gemm_gflops") if unit == "GFLOP/s" else peaks.get("copy_gbs")
    return f"{100 * value / peak:.0f}%" if peak else "–"


def _machine_section(data, extra):
    machine = data.get("machine_info") or {}
    kp = machine.get("kernprop") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw") or extra.get("cpu") or platform.processor() or "?"
    cores = kp.get("cpu_count") or (machine.get("cpu") or {}).get("count") or "?"
    lines = [f"- CPU: {cpu}, {cores} cores ({machine.get('system', platform.system())} "
             f"{machine.get('release', '')}, {machine.get('machine', platform.machine())})"]
    threads = kp.get("threads")
    lines.append(f"- Threads: numba/cython {threads if threads is not None else '?'}, "
                 f"torch {kp.get('torch_threads') or 'n/a'}, "
                 f"OpenBLAS (numpy) {extra.get('blas_threads') or '?'}")
    peaks = extra.get("peaks") or {}
    if peaks:
        lines.append(
            f"- Measured peaks (this run): copy {peaks['copy_gbs']:.1f} GB/s "
            f"(np.copyto of {fmt_bytes(peaks['copy_bytes'])}, one thread, read + write counted); "
            f"GEMM {peaks['gemm_gflops']:.1f} GFLOP/s (OpenBLAS float32 "
            f"{peaks['gemm_n']}³ through np.matmul, its own threads)"
        )
    versions = kp.get("versions") or {}
    if versions:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    if extra.get("load"):
        before, after = extra["load"]
        lines.append(f"- Load average (1 min) before / after the benchmarks: {before:.2f} / {after:.2f}")
        if isinstance(cores, int) and max(before, after) > cores and threads == 1:
            lines.append(
                f"- **The machine was busy** (load above its {cores} cores from other processes): "
                "every backend, on one thread, shared its core with them at times; medians over many "
                "rounds, and the fastest-round table, limit what that does."
            )
        elif isinstance(cores, int) and max(before, after) > cores:
            lines.append(
                f"- **The machine was busy** (load above its {cores} cores from other processes): a "
                f"backend running {threads or 'several'} threads waits at every parallel region until "
                "all of them are scheduled, often a scheduler tick (ms), so µs-sized ops on numba, "
                "cython and torch show ms medians that a quiet machine would not; single-threaded "
                "NumPy is hit least.  Compare backends within one shape, and see the fastest-round "
                "table."
            )
    status = kp.get("backends") or {}
    for name in BACKEND_ORDER:
        reason = status.get(name)
        if reason and reason != "available":
            lines.append(f"- {name}: not measured ({_why(name, reason)})")
    return "\n".join(lines)


def _why(name, reason):
    if name == "cuda" and ("driver" in reason or "device" in reason):
        return f"no GPU lent: {reason}"
    return reason


def _startup_section(startup):
    if not startup:
        return ""
    warm = any((r.get("cold") or {}).get("warmup") is not None for r in startup.values())
    header = ["backend", "import kernprop"]
    if warm:
        header += ["kernprop.warmup() cold", "kernprop.warmup() cached"]
    header += ["import + every op once, cold", "same, cached (second process)", "slowest first call (cold)"]
    body = []
    for backend, result in startup.items():
        if "error" in result:
            body.append([backend, result["error"]] + [""] * (len(header) - 2))
            continue
        cold, cached = result["cold"], result["cached"]
        slowest = max(cold["ops"].items(), key=lambda kv: kv[1]) if cold["ops"] else ("–", None)
        row = [backend, fmt_time(cold["import"])]
        if warm:
            row += [fmt_time(cold.get("warmup")), fmt_time(cached.get("warmup"))]
        row += [fmt_time(cold["total"]), fmt_time(cached["total"]), f"{slowest[0]} {fmt_time(slowest[1])}"]
        body.append(row)
    note = ("Each row is two fresh Python processes that import kernprop"
            + (", call `kernprop.warmup(backend)`" if warm else "")
            + " and call every public op once on a tiny float32 input.  Cold: a fresh, empty "
            "`NUMBA_CACHE_DIR`, so Numba compiles every kernel; cached: a second process on the same "
            "cache directory, which loads the compiled kernels.  NumPy and Cython compile nothing.")
    details = _startup_details(startup)
    return note + "\n\n" + _md_table(header, body) + ("\n\n" + details if details else "")


def _startup_details(startup):
    ok = {b: r for b, r in startup.items() if "error" not in r}
    if not ok:
        return ""
    ops = list(next(iter(ok.values()))["cold"]["ops"])
    header = ["op"] + [f"{b} {kind}" for b in ok for kind in ("cold", "cached")]
    body = [[op] + [fmt_time(r[kind]["ops"].get(op)) for r in ok.values() for kind in ("cold", "cached")]
            for op in ops]
    return ("<details><summary>First call of each op, per backend</summary>\n\n"
            + _md_table(header, body) + "\n\n</details>")


def _memory_section(memory):
    if not memory:
        return ""
    n, c, f = memory["rows"], memory["classes"], memory["features"]
    header = ["backend", "path", "peak traced memory", "time", "logits (N×C float32) for scale"]
    body = []
    for row in memory["results"]:
        body.append([row["backend"], row["path"], fmt_bytes(row["peak"]), fmt_time(row["seconds"]),
                     fmt_bytes(n * c * 4)])
    if memory.get("error"):
        return f"Not measured at {n} × {c} × {f}: {memory['error']}"
    note = (f"Linear cross-entropy at {n} rows × {c} classes × {f} features (float32): the fused "
            "`linear_cross_entropy` (rows in chunks of about 32 MiB of logits) against the unfused "
            "`linear` → `cross_entropy_with_grad` → `linear_backward`.  Peak memory allocated during "
            "the call, traced with `tracemalloc`, which sees every NumPy allocation (the backends' "
            "launchers allocate outputs and buffers with NumPy); the inputs (x, w, b) are "
            "allocated before and not counted; dx and dw are.")
    return note + "\n\n" + _md_table(header, body)


def render(data, title="kernprop benchmark report") -> str:
    """The Markdown report of a pytest-benchmark JSON dict (with the extra measurements
    ``run`` stores under ``data["kernprop_report"]``, when present)."""
    extra = data.get("kernprop_report") or {}
    recs = records(data)
    parts = [f"# {title}", ""]
    meta = []
    if extra.get("command"):
        meta.append(f"Command: `{extra['command']}`")
    if extra.get("note"):
        meta.append(extra["note"])
    commit = extra.get("commit") or (data.get("commit_info") or {}).get("id")
    if commit:
        dirty = " (with uncommitted changes in the working tree)" if extra.get("dirty") else ""
        meta.append(f"Commit: `{commit}`{dirty}")
    if data.get("datetime"):
        meta.append(f"Date: {data['datetime']}")
    merged = extra.get("merged")
    if merged:
        taken = ", ".join(f"{n} from {name}" for name, n in zip(merged["runs"], merged["taken"]))
        meta.append(f"Merged from {len(merged['runs'])} runs of the same command: each benchmark is the "
                    f"run with its lowest median ({taken}); other processes only ever slow a run down.")
    quick = ((data.get("machine_info") or {}).get("kernprop") or {}).get("quick")
    if quick:
        meta.append("Quick run: small and MLP-sized shapes only.")
    parts += [line + "  " for line in meta]
    if extra.get("failures"):
        parts += ["", f"**Warning: {extra['failures']}**"]
    parts += ["", "## Machine", "", _machine_section(data, extra), ""]
    if not recs:
        parts += ["No benchmarks in this run.", ""]
        return "\n".join(parts)
    parts += [
        "## Headline: speed-up of each backend (× faster; < 1 is slower)", "",
        "Median time of the baseline divided by the backend's (> 1: the backend is faster), at the "
        "small (overhead-bound), MLP-sized and large shapes of each op (geometric mean when a class "
        "has several shapes; – where not measured).  Every shape is in the tables further down.", "",
        headline(recs), "",
    ]
    noisy = [r for r in recs if r.noisy]
    if noisy:
        parts += [
            f"{len(noisy)} of {len(recs)} medians are over {NOISY:g}× their fastest round (marked † "
            "below): other processes took the cores during many rounds.  The same table from the "
            "fastest round of each benchmark, which such interruptions do not reach:", "",
            headline(recs, "min"), "",
        ]
    parts += [
        "## Every op and shape", "",
        "Median time per call · throughput (GFLOP/s for GEMM-based ops and the training step, "
        "GB/s of compulsory traffic for the rest; small shapes live in cache, so their GB/s can "
        "pass the DRAM copy peak).  `A vs B` is B's median over A's (> 1: A is faster).  "
        "`best of peak`: the best backend's throughput as a share of the measured peak.  "
        f"†: median over {NOISY:g}× the fastest round, shown in brackets.", "",
        family_tables(recs, extra.get("peaks")), "",
    ]
    startup = _startup_section(extra.get("startup"))
    if startup:
        parts += ["## Start-up: Numba compile and cache load", "", startup, ""]
    memory = _memory_section(extra.get("memory"))
    if memory:
        parts += ["## Memory: fused linear cross-entropy", "", memory, ""]
    return "\n".join(parts)


# --- comparing two runs ----------------------------------------------------------------


def compare(data_a, data_b, name_a="A", name_b="B") -> str:
    """Markdown table of every benchmark in both runs: medians and the ratio B / A."""
    a = {r.key: r for r in records(data_a)}
    b = {r.key: r for r in records(data_b)}
    common = [k for k in a if k in b]
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    body = []
    ratios = []
    for key in common:
        ra, rb = a[key], b[key]
        ratio = rb.median / ra.median if ra.median > 0 else None
        if ratio:
            ratios.append(ratio)
        change = "–" if ratio is None else ("faster" if ratio < 0.95 else "slower" if ratio > 1.05 else "same")
        body.append([ra.op, ra.shape, ra.backend, fmt_time(ra.median), fmt_time(rb.median),
                     f"{ratio:.3f}" if ratio else "–", change])
    lines = [f"# Comparison: {name_b} against {name_a}", "",
             f"Ratio = median in {name_b} / median in {name_a} (< 1: {name_b} is faster; "
             "'same' within 5%).", ""]
    lines.append(_md_table(["op", "shape", "backend", f"{name_a}", f"{name_b}", "ratio", "change"], body))
    gm = _geomean(ratios)
    lines += ["", f"{len(common)} benchmarks in both; geometric mean ratio "
              f"{gm:.3f}" if gm else f"{len(common)} benchmarks in both."]
    if ratios:
        lines.append("Medians " + _agreement(ratios))
        min_ratios = [b[k].min / a[k].min for k in common if a[k].min > 0 and b[k].min > 0]
        if min_ratios:
            lines.append("Fastest rounds " + _agreement(min_ratios))
    for label, keys in ((name_a, only_a), (name_b, only_b)):
        if keys:
            lines.append(f"Only in {label}: " + ", ".join(" ".join(k) for k in keys))
    return "\n".join(lines) + "\n"


def _agreement(ratios):
    spread = [max(r, 1 / r) for r in ratios]
    within = [sum(x <= limit for x in spread) for limit in (1.1, 1.25, 2.0)]
    return (f"within 10%: {within[0]}, within 25%: {within[1]}, within 2×: {within[2]}, "
            f"beyond 2×: {len(spread) - within[2]} (of {len(spread)}).")


def merge(runs, names=None) -> dict:
    """One run from several runs of the same command: every benchmark from the run where
    its median is lowest (other work on the machine only ever slows a run down); the
    machine info and the extra measurements of the last run."""
    if not runs:
        raise BenchError("nothing to merge")
    names = list(names or [f"run {i + 1}" for i in range(len(runs))])
    best: dict = {}
    for index, run in enumerate(runs):
        for bench in _with_stats(run):
            rec = _record_of(bench)
            key = rec.key
            if key not in best or rec.median < best[key][1].median:
                best[key] = (bench, rec, index)
    merged = json.loads(json.dumps(runs[-1]))
    merged["benchmarks"] = [bench for bench, _, _ in best.values()]
    extra = merged.setdefault("kernprop_report", {})
    counts = [sum(1 for _, _, i in best.values() if i == index) for index in range(len(runs))]
    extra["merged"] = {"runs": names, "taken": counts}
    return merged


def _with_stats(run):
    return [b for b in run.get("benchmarks", []) if "median" in (b.get("stats") or {})]


def _record_of(bench):
    return records({"benchmarks": [bench]})[0]


# --- plotting --------------------------------------------------------------------------


def plot(recs, path, baseline="numpy") -> str:
    """A PNG bar chart of every backend's speed-up over ``baseline`` per op and shape.
    Returns a message; raises BenchError when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError(
            "--plot needs matplotlib, which is not installed; install it with: pip install -e '.[plot]'"
        ) from None
    rows = table(recs)
    backends = [b for b in _backends_present(recs) if b != baseline]
    labels, values = [], {b: [] for b in backends}
    for (op, shape), entry in rows.items():
        if baseline not in entry:
            continue
        labels.append(f"{op} {shape}")
        for b in backends:
            values[b].append(speedup(entry, b, baseline) or 0.0)
    if not labels:
        raise BenchError(f"nothing to plot: no {baseline} results in this run")
    height = 0.8 / max(1, len(backends))
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.22 * len(labels) * max(1, len(backends)) ** 0.5))
    for i, b in enumerate(backends):
        ys = [j + (i - (len(backends) - 1) / 2) * height for j in range(len(labels))]
        ax.barh(ys, [v or float("nan") for v in values[b]], height, label=b)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"speed-up over {baseline} (× faster, log scale; median time per call)")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first op at the top
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"kernprop: speed-up over {baseline}")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise BenchError(f"cannot write the plot: {exc}") from None
    finally:
        plt.close(fig)
    return f"wrote {path}"


# --- measuring (the parts that need a quiet machine) -----------------------------------


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


def measure_peaks(copy_mib=256, gemm_n=2048, repeats=5) -> dict:
    """This machine's copy bandwidth (GB/s, read + write) and OpenBLAS GEMM GFLOP/s."""
    import numpy as np

    src = np.ones(copy_mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    copy_gbs = 2 * src.nbytes / best / 1e9
    del src, dst
    rng = np.random.default_rng(0)
    a = rng.standard_normal((gemm_n, gemm_n), dtype=np.float32)
    b = rng.standard_normal((gemm_n, gemm_n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(max(3, repeats // 2)))
    return {"copy_gbs": copy_gbs, "copy_bytes": copy_mib * 2**20, "gemm_gflops": 2 * gemm_n**3 / best / 1e9,
            "gemm_n": gemm_n}


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
               min_rounds=15) -> int:
    """``python -m pytest bench/ --benchmark-only --benchmark-json=json_path`` (streamed);
    returns pytest's exit status (the JSON holds the benchmarks that passed)."""
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "--benchmark-only",
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
    proc = subprocess.run(cmd, cwd=bench_dir.parent, stdout=sys.stderr)
    if not Path(json_path).is_file():
        raise BenchError(f"the benchmarks failed (pytest exit status {proc.returncode}); see the output above")
    return proc.returncode


def run(quick=False, ops=None, backends=None, json_path=None, max_time=None, startup=True, memory=True,
        command=None, note=None, log=print) -> dict:
    """Run the benchmarks and the extra measurements; returns the JSON dict (also written
    to ``json_path`` when given)."""
    import numpy as np

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
    with tempfile.TemporaryDirectory(prefix="kernprop-bench-") as tmp:
        out_json = json_path or os.path.join(tmp, "bench.json")
        before = os.getloadavg()[0]
        status = run_pytest(bench_dir, out_json, quick, ops, backends, max_time, min_rounds=10 if quick else 15)
        if status not in (0, 5, None):
            extra["failures"] = (f"pytest exited with status {status}: some benchmarks failed their check "
                                 "against the reference or errored (see its output); they are missing below.")
            log("warning: " + extra["failures"])
        extra["load"] = (before, os.getloadavg()[0])
        data = load(out_json)
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


def main(args, argv=None) -> int:
    """The ``kernprop bench`` command (``args`` from ``kernprop.cli``)."""
    try:
        if args.compare:
            a, b = args.compare
            text = compare(load(a), load(b), a, b)
            _emit(text, args.output)
            return 0
        if args.merge:
            data = merge([load(path) for path in args.merge], args.merge)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(data, f, indent=1)
        elif args.from_json:
            data = load(args.from_json)
        else:
            if args.threads:
                set_thread_env(args.threads)
            words = list(argv if argv is not None else sys.argv[1:])
            if "--note" in words[:-1]:  # the note is printed in the report already
                i = words.index("--note")
                del words[i:i + 2]
            command = shlex.join(["kernprop", *words])
            data = run(quick=args.quick, ops=_split(args.ops), backends=_split(args.backends),
                       json_path=args.json, max_time=args.max_time, startup=not args.no_startup,
                       memory=not args.no_memory, command=command, note=args.note,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
        _emit(render(data), args.output)
        if args.plot:
            print(plot(records(data), args.plot), file=sys.stderr)
    except BenchError as exc:
        print(f"kernprop bench: {exc}", file=sys.stderr)
        return 2
    return 1 if (data.get("kernprop_report") or {}).get("failures") else 0


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


def _split(values):
    """["a,b", "c"] -> ["a", "b", "c"]; None -> None."""
    if not values:
        return None
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def _emit(text, output):
    if output:
        Path(output).write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def add_parser(sub):
    """Register ``kernprop bench`` on the CLI's subparsers."""
    bench = sub.add_parser(
        "bench", help="run the benchmark suites in bench/ and write a Markdown report",
        description="Run the pytest-benchmark suites in bench/ (a source checkout) and write a Markdown "
                    f"report. Time on a quiet machine; on a shared one wrap it in `{LOCK_HINT}`.",
    )
    bench.add_argument("--quick", action="store_true", help="small and MLP-sized shapes only (a few minutes)")
    bench.add_argument("--ops", action="append", default=None,
                       help="only these ops, comma-separated or repeated (e.g. matmul,relu,train_step)")
    bench.add_argument("--backends", action="append", default=None,
                       help="only these backends, comma-separated or repeated (numpy,numba,cython,cuda,torch)")
    bench.add_argument("--json", metavar="PATH", default=None,
                       help="keep the pytest-benchmark JSON (with the extra measurements) here")
    bench.add_argument("--output", "-o", metavar="PATH", default=None,
                       help="write the Markdown report here (default: standard output)")
    bench.add_argument("--plot", metavar="PATH", default=None,
                       help="also write a PNG bar chart of speed-ups over numpy (needs matplotlib)")
    bench.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), default=None,
                       help="compare two saved runs: per-benchmark ratio of medians B/A (runs nothing)")
    bench.add_argument("--from-json", metavar="PATH", default=None,
                       help="write the report of a saved run instead of running the benchmarks")
    bench.add_argument("--merge", nargs="+", metavar="RUN.json", default=None,
                       help="write the report of saved runs of one command, each benchmark from the run "
                            "with the lowest median (other processes only ever slow a run down); the "
                            "extra measurements come from the last run; --json saves the merged run")
    bench.add_argument("--max-time", type=float, default=None,
                       help="seconds of timing per benchmark (default 0.3, --quick 0.1)")
    bench.add_argument("--threads", type=int, default=None,
                       help="threads for every backend, numpy's BLAS and torch included (default: Numba's, "
                            "the number of cores); 1 is the robust choice on a machine others are using")
    bench.add_argument("--no-startup", action="store_true", help="skip the compile / cache start-up measurement")
    bench.add_argument("--no-memory", action="store_true", help="skip the linear cross-entropy memory measurement")
    bench.add_argument("--note", default=None, help="a line to put under the report's title")
    bench.set_defaults(func=lambda args: main(args))
    return bench
