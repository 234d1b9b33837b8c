"""The Markdown report of a run: headline, one table per op family, the machine, start-up
and memory sections (``render``)."""

from __future__ import annotations

import math
import platform

from .parsing import (BACKEND_ORDER, BASELINES, LOCK_HINT, OTHERS_MARGIN, SHAPE_LABELS, SPREAD, busy_rows,
                      load_busy, records, speedup, table)


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



def _backends_present(recs):
    present = {r.backend for r in recs}
    return [b for b in BACKEND_ORDER if b in present] + sorted(present - set(BACKEND_ORDER))



def _contenders(backends):
    """The backends compared against the baselines (every one but numpy and torch)."""
    return [b for b in backends if b not in BASELINES]



HEADLINE_LABELS = ("small", "mlp", "large")



def headline(recs) -> str:
    """Per op: each kernprop backend's speed-up over numpy and torch (median time) at the
    small, MLP-sized and large shapes, as "small / MLP / large" in one cell (geometric
    mean when a class has several shapes; "–" where not measured; "busy" where every
    shape of the class has an unreliable row on either side: those never count)."""
    pairs, body = _headline_rows(recs)
    header = ["op", *(f"{c} vs {base} (small / MLP / large)" for c, base in pairs)]
    return _md_table(header, body)



def _headline_rows(recs):
    """(backend pairs, rows of [op, "small / MLP / large" per pair]) of the headline."""
    rows = table(recs)
    backends = _backends_present(recs)
    contenders = _contenders(backends)
    baselines = [b for b in BASELINES if b in backends]
    pairs = [(c, base) for c in contenders for base in baselines]
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
            cells.append(" / ".join(_headline_cell(entries[label], c, base) for label in HEADLINE_LABELS))
        body.append(cells)
    return pairs, body



def terminal_summary(data, report_path=None) -> str:
    """What ``kernprop bench`` prints on a terminal: the headline as a plain table of one
    screen (an op a line, each backend's speed-up over numpy and torch at the small /
    MLP-sized / large shapes), the warnings that change its reading, and the path of the
    full Markdown report (every shape, throughputs against the peaks, start-up, memory)."""
    extra = data.get("kernprop_report") or {}
    recs = records(data)
    machine = data.get("machine_info") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw") or "?"
    threads = ((machine.get("kernprop") or {}).get("threads"))
    lines = [f"kernprop bench: {len(recs)} benchmarks on {cpu}"
             + (f", {threads} threads" if threads else ""),
             "x faster than the baseline (< 1: slower), at the small / MLP-sized / large shapes:"]
    if extra.get("failures"):
        lines.append(f"warning: {extra['failures']}")
    if recs:
        pairs, body = _headline_rows(recs)
        header = ["op", *(f"{c} vs {base}" for c, base in pairs)]
        widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
        lines.append("")
        for row in [header, *body]:
            lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        note = busy_note(recs, markdown=False)
        if note:
            lines += ["", note.replace("marked ‡", "marked ‡ in the report")]
    else:
        lines.append("no benchmarks in this run")
    if report_path:
        lines += ["", f"full report: {report_path}"]
    return "\n".join(lines) + "\n"



def _headline_cell(entries, contender, base):
    """The geometric mean of the reliable speed-ups of these shapes, or "busy" when the
    only measured ones are unreliable."""
    measured = [e for e in entries if speedup(e, contender, base) is not None]
    reliable = [e for e in measured if not (e[contender].unreliable or e[base].unreliable)]
    if measured and not reliable:
        return "busy"
    return _short_ratio(_geomean([speedup(e, contender, base) for e in reliable]))



def busy_note(recs, markdown=True) -> str:
    """One paragraph on the unreliable rows (the busy rule, what was done with them), or
    "" when there are none."""
    busy = busy_rows(recs)
    if not busy:
        return ""
    star = "**" if markdown else ""
    return (f"{star}BUSY: unreliable.{star} {len(busy)} of {len(recs)} rows were timed while other processes "
            f"took the cores (their median over {SPREAD:g}× their fastest round, or other processes on more "
            f"than the cores less the row's threads plus {OTHERS_MARGIN:g} during their block, or, without "
            "that figure, a load average of other processes above the cores); they are "
            f"marked ‡ and left out of the headline.  Time again on a quiet machine (`{LOCK_HINT} kernprop "
            "bench ...`, or --merge several runs).")



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
                             + (f" (min {fmt_time(rec.min)}) ‡" if rec.unreliable else ""))
                if tp and (best is None or tp[0] > best[0]):
                    best = tp
            cells += [fmt_ratio(speedup(entry, c, base)) for c, base in pairs]
            cells.append(_of_peak(best, peaks, first.bytes))
            body.append(cells)
        out.append(f"### {family}\n\n" + _md_table(header, body))
    return "\n\n".join(out)



