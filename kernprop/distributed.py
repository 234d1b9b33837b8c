"""Data-parallel training over MPI (mpi4py): every rank holds the whole model, takes a
contiguous shard of each global batch and the ranks average their gradients with one
in-place ``Allreduce`` per step before the (identical) optimizer update.

Entry points::

    mpirun -n 4 kernprop train --distributed mpi              # the CLI
    Trainer(model, ..., distributed="mpi").fit(X, y)          # under mpirun -n 4

What a distributed ``Trainer.fit`` does (see ``MPIContext``):

* ``setup``: checks that every rank has the same data shape, batch size, model and
  loss (an ``allgather`` of a fingerprint; a mismatch raises the same ValueError on every
  rank), then broadcasts from rank 0 the parameters, the optimizer state and the
  shuffling generator's state, so every rank starts identical and draws the same
  permutation each epoch (``seed=None`` is fine: rank 0's draw is used).
* ``shards``: the global batch is the Trainer's ``batch_size`` rows of the shuffled
  data; rank ``r`` of ``P`` takes the ``r``-th of ``P`` contiguous slices, sized as
  ``numpy.array_split`` does (the first ``rows % P`` ranks get one row more).
* ``allreduce_gradients``: packs every gradient, scaled by ``local / global`` (the
  share of this rank in the global loss's denominator: rows, or for cross-entropy the
  sum of class weights of the non-ignored rows), into one preallocated flat buffer,
  with the scaled loss in its last slot, runs ONE ``Allreduce(IN_PLACE, SUM)`` and
  unpacks.  The result is the gradient of the global batch's mean loss, exactly, also
  when shards are uneven.  With ``reduction="sum"`` the scale is 1 (the gradient of a
  sum is the sum of the gradients).
* ``gather_predictions``: once per epoch the per-row predictions (each rank wrote
  only its rows) are summed across ranks, so accuracy is computed on all rows; the loss
  of each step is already global.  Every rank therefore sees the same ``logs``, and
  callbacks run on every rank; a stop request from any rank stops all of them.

Uneven and small batches: a global batch of ``m`` rows on ``P`` ranks gives shards of
``m // P`` or ``m // P + 1`` rows; when ``m < P`` (a small batch size, or the last batch
of an epoch) some ranks get 0 rows and contribute zeros: the result is still the
global batch's gradient.  Nothing is dropped and no rank waits on another's data.

Checks: ``fit`` checks its arguments and data on every rank, then the ranks agree
(``MPIContext.checked``: one ``allgather``) before the first collective; when any rank's
check fails, every rank raises that ValueError/TypeError (the failing rank its own, the
others naming it), so none waits for a rank that has stopped.  The same ``allgather``
compares what every rank must hold alike (``Trainer._agreement``: data, model, loss,
batch size, engine, precision, epochs, each optimizer hyperparameter); ranks that
differ all raise one ValueError naming the setting, the rank and both values, instead
of training to different parameters or waiting at different epochs.  ``kernprop train
--distributed mpi`` runs its option, path and data checks the same way, and compares
its options.

Failures: an exception on any rank inside a distributed ``fit`` (or the CLI) prints
``kernprop: rank R failed`` with the traceback and calls ``comm.Abort(1)``, so the other
ranks are killed instead of waiting forever in the next collective.  A rank killed by a
signal makes ``mpirun`` end the job.  MPI errors raise exceptions
(``Set_errhandler(ERRORS_RETURN)``).  What remains the caller's duty: every rank must
call ``fit`` / ``save`` the same number of times (they are collective), and a script of
your own should run as ``mpirun -n N python -m mpi4py script.py`` (mpi4py then aborts
the job on an uncaught exception anywhere, e.g. in rank 0's ``save``) or inside
``with kernprop.distributed.make_context("mpi").abort_on_error():``.

Output: rank 0 alone draws the progress bar, prints epoch lines and writes
checkpoints (``Trainer.save``: rank 0 writes, every rank waits for it).  Validation data
are evaluated whole on every rank (identical results, no communication).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import traceback

import numpy as np

__all__ = ["MPIContext", "make_context", "mpi_available", "shard", "allreduce_gradients"]

DISTRIBUTED_CHOICES = ("none", "mpi")


def mpi_available():
    """``(True, "")`` when mpi4py imports, else ``(False, why)``."""
    try:
        from mpi4py import MPI  # noqa: F401
    except ImportError as exc:
        return False, f"mpi4py is not installed ({exc}); pip install 'kernprop[mpi]'"
    except Exception as exc:  # noqa: BLE001 - a broken MPI library fails at import with anything
        return False, f"mpi4py failed to load its MPI library: {exc}"
    return True, ""


def make_context(distributed):
    """``None`` / ``"none"`` -> None (single process); ``"mpi"`` -> an ``MPIContext`` on
    ``MPI.COMM_WORLD``; an ``MPIContext`` is returned as it is."""
    if distributed is None or distributed == "none":
        return None
    if isinstance(distributed, MPIContext):
        return distributed
    if distributed != "mpi":
        raise ValueError(f"distributed must be one of {DISTRIBUTED_CHOICES} or None, got {distributed!r}")
    ok, why = mpi_available()
    if not ok:
        raise RuntimeError(f"distributed='mpi' needs mpi4py: {why}")
    return MPIContext()


class MPIContext:
    """One communicator's view of data-parallel training (see the module docstring).

    comm: an ``mpi4py.MPI.Intracomm`` (default ``MPI.COMM_WORLD``).
    """

    def __init__(self, comm=None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        # MPI errors become Python exceptions (then abort_on_error ends the job).
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.is_root = self.rank == 0
        self._buffer = None
        self._own = None

    def __repr__(self):
        return f"MPIContext(rank={self.rank}, size={self.size})"

    # --- failures ----------------------------------------------------------------------

    @contextlib.contextmanager
    def abort_on_error(self):
        """Inside the block an exception on this rank aborts every rank (``Abort(1)``)
        after printing its traceback; with one rank it is simply raised, and so is an
        error every rank raises alike (``agree``'s: nobody is left waiting)."""
        try:
            yield self
        except BaseException as exc:
            if self.size == 1 or isinstance(exc, SystemExit) and exc.code in (0, None) \
                    or getattr(exc, "on_every_rank", False):
                raise
            self.abort(exc)

    def abort(self, exc=None, code=1):
        """Print ``exc`` with this rank's number and end every rank of the job."""
        if exc is not None:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            sys.stderr.write(f"kernprop: rank {self.rank} of {self.size} failed, aborting all ranks:\n{text}")
        sys.stderr.flush()
        sys.stdout.flush()
        self.comm.Abort(code)

    def barrier(self):
        """Wait until every rank gets here (``MPI_Barrier``)."""
        self.comm.Barrier()

    def checked(self, check, agree=None):
        """``check()`` on every rank, then one ``allgather`` of the outcomes: its result
        when it passed everywhere, else the same error on every rank, carrying the
        first failing rank's message.  Collective: call on every rank, before any other
        collective of the fit, so a rank whose input fails its checks cannot leave the
        others waiting in the next one.

        agree: ``agree(result) -> {name: value}``, what every rank must hold alike
        (settings, hyperparameters, options), gathered in the same ``allgather``; when
        the checks pass but ranks differ, every rank raises the same ValueError naming
        the first differing name and the ranks' values."""
        try:
            result, failure = check(), None
            mine = agree(result) if agree is not None else None
        except Exception as exc:  # noqa: BLE001 - any failure must reach the other ranks
            result, failure, mine = None, exc, None
        if failure is None:
            outcome = None
        else:  # the class travels by kind: the few that take a message alone
            outcome = (_kind(failure), str(failure))
        gathered = self.comm.allgather((outcome, mine))
        outcomes = [o for o, _ in gathered]
        failed = [(rank, o) for rank, o in enumerate(outcomes) if o is not None]
        if not failed:
            if agree is not None:
                _check_agreement([m for _, m in gathered], self.size)
            return result
        if failure is not None:
            raise failure
        rank, (kind, message) = failed[0]
        message = f"rank {rank} of {self.size} failed its checks: {message}"
        try:
            error = kind(message)
        except Exception:  # noqa: BLE001 - a class that takes more than a message
            error = next(k for k in (TypeError, ValueError, OSError, RuntimeError) if issubclass(kind, k))(message)
        raise error

    def any(self, flag):
        """True on every rank when ``flag`` is true on any rank."""
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))

    def agree(self, flag, values):
        """``any(flag)``, and ``values`` (``{name: value}``) compared across the ranks in
        the same ``allgather``: a ValueError on every rank (marked ``on_every_rank``, so
        ``abort_on_error`` lets it through) naming the first that differs.  A fit calls
        it after each epoch's callbacks, which may change the optimizer's settings."""
        gathered = self.comm.allgather((bool(flag), values))
        try:
            _check_agreement([v for _, v in gathered], self.size)
        except ValueError as exc:
            exc.on_every_rank = True
            raise
        return any(f for f, _ in gathered)

    # --- once per fit ------------------------------------------------------------------

    def setup(self, params, optimizer, rng, X, y, batch_size, loss):
        """Check that the ranks agree, then broadcast rank 0's parameters, optimizer
        state and generator state (in place).  Collective: call on every rank."""
        mine = fingerprint(params, optimizer, X, y, batch_size, loss)
        everyone = self.comm.allgather(mine)
        differ = [r for r, f in enumerate(everyone) if f != everyone[0]]
        if differ:
            fields = [k for k in everyone[0] if everyone[differ[0]][k] != everyone[0][k]]
            raise ValueError(
                f"distributed fit: rank(s) {differ} disagree with rank 0 on {', '.join(fields)}; "
                "every rank must load the same data and build the same model, loss and batch size"
            )
        for p in params:
            self.comm.Bcast(p, root=0)
        for arrays in optimizer.state.values():
            for a in arrays:
                self.comm.Bcast(a, root=0)
        rng.bit_generator.state = self.comm.bcast(rng.bit_generator.state, root=0)

        dtype = params[0].dtype
        total = sum(p.size for p in params)
        if self._buffer is None or self._buffer.dtype != dtype or self._buffer.size != total + 1:
            self._buffer = np.empty(total + 1, dtype=dtype)  # gradients, then the loss
        self._weights = _weight_fn(loss, y)
        self._mean = getattr(loss, "reduction", "mean") == "mean"

    def shards(self, starts, n, batch_size):
        """``[(lo, hi)]``: this rank's rows of each global batch ``[start, start + batch_size)``
        of ``n`` rows; also remembers them for ``gather_predictions``."""
        own = np.zeros(n, dtype=bool)
        bounds = []
        for start in starts:
            stop = min(start + batch_size, n)
            lo, hi = shard(start, stop, self.rank, self.size)
            own[lo:hi] = True
            bounds.append((lo, hi))
        self._own, self._n, self._batch_size = own, n, batch_size
        return bounds

    # --- every step --------------------------------------------------------------------

    def allreduce_gradients(self, grads, loss, labels, start, lo, hi):
        """Average ``grads`` (this rank's gradients of its shard's loss, updated in place)
        over the ranks: afterwards they are the gradients of the global batch
        ``labels[start:stop]``'s loss.  Returns that batch's loss (a float).

        loss: this shard's loss (ignored when the shard is empty, ``lo == hi``).
        labels: the shuffled targets of the whole epoch; the batch is
        ``[start, start + batch_size)``, this rank's shard ``[lo, hi)``.
        One ``Allreduce(IN_PLACE, SUM)`` of ``sum(p.size) + 1`` numbers.
        """
        stop = min(start + self._batch_size, self._n)
        local, total = self._weights(labels, start, stop, lo, hi)
        if local == 0:
            scale = 0.0  # an empty or fully ignored shard: its gradient may be 0/0
        elif not self._mean:
            scale = 1.0  # "sum": the gradient of a sum is the sum of the gradients
        else:
            scale = local / total
        return allreduce_gradients(self.comm, grads, self._buffer, scale,
                                   0.0 if scale == 0.0 else float(np.sum(loss)),
                                   nan_loss=self._mean and total == 0)

    # --- every epoch -------------------------------------------------------------------

    def gather_predictions(self, preds):
        """Sum ``preds`` (N,) int64 over the ranks after zeroing the rows this rank does
        not own: every rank then holds every row's prediction."""
        preds[~self._own] = 0
        self.comm.Allreduce(self.MPI.IN_PLACE, preds, op=self.MPI.SUM)


