"""Reading pytest-benchmark JSON into ``Record`` s (one per op, shape and backend), the
tables and ratios computed from them, and ``merge`` of several runs of one command."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass


# Families in report order, and the ops of each in the order they are listed.
FAMILIES = {
    "matmul": ("matmul", "matmul_bf16", "linear", "linear_backward"),
    "activations": ("relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
                    "gelu_fwd_bwd"),
    "softmax": ("log_softmax", "log_softmax_backward", "softmax"),
    "losses": ("cross_entropy", "cross_entropy_with_grad", "mse", "mse_backward", "linear_cross_entropy"),
    "optimizers": ("sgd_step", "adam_step"),
    "normalization": ("layer_norm_fwd_bwd",),
    "attention": ("attention_fwd_bwd",),
    "embedding": ("embedding_backward",),
    "train": ("train_step", "fit_epoch"),
}



OP_ORDER = [op for ops in FAMILIES.values() for op in ops]



# Throughput in GFLOP/s for these (compute-bound); GB/s for every other op.
COMPUTE_BOUND = {"attention_fwd_bwd", "matmul", "matmul_bf16", "linear", "linear_backward", "linear_cross_entropy", "train_step", "fit_epoch"}



BACKEND_ORDER = ("numpy", "numba", "cython", "cuda", "torch")



BASELINES = ("numpy", "torch")  # speed-ups are reported over these



SHAPE_LABELS = {"small": "small", "mlp": "MLP-sized", "large": "large"}



LOCK_HINT = "flock /tmp/kernprop-bench.lock"



# The busy rule: a row is unreliable (marked, and left out of the headline) when
# - its median is over SPREAD x its fastest round: other work interrupted many rounds
#   (quiet runs of this suite stay under 1.3x, bench/RESULTS*.json), or
# - other processes used more than (cores - the row's threads + OTHERS_MARGIN) cores over
#   its block (benchlib measures them): some of its threads had no core of their own, or
# - (a run without that measurement) the 1-minute load average of other processes, before
#   the benchmarks or after them less the run's own threads, was above the cores.
SPREAD = 1.5
OTHERS_MARGIN = 0.5  # cores; /proc/stat ticks at 100 Hz, a short block is good to ~0.2 core



class BenchError(RuntimeError):
    """A problem the command line reports in one line (exit status 2)."""



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
    busy: str = ""  # why the row is unreliable (``busy_reason``); "" when it is not

    @property
    def key(self):
        return (self.op, self.shape, self.backend)

    @property
    def unreliable(self):
        """Other processes got in the way of this row: it is marked in the report and the
        plot, and left out of the headline."""
        return bool(self.busy)

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



def busy_reason(median, minimum, others=None, threads=1, cores=None, load_busy=""):
    """Why a row with these figures is unreliable by the busy rule (see ``SPREAD``), or ""."""
    reasons = []
    if minimum > 0 and median > SPREAD * minimum:
        reasons.append(f"median {median / minimum:.1f}× its fastest round")
    if others is not None and cores and others > cores - (threads or 1) + OTHERS_MARGIN:
        reasons.append(f"other processes used {others:.1f} of {cores} cores")
    elif others is None and load_busy:
        reasons.append(load_busy)
    return "; ".join(reasons)



def load_busy(data) -> str:
    """Why the run as a whole was busy by its load average (``kernprop_report["load"]``,
    1 minute, before and after the benchmarks), or "".  The figure after counts the run's
    own threads, so they are taken off it first."""
    load = (data.get("kernprop_report") or {}).get("load")
    kp = (data.get("machine_info") or {}).get("kernprop") or {}
    cores, threads = kp.get("cpu_count"), kp.get("threads") or 1
    if not load or not isinstance(cores, int):
        return ""
    before, after = load
    others = max(before, after - threads)
    return f"load average of other processes {others:.1f} on {cores} cores" if others > cores else ""



def busy_rows(recs) -> list[Record]:
    """The unreliable rows; any at all and the report and the plot carry the busy marking."""
    return [r for r in recs if r.unreliable]



def records(data) -> list[Record]:
    """The benchmarks of a pytest-benchmark JSON dict, in report order, each with the
    busy rule's verdict (``Record.busy``)."""
    out = []
    cores = ((data.get("machine_info") or {}).get("kernprop") or {}).get("cpu_count")
    run_load = load_busy(data)
    for bench in data["benchmarks"]:
        info = bench.get("extra_info") or {}
        stats = bench.get("stats") or {}
        if "median" not in stats:
            continue
        group = bench.get("group") or ""
        op = info.get("op") or group.split(" ")[0] or bench.get("name", "?")
        shape = info.get("shape") or (group.split(" ", 1)[1] if " " in group else "")
        backend = info.get("backend") or (bench.get("params") or {}).get("backend") or "?"
        median, minimum = float(stats["median"]), float(stats.get("min", stats["median"]))
        out.append(Record(
            op=op, shape=shape, label=info.get("shape_label", ""), backend=backend,
            family=info.get("family") or _family_of(op), median=median, min=minimum,
            iqr=float(stats.get("iqr", 0.0)),
            flops=int(info.get("flops") or 0), bytes=int(info.get("bytes") or 0),
            rounds=int(stats.get("rounds") or 0), name=bench.get("fullname") or bench.get("name", ""),
            busy=busy_reason(median, minimum, info.get("others_cores"), info.get("threads"), cores, run_load),
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



def merge(runs, names=None) -> dict:
    """One run from several runs of the same command: every benchmark from the run where
    it is reliable (the busy rule) and its median lowest (other work on the machine only
    ever slows a run down); the machine info and the extra measurements of the last run."""
    if not runs:
        raise BenchError("nothing to merge")
    names = list(names or [f"run {i + 1}" for i in range(len(runs))])
    best: dict = {}
    for index, run in enumerate(runs):
        for bench in _with_stats(run):
            rec = _record_of(bench, run)
            key = rec.key
            if key not in best or (rec.unreliable, rec.median) < (best[key][1].unreliable, best[key][1].median):
                best[key] = (bench, rec, index)
    merged = json.loads(json.dumps(runs[-1]))
    merged["benchmarks"] = [bench for bench, _, _ in best.values()]
    extra = merged.setdefault("kernprop_report", {})
    counts = [sum(1 for _, _, i in best.values() if i == index) for index in range(len(runs))]
    extra["merged"] = {"runs": names, "taken": counts}
    return merged



def _with_stats(run):
    return [b for b in run.get("benchmarks", []) if "median" in (b.get("stats") or {})]



def _record_of(bench, run):
    return records({"benchmarks": [bench], "machine_info": run.get("machine_info") or {}})[0]
