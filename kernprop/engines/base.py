"""The interface every step engine offers ``Trainer.fit``.

An engine runs the steps of an epoch; the fit around it shuffles, counts epochs, keeps
the history, runs callbacks and draws the progress bar.  Once per fit::

    with engine.running(X, y, preds, rows):   # start(...) ... finish()
        for each epoch:                       # X, y refilled in place (the shuffle)
            engine.begin_epoch()
            engine.run(first, last, losses)   # steps first..last-1, in chunks
            engine.end_epoch()

X (N, F) and y (N,) labels or (N, OUT) targets are the epoch's rows; ``preds`` (N,)
int64 receives each row's argmax (classification); ``rows`` int64 (S, 2) holds the
row bounds ``[lo, hi)`` of the epoch's S steps.  ``run`` writes step s's loss into
``losses[s]`` (float64 (S,)): the batch's mean, or its sum for reduction "sum".
"""

from __future__ import annotations

import contextlib

import numpy as np

from .. import nn


class Engine:
    """Base: binds the backend's kernel table to the model for the fit."""

    name = ""
    reports = True  # whether this process prints (data-parallel: rank 0 alone)

    def __init__(self, model, loss, optimizer, kernels):
        self.model, self.loss, self.optimizer, self.kernels = model, loss, optimizer, kernels
        self.mean = getattr(loss, "reduction", "mean") == "mean"
        self.classification = bool(getattr(loss, "classification", False))
        self._stack = None

    @contextlib.contextmanager
    def running(self, X, y, preds, rows):
        """``start`` on entry, ``finish`` on exit (also after an exception)."""
        self.start(X, y, preds, rows)
        try:
            yield self
        finally:
            self.finish()

    def start(self, X, y, preds, rows):
        self.X, self.y, self.preds, self.rows = X, y, preds, rows
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(nn.bind_kernels(self.model, self.kernels))

    def begin_epoch(self):
        pass

    def run(self, first, last, losses):
        raise NotImplementedError

    def end_epoch(self):
        pass

    def finish(self):
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def agree(self, stop):
        """Whether training stops, given this process's wish (data-parallel: any rank's)."""
        return stop

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


def consecutive(rows):
    """Whether the steps' rows follow each other (then their logits can be argmaxed
    together); empty steps (a data-parallel rank's share of a tiny batch) do not count."""
    rows = rows[rows[:, 1] > rows[:, 0]]
    return bool(np.all(rows[1:, 0] == rows[:-1, 1]))
