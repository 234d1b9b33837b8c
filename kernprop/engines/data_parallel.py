"""Data-parallel training over MPI: a wrapper around a layer-by-layer engine that adds
one gradient ``Allreduce`` per step (``kernprop.distributed.MPIContext``).

``start`` checks that the ranks agree and broadcasts rank 0's parameters, optimizer
state and shuffling generator; the wrapped engine then trains, on every step, this
rank's shard of the global batch (``MPIContext.shards``), and between its backward pass
and its update the wrapper averages the gradients over the ranks, weighted so they are
the global batch's.  ``end_epoch`` gathers every rank's predictions; ``agree`` stops
all ranks when one asks; ``running`` aborts every rank when one fails; rank 0 alone
reports.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .base import Engine


class DataParallel(Engine):
    """``inner`` (a ``LayerwiseEngine`` or ``PackedEngine``) on this rank's shards."""

    def __init__(self, inner, dist, rng, data, batch_size):
        super().__init__(inner.model, inner.loss, inner.optimizer, inner.kernels)
        self.inner, self.dist, self.rng = inner, dist, rng
        self.data, self.batch_size = data, batch_size  # the unshuffled (X, y): checked across ranks
        self.name = f"mpi({inner.name})"
        self.reports = dist.is_root
        inner.gradient_hook = self.allreduce

    @contextlib.contextmanager
    def running(self, X, y, preds, rows):
        with self.dist.abort_on_error(), super().running(X, y, preds, rows):
            yield self

    def start(self, X, y, preds, rows):
        dist, inner = self.dist, self.inner
        dist.setup(self.model.parameters(), self.optimizer, self.rng, *self.data, self.batch_size, self.loss)
        n = X.shape[0]
        self.starts = rows[:, 0]
        shards = np.array(dist.shards(range(0, n, self.batch_size), n, self.batch_size),
                          dtype=np.int64).reshape(-1, 2)
        self.y = y
        inner.start(X, y, preds, shards)

    def allreduce(self, grads, loss, s, lo, hi):
        """The global batch's gradients and loss from this rank's shard ``lo .. hi - 1``
        of step ``s``: one Allreduce."""
        return self.dist.allreduce_gradients(grads, loss, self.y, int(self.starts[s]), lo, hi)

    def begin_epoch(self):
        self.inner.begin_epoch()

    def run(self, first, last, losses):
        self.inner.run(first, last, losses)

    def end_epoch(self):
        self.inner.end_epoch()
        if self.classification:
            self.dist.gather_predictions(self.inner.preds)

    def finish(self):
        self.inner.finish()

    def agree(self, stop):
        # all ranks stop when one asks to; a callback that changed a hyperparameter on
        # some ranks only fails them all (they would train to different parameters)
        hyper = {f"optimizer {k}": v for k, v in self.optimizer.hyperparameters().items()}
        return self.dist.agree(stop, hyper)

    def training_state(self):
        return self.inner.training_state()