def shard(start, stop, rank, size):
    """Rank ``rank``'s contiguous slice ``(lo, hi)`` of rows ``[start, stop)`` split
    over ``size`` ranks as ``numpy.array_split`` does."""
    q, r = divmod(stop - start, size)
    lo = start + rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


def allreduce_gradients(comm, grads, buffer, scale, loss=0.0, nan_loss=False):
    """``grads[i] <- sum over ranks of scale_rank * grads_rank[i]``, in place, with one
    ``Allreduce(IN_PLACE, buffer, SUM)``; returns the sum of ``scale * loss``.

    grads: arrays of one dtype; buffer: flat, of that dtype, ``sum(g.size) + 1`` long
    (the last slot carries the loss).  ``scale`` 0 sends zeros (empty shard).
    """
    from mpi4py import MPI

    offset = 0
    for g in grads:
        size = g.size
        if scale == 0.0:
            buffer[offset:offset + size] = 0
        else:
            np.multiply(g.reshape(-1), scale, out=buffer[offset:offset + size])
        offset += size
    buffer[offset] = scale * loss
    comm.Allreduce(MPI.IN_PLACE, buffer[:offset + 1], op=MPI.SUM)
    offset = 0
    for g in grads:
        size = g.size
        g[...] = buffer[offset:offset + size].reshape(g.shape)
        offset += size
    return float("nan") if nan_loss else float(buffer[offset])


