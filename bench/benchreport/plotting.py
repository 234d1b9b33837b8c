"""``plot``: a PNG bar chart of speed-ups over a baseline (needs matplotlib).

Each bar grows from 1× on a log axis: right for faster than the baseline, left for slower.
The figure names the machine (CPU model), the threads and the commit, and a run with
unreliable rows (the busy rule, ``parsing.SPREAD``) carries a "BUSY: unreliable" stamp,
its unreliable bars hatched and labelled."""

from __future__ import annotations


from .parsing import BenchError, busy_rows, speedup, table
from .rendering import _backends_present

BUSY_STAMP = "BUSY: unreliable"



def plot_info(data) -> dict:
    """What the figure says about the run: ``cpu`` (model name), ``threads`` (a phrase),
    ``commit`` (short hash, "+dirty" with uncommitted changes), from a run's JSON dict."""
    machine = data.get("machine_info") or {}
    kp = machine.get("kernprop") or {}
    extra = data.get("kernprop_report") or {}
    threads = kp.get("threads")
    parts = [f"numba/cython {threads if threads is not None else '?'}"]
    if kp.get("torch_threads"):
        parts.append(f"torch {kp['torch_threads']}")
    if extra.get("blas_threads"):
        parts.append(f"OpenBLAS {extra['blas_threads']}")
    commit = extra.get("commit") or (data.get("commit_info") or {}).get("id") or "?"
    dirty = extra.get("dirty", (data.get("commit_info") or {}).get("dirty"))
    return {"cpu": (machine.get("cpu") or {}).get("brand_raw") or "unknown CPU",
            "threads": "threads: " + ", ".join(parts),
            "commit": commit[:7] + ("+dirty" if dirty else "")}



def plot_text(recs, baseline="numpy", info=None) -> dict:
    """The words on the figure: ``title``, ``subtitle`` (machine, threads, commit),
    ``stamp`` (BUSY_STAMP or ""), ``labels`` (one per op and shape, "‡ busy" where a
    plotted bar of that row is unreliable), ``xlabel``."""
    info = info or {}
    busy = busy_rows(recs)
    labels = []
    for (op, shape), entry in table(recs).items():
        if baseline not in entry:
            continue
        hit = any(r.unreliable for r in entry.values())
        labels.append(f"{op} {shape}" + (" ‡ busy" if hit else ""))
    subtitle = " · ".join(v for v in (info.get("cpu"), info.get("threads"),
                                      info.get("commit") and f"commit {info['commit']}") if v)
    stamp = BUSY_STAMP if busy else ""
    return {"title": f"kernprop: speed-up over {baseline}" + (f"  [{stamp}: {len(busy)} of {len(recs)} rows]"
                                                               if stamp else ""),
            "subtitle": subtitle, "stamp": stamp, "labels": labels,
            "xlabel": f"× faster than {baseline} (log scale, bars from 1×; left: slower; median time per call)"}



def figure(recs, baseline="numpy", info=None):
    """The matplotlib Figure of ``plot`` (Agg); ``info``: ``plot_info`` of the run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise BenchError(
            "--plot needs matplotlib, which is not installed; install it with: pip install -e '.[plot]'"
        ) from None
    rows = table(recs)
    backends = [b for b in _backends_present(recs) if b != baseline]
    entries = [entry for entry in rows.values() if baseline in entry]
    if not entries:
        raise BenchError(f"nothing to plot: no {baseline} results in this run")
    text = plot_text(recs, baseline, info)
    n = len(entries)
    height = 0.8 / max(1, len(backends))
    fig, ax = plt.subplots(figsize=(10, 2.0 + 0.22 * n * max(1, len(backends)) ** 0.5))
    for i, b in enumerate(backends):
        colour = f"C{i}"
        for j, entry in enumerate(entries):
            ratio = speedup(entry, b, baseline)
            if not ratio:
                continue
            unreliable = entry[b].unreliable or entry[baseline].unreliable
            y = j + (i - (len(backends) - 1) / 2) * height
            # From 1x to the ratio: faster grows right, slower left (a negative width).
            ax.barh(y, ratio - 1.0, height, left=1.0, color=colour, alpha=0.35 if unreliable else 1.0,
                    hatch="//" if unreliable else None, edgecolor=colour if unreliable else None)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(text["xlabel"])
    ax.set_yticks(range(n))
    ax.set_yticklabels(text["labels"], fontsize=7)
    ax.set_ylim(n - 0.5, -0.5)  # first op at the top
    ax.grid(axis="x", which="both", alpha=0.3)
    handles = [Patch(color=f"C{i}", label=b) for i, b in enumerate(backends)]
    if text["stamp"]:
        handles.append(Patch(facecolor="white", edgecolor="grey", hatch="//", label="‡ busy: unreliable"))
    ax.legend(handles=handles, loc="lower right")
    ax.set_title(text["subtitle"], fontsize=8)
    fig.suptitle(text["title"], color="red" if text["stamp"] else "black")
    if text["stamp"]:
        fig.text(0.5, 0.5, text["stamp"], fontsize=40, color="red", alpha=0.3, rotation=20,
                 ha="center", va="center", fontweight="bold")
    fig.tight_layout()
    return fig



def plot(recs, path, baseline="numpy", info=None) -> str:
    """A PNG bar chart of every backend's speed-up over ``baseline`` per op and shape
    (``info``: ``plot_info`` of the run, for the machine, threads and commit).  Returns a
    message; raises BenchError when matplotlib is missing."""
    fig = figure(recs, baseline, info)
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise BenchError(f"cannot write the plot: {exc}") from None
    finally:
        plt.close(fig)
    return f"wrote {path}" + (f" ({BUSY_STAMP})" if busy_rows(recs) else "")
