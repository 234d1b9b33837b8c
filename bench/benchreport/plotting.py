"""``plot``: a PNG bar chart of speed-ups over a baseline (needs matplotlib)."""

from __future__ import annotations


from .parsing import BenchError, speedup, table
from .rendering import _backends_present


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
