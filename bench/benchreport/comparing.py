"""``compare``: two saved runs side by side, the ratio of medians per benchmark."""

from __future__ import annotations


from .parsing import records
from .rendering import _geomean, _md_table, fmt_time


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
