"""``Trainer.fit``'s reporting: the tqdm bar of an epoch, the printed epoch line, accuracy."""

from __future__ import annotations

import sys
import time

import numpy as np

__all__ = ["accuracy", "epoch_line", "bar", "bar_update", "bar_close"]


def accuracy(preds, labels, ignore):
    """The share of rows whose prediction is their label, ignored rows left out."""
    hit = preds == labels
    if ignore is not None:
        keep = labels != ignore
        counted = int(np.count_nonzero(keep))
        return int(np.count_nonzero(hit & keep)) / counted if counted else float("nan")
    return int(np.count_nonzero(hit)) / labels.shape[0]


def epoch_line(epoch, logs):
    """One printed line of an epoch's logs."""
    parts = [f"epoch {epoch}"]
    for key, value in logs.items():
        if key == "samples_per_s":
            parts.append(f"{value:,.0f} samples/s")
        elif not isinstance(value, str) and key != "lr":  # names (engine, precision) stay out
            parts.append(f"{key} {value:.4f}")
    return "  ".join(parts)


def bar(total, epoch, show):
    """A tqdm bar for an epoch on stderr, or None when not shown."""
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}", unit="sample", leave=True, file=sys.stderr)


def bar_update(bar, running_loss, seen, t0):
    """Move ``bar`` to ``seen`` rows with the running loss and speed."""
    bar.update(int(seen) - bar.n)
    elapsed = time.perf_counter() - t0
    bar.set_postfix(loss=f"{running_loss:.4f}", samples_per_s=f"{seen / max(elapsed, 1e-9):,.0f}", refresh=False)


def bar_close(bar, logs):
    """Show the epoch's results on ``bar`` and close it (nothing for None)."""
    if bar is None:
        return
    short = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}
    bar.set_postfix({short[k]: f"{v:.4f}" for k, v in logs.items() if k in short}, refresh=True)
    bar.close()