# --- helpers ---------------------------------------------------------------------------


def _kind(failure):
    """The class another rank raises for ``failure``: its own when it is a TypeError,
    ValueError or OSError of Python's or kernprop's (e.g. ``checkpoint.NotAFileError``,
    both an OSError and a ValueError; sent by reference), else RuntimeError."""
    kind = type(failure)
    if isinstance(failure, (TypeError, ValueError, OSError)) and (
            kind.__module__ == "builtins" or kind.__module__.startswith("kernprop.")):
        return kind
    return next((k for k in (TypeError, ValueError, OSError) if isinstance(failure, k)), RuntimeError)


def _check_agreement(values, size):
    """``values``: each rank's ``{name: value}``; a ValueError naming the first name on
    which a rank differs from rank 0, with both values (the same on every rank)."""
    first = values[0]
    for name in sorted(set().union(*values), key=lambda k: (k not in first, k)):
        ours = first.get(name)
        for rank, theirs in enumerate(values[1:], 1):
            if theirs.get(name) != ours:
                raise ValueError(
                    f"the {size} ranks must train alike, but rank {rank} has {name} {theirs.get(name)!r} "
                    f"where rank 0 has {ours!r}"
                )


def _weight_fn(loss, y):
    """``weights(labels, start, stop, lo, hi) -> (local, total)``: the shard's and the
    batch's share of the mean loss's denominator."""
    weight = getattr(loss, "weight", None)
    ignore = getattr(loss, "ignore_index", None) if getattr(loss, "classification", False) else None
    has_ignored = ignore is not None and bool((y == ignore).any())
    if weight is None and not has_ignored:
        return lambda labels, start, stop, lo, hi: (hi - lo, stop - start)  # rows (also MSE: rows * outputs)
    if weight is None:
        def counted(labels, start, stop, lo, hi):
            keep = labels[start:stop] != ignore
            return int(np.count_nonzero(keep[lo - start:hi - start])), int(np.count_nonzero(keep))
        return counted
    w = np.asarray(weight, dtype=np.float64)

    def weighted(labels, start, stop, lo, hi):
        # PyTorch's weighted mean: divide by the sum of the weights of the non-ignored targets.
        batch = labels[start:stop]
        keep = batch != ignore if ignore is not None else np.ones(batch.shape, dtype=bool)
        tw = np.where(keep, w[np.where(keep, batch, 0)], 0.0)
        return float(tw[lo - start:hi - start].sum()), float(tw.sum())
    return weighted


def fingerprint(params, optimizer, X, y, batch_size, loss):
    """What every rank must agree on, cheap to compute: shapes, settings and a hash of
    the labels and of a strided sample of the rows of X."""
    n = X.shape[0]
    rows = X[:: max(1, n // 256)]
    digest = hashlib.sha256(np.ascontiguousarray(rows).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    return {
        "data shape": (X.shape, str(X.dtype), y.shape, str(y.dtype)),
        "data contents": digest.hexdigest(),
        "batch size": int(batch_size),
        "parameters": [(p.shape, str(p.dtype)) for p in params],
        "optimizer": (type(optimizer).__name__, optimizer.steps,
                      sorted((k, len(v)) for k, v in optimizer.state.items())),
        "loss": (type(loss).__name__, repr(sorted(loss.kwargs().items())) if hasattr(loss, "kwargs") else ""),
    }
