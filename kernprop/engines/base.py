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

from .. import nn


class Engine:
    """Base: binds the backend's kernel table to the model for the fit."""

    name = ""
    reports = True  # whether this process prints (data-parallel: rank 0 alone)

    def __init__(self, model, loss, optimizer, kernels):
        self.model, self.loss, self.optimizer, self.kernels = model, loss, optimizer, kernels
        self.mean = getattr(loss, "reduction", "mean") == "mean"
        self.classification = bool(getattr(loss, "classification", False))
        self._bound = None

    @contextlib.contextmanager
    def running(self, X, y, preds, rows):
        """``start`` on entry, ``finish`` on exit (also after an exception)."""
        self.start(X, y, preds, rows)
        try:
            yield self
        finally:
            self.finish()

    def start(self, X, y, preds, rows):
        """Take the fit's buffers (see the module docstring) and whatever the engine
        keeps for the whole fit (kernels bound to the model, packed or device copies)."""
        self.X, self.y, self.preds, self.rows = X, y, preds, rows
        self._bound = nn.bind_kernels(self.model, self.kernels)
        self._bound.__enter__()

    def begin_epoch(self):
        """Called after the epoch's rows are shuffled into ``X`` and ``y``, before its first step."""

    def run(self, first, last, losses):
        """Run steps ``first .. last - 1`` (bounds in ``rows``); write each one's loss
        into ``losses[s]`` and each row's argmax into ``preds``."""
        raise NotImplementedError

    def end_epoch(self):
        """Called after the epoch's last step: results the epoch's history needs reach the host."""

    def finish(self):
        """End the fit: the parameters and optimizer state are back where the Trainer
        keeps them, the kernels unbound (also after an exception)."""
        if self._bound is not None:
            self._bound.__exit__(None, None, None)
            self._bound = None

    def agree(self, stop):
        """Whether training stops, given this process's wish (data-parallel: any rank's)."""
        return stop

    def training_state(self):
        """``(parameters, optimizer state)`` as the Trainer keeps them outside a fit: host
        arrays, one per parameter in ``parameters()`` order, and ``{name: [arrays]}``
        likewise (views where the engine packs them), for a checkpoint written during
        the fit (``Trainer.save`` from a callback)."""
        return self.model.parameters(), self.optimizer.state

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


def consecutive(bounds):
    """Whether the steps' rows ``[(lo, hi)]`` follow each other (then their logits can be
    argmaxed together); empty steps (a data-parallel rank's share of a tiny batch) do
    not count."""
    rows = [(lo, hi) for lo, hi in bounds if hi > lo]
    return all(b[0] == a[1] for a, b in zip(rows, rows[1:]))