def resident_level(nbytes, peaks):
    """The cache level (``peaks["levels"]``, smallest first) whose copy peak applies to an
    op moving ``nbytes``: the first level that holds it within half its size, as the copy
    that measured it; None: the data comes from DRAM (or the run has no cache peaks)."""
    for level in peaks.get("levels") or ():
        if nbytes and nbytes <= level["bytes"] // 2:
            return level
    return None



def _of_peak(best, peaks, nbytes=0):
    """The best throughput as a share of the peak that matches it: GEMM GFLOP/s, or the
    copy bandwidth of where the data lives (a cache-resident size marked with its level,
    so that 90% (L2) is not read as 900% of DRAM)."""
    if best is None:
        return "–"
    value, unit = best
    if unit == "GFLOP/s":
        peak, mark = peaks.get("gemm_gflops"), ""
    else:
        level = resident_level(nbytes, peaks)
        peak, mark = (level["copy_gbs"], f" ({level['name']})") if level else (peaks.get("copy_gbs"), "")
    return f"{100 * value / peak:.0f}%{mark}" if peak else "–"



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
        levels = peaks.get("levels") or []
        if levels:
            lines.append("- Cache-resident copy peaks (a copy filling half the cache; ops whose data fits are "
                         "set against these, marked with the level): " + ", ".join(
                             f"{lv['name']} ({fmt_bytes(lv['bytes'])}) {lv['copy_gbs']:.1f} GB/s" for lv in levels))
    versions = kp.get("versions") or {}
    if versions:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    if extra.get("others"):
        before, after = extra["others"]
        lines.append("- Cores used by other processes just before / after the benchmarks: "
                     + " / ".join("?" if v is None else f"{v:.2f}" for v in (before, after)))
    if extra.get("load"):
        before, after = extra["load"]
        lines.append(f"- Load average (1 min) before / after the benchmarks: {before:.2f} / {after:.2f}")
        busy = load_busy(data)
        if busy and threads == 1:
            lines.append(
                f"- **The machine was busy** (load above its {cores} cores from other processes): "
                "every backend, on one thread, shared its core with them at times; the rows without "
                "their own measurement of the other processes are marked unreliable (‡)."
            )
        elif busy:
            lines.append(
                f"- **The machine was busy** (load above its {cores} cores from other processes): a "
                f"backend running {threads or 'several'} threads waits at every parallel region until "
                "all of them are scheduled, often a scheduler tick (ms), so µs-sized ops on numba, "
                "cython and torch show ms medians that a quiet machine would not; single-threaded "
                "NumPy is hit least.  The rows without their own measurement of the other processes "
                "are marked unreliable (‡)."
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
    if extra.get("retried"):
        meta.append(f"Timed again after waiting (bounded) for a quiet machine: {extra['retried']} busy rows; each "
                    "row is from a run where it was reliable, the fastest such, else from its fastest run.")
    quick = ((data.get("machine_info") or {}).get("kernprop") or {}).get("quick")
    if quick:
        meta.append("Quick run: small and MLP-sized shapes only.")
    parts += [line + "  " for line in meta]
    if extra.get("failures"):
        parts += ["", f"**Warning: {extra['failures']}**"]
    if busy_rows(recs):
        parts += ["", busy_note(recs)]
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
    if busy_rows(recs):
        parts += ["\"busy\": only unreliable rows were measured there (the BUSY note at the top); "
                  "unreliable rows count in no cell.", ""]
    parts += [
        "## Every op and shape", "",
        "Median time per call · throughput (GFLOP/s for GEMM-based ops and the training step, "
        "GB/s of compulsory traffic for the rest; small shapes live in cache, so their GB/s can "
        "pass the DRAM copy peak).  `A vs B` is B's median over A's (> 1: A is faster).  "
        "`best of peak`: the best backend's throughput as a share of the measured peak that "
        "matches it: GEMM for GFLOP/s, else the copy bandwidth of where the data lives (a size "
        "that fits in a cache is set against that cache's copy peak and marked, e.g. `85% (L2)`)."
        + ("  ‡: unreliable, timed while other processes took the cores (listed below), the fastest "
           "round in brackets." if busy_rows(recs) else ""), "",
        family_tables(recs, extra.get("peaks")), "",
    ]
    busy = busy_rows(recs)
    if busy:
        parts += ["## Busy: the unreliable rows", "",
                  _md_table(["op", "shape", "backend", "why"], [[r.op, r.shape, r.backend, r.busy] for r in busy]),
                  ""]
    startup = _startup_section(extra.get("startup"))
    if startup:
        parts += ["## Start-up: Numba compile and cache load", "", startup, ""]
    memory = _memory_section(extra.get("memory"))
    if memory:
        parts += ["## Memory: fused linear cross-entropy", "", memory, ""]
    return "\n".join(parts)
