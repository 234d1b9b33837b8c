"""The trainer: ``Trainer(model, loss, optimizer).fit(X, y, epochs)``.

``fit`` checks the data once (shapes, dtypes, label range, that the model accepts
them), chooses a step engine once (``kernprop.engines``: layer by layer, packed, fused
on numba, device-resident on cuda, each wrapped for MPI when distributed; by the rule
documented there, or by name: ``Trainer(..., engine="fused")``), then runs the epoch
loop: shuffle the rows into one preallocated buffer (one gather per epoch; every batch
is then a contiguous slice of it), let the engine run the epoch's steps, keep the
history, run the callbacks and draw the progress bar.  The engine's name is recorded in
``history["engine"]``.  Inside the fit the layers call the backend's kernel table
directly (``nn.raw_kernels``), without the per-call checks of the public ops.
``warmup`` compiles (or loads from Numba's cache) the kernels a fit calls, so that its
first epoch's ``samples_per_s`` does not count their compilation.

Determinism: the shuffling draws from ``numpy.random.default_rng(seed)``; with the same
seed, initial weights, backend, engine and thread count, ``fit`` gives bit-identical
weights.

Checkpoints (``save`` / ``Trainer.load``): ``kernprop.checkpoint``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time

import numpy as np

from . import checkpoint, engines, nn
from . import distributed as _distributed
from ._validate import check_int
from .backends import family, matmul_kernel, resolve
from .precision import check_precision
from .checkpoint import FORMAT_VERSION
from ._device import host
from ._progress import accuracy as _accuracy
from ._progress import bar as _bar
from ._progress import bar_close as _bar_close
from ._progress import bar_update as _bar_update
from ._progress import epoch_line as _epoch_line
from .trainer_inputs import (check_distinct_parameters, check_features, check_targets,
                             check_token_ids, check_token_targets, check_trainer_keywords, is_sequence_model,
                             output_features)
from .engines import sequence as _sequence
from .optim import Adam, Optimizer

__all__ = ["Trainer", "FORMAT_VERSION"]

_EVAL_ROWS = 4096  # rows per forward pass in evaluate / predict
_BAR_UPDATES = 50  # progress-bar updates per epoch (the engine runs the steps between them)


def stderr_is_tty():
    """Whether ``fit(verbose=1)`` draws its progress bar: stderr is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Trainer:
    """Trains ``model`` (a ``kernprop.nn`` module) on NumPy arrays, or any array-like
    as scikit-learn takes it (lists, pandas frames, CPU tensors through DLPack),
    converted once per call.

    Parameters
    ----------
    model : kernprop.nn.Module
        Its parameters are updated in place; the optimizer gets them at each step.
    loss : str or loss object, default "cross_entropy"
        "cross_entropy" (integer labels; the options of ``kernprop.cross_entropy`` as
        keyword arguments: ``reduction``, ``ignore_index``, ``label_smoothing``,
        ``weight``), "mse" (float targets; ``reduction``), or an object with
        ``forward(pred, target, kernels)`` and ``with_grad(pred, target, kernels)``.
    optimizer : kernprop.optim.Optimizer, default ``Adam(lr=1e-3)``
        Made without a parameter list (``optim.SGD(lr=0.1)``).
    backend : str, optional
        None: the model's ``backend`` attribute if set, else the default backend at
        each ``fit``.  Where neither is set and the default is kernprop's own numba
        (not chosen with ``KERNPROP_BACKEND``, ``set_backend`` or ``use_backend``), the
        first ``fit`` takes numba when its kernels are in Numba's cache, else cython
        while numba compiles them in a background process for the next run, and keeps
        that backend (``backend_choice``; ``kernprop.first_run``).
    batch_size : int, default 128
        Rows per step (the last batch of an epoch may be smaller).
    seed : int, default 0
        Seeds the shuffling.
    distributed : {None, "none", "mpi"}
        "mpi": data-parallel training under ``mpirun`` (``batch_size`` is then the
        global batch, split over the ranks; see ``kernprop.distributed``).
    engine : str, default "auto"
        "auto" (the rule in ``kernprop.engines``), or an engine by name:
        "layerwise", "packed", "fused" (numba), "device" (cuda).
    precision : {"fp32", "bf16x3", "bf16"}, default "fp32"
        How the products of the forward and backward passes (each layer's ``x @ w``,
        ``dy @ w.T`` and ``x.T @ dy``) are computed (``kernprop.precision``); weights,
        gradients, optimizer state, biases, activations, softmax and the loss stay in
        the model's dtype (float32 master weights).  Where the backend has no faster
        kernel for it (a CPU without a fast bf16 unit, the cuda backend) the products
        run in fp32 and ``fit`` warns once; the fused small-MLP step always computes in
        fp32 (its products are too small for bf16 to pay).  ``history["precision"]``
        records what the products ran at.  float64 models always compute in float64.

    Raises
    ------
    TypeError
        For a keyword neither the Trainer nor the named loss takes; the message lists
        the accepted ones (``lr`` belongs to the optimizer, ``epochs`` and ``verbose``
        to ``fit``).

    Examples
    --------
    >>> import kernprop
    >>> trainer = kernprop.Trainer(kernprop.nn.MLP([64, 32, 10], rng=0),
    ...                            optimizer=kernprop.optim.Adam(lr=1e-2))
    >>> history = trainer.fit(X, y, epochs=10)            # doctest: +SKIP
    """

    def __init__(self, model, loss="cross_entropy", optimizer=None, backend=None,
                 batch_size=128, seed=0, distributed=None, engine="auto", precision="fp32", **loss_kwargs):
        check_trainer_keywords(loss, loss_kwargs)
        check_precision(precision)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a kernprop.nn.Module, got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        batch_size = check_int("batch_size", batch_size, 1)  # row bounds are int64
        if optimizer is None:
            optimizer = Adam(1e-3)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a kernprop.optim optimizer, got {optimizer!r}")
        if backend is not None:
            resolve(backend)
        if engine not in engines.ENGINE_CHOICES:
            raise ValueError(f"engine must be one of {engines.ENGINE_CHOICES}, got {engine!r}")
        params = model.parameters()
        if not params:
            raise ValueError("model has no parameters to train")
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"model parameters must share one dtype, got {sorted(map(str, dtypes))}")
        check_distinct_parameters(params)
        self.model = model
        self.sequence = is_sequence_model(model)  # a GPT: (N, T) token ids in, (N, T) targets
        self.loss = nn.make_loss(loss, **loss_kwargs)
        outputs = output_features(model)
        if outputs is not None:
            self._check_loss(outputs)  # the rest is checked by fit's forward pass on a row
        self.optimizer = optimizer
        self.backend = backend
        self.batch_size = int(batch_size)
        self.seed = seed
        try:
            self.rng = np.random.default_rng(seed)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"seed must be None, a non-negative int or a numpy Generator, got {seed!r} ({exc})") from None
        self.dtype = dtypes.pop()
        self.history: dict[str, list] = {}
        self._engine_running = None  # the engine of the fit in progress (training_state)
        self.epochs_done = 0
        self.distributed = _distributed.make_context(distributed)
        self.engine = engine
        self.engine_choice = None  # (name, reason) of the last fit's engine
        self.precision = precision
        self.precision_choice = None  # (precision the products ran at, why) in the last fit
        self.backend_choice = None  # (backend, why) when the first fit chose it (kernprop.first_run)
        if engine != "auto" and (backend is not None or model.backend is not None):
            engines.check(engine, model, self.loss, optimizer, self.backend_name(), self.distributed is not None)

    def backend_name(self):
        """The trainer's backend, else the model's ``backend`` attribute, else the default."""
        return resolve(self.backend if self.backend is not None else self.model.backend)

    @property
    def classification(self):
        """Whether the loss takes class labels (cross-entropy): accuracy is reported and
        ``predict`` returns labels."""
        return bool(getattr(self.loss, "classification", False))

    def choose_engine(self):
        """``(name, reason)``: the engine a fit would take now (see ``kernprop.engines``)."""
        if self.engine != "auto":
            return self.engine, "asked for by name"
        return engines.choose(self.model, self.loss, self.optimizer, self.backend_name(), self.batch_size,
                              self.distributed is not None)

    # --- checks, once per call --------------------------------------------------------

    def _check_loss(self, num_outputs):
        """The loss's options against the model's outputs: one class weight per output
        (the kernels index the weights by label, so a short array would be read past)."""
        weight = getattr(self.loss, "weight", None)
        if self.classification and weight is not None and np.shape(weight) != (num_outputs,):
            raise ValueError(
                f"weight must have shape ({num_outputs},) (one weight per class of the model's "
                f"{num_outputs} outputs), got {np.shape(weight)}"
            )

    def _check_X(self, X, name):
        if self.sequence:
            return check_token_ids(X, name, self.model)
        # The probe's one-row forward runs on NumPy: the ops' checks are the same on
        # every backend, and on numba its 1-row products compiled a GEMM driver that
        # training may never run (a 784-512-256-10 fit's first compile, 2-core Zen 3 at
        # load 1: 38.5 -> 37.0 s; the digits run's unchanged, its evaluation needs that
        # driver).  The backend's kernel choice is still made here, so that a bad
        # override is refused before anything runs, as the probe refused it.
        check_kernel = getattr(family(self.backend_name(), "matmul"), "check_kernel", None)
        if check_kernel is not None:
            check_kernel(self.precision)
        probe = nn.validated_ops("numpy", self.precision)
        return check_features(X, name, self.model, self.dtype, probe)

    def _check_y(self, y, n, num_outputs, name, x_name):
        return check_targets(y, n, num_outputs, name, x_name, self.loss, self.classification, self.dtype)

    def _check_data(self, X, y, x_name="X", y_name="y"):
        X, num_outputs = self._check_X(X, x_name)
        if self.sequence:
            self._check_loss(num_outputs)
            return X, check_token_targets(y, X, y_name, x_name, num_outputs, self.loss)
        if num_outputs is not None:
            self._check_loss(num_outputs)
        return X, self._check_y(y, X.shape[0], num_outputs, y_name, x_name)

    # --- training ---------------------------------------------------------------------

    def fit(self, X, y, epochs=1, validation_data=None, shuffle=True, callbacks=(), verbose=1):
        """Train for ``epochs`` passes over ``(X, y)``.

        Parameters
        ----------
        X : array-like, shape (N, F)
            float32/float64 (cast to the model's dtype once); a list of Python floats
            reads as float64.  F must match the model's input features.
            For a sequence model (``nn.GPT``): (N, T) integer token ids, T <= its block size.
        y : array-like
            (N,) integer labels for cross-entropy; (N, OUT) or (N,) targets for mse; for a
            sequence model (N, T) next-token targets (``ignore_index`` positions skipped),
            the loss taken over every position.
        epochs : int, default 1
        validation_data : (X_val, y_val), optional
            Evaluated after every epoch.
        shuffle : bool, default True
        callbacks : sequence of callables ``callback(epoch, logs)``
            Run after every epoch (``logs`` holds that epoch's values); one returning
            True stops training.
        verbose : {0, 1, 2}, default 1
            0 silent; 1 a tqdm bar per epoch on a terminal (stderr); 2 also one printed
            line per epoch.

        Returns
        -------
        dict of lists
            Per epoch: ``loss`` (mean loss per row over the epoch's batches; for
            reduction "sum" the summed loss divided by the rows), ``accuracy``
            (classification), ``val_loss``, ``val_accuracy`` (with validation data),
            ``samples_per_s`` (training throughput in rows, sequences for a GPT, which also
            gets ``tokens_per_s``; step loop only; the first epoch of
            a process's first fit also pays for compiling the Numba kernels, or loading
            them from the cache, unless ``warmup`` ran first), ``lr``,
            ``engine`` (the step engine's name) and ``precision`` (what the products
            ran at: the Trainer's ``precision`` or "fp32", see ``precision_in_effect``).
        """
        def check():
            checked_callbacks = self._check_fit_args(epochs, verbose, callbacks)
            checked_X, checked_y = self._check_data(X, y)
            return (checked_callbacks, checked_X, checked_y, self._check_validation(validation_data),
                    self._engine(checked_X, checked_y))

        self._first_fit_backend(X, y, validation_data, verbose)
        # Distributed: every rank checks, then they agree before the first collective,
        # so a rank with bad data fails them all instead of leaving them waiting, and
        # ranks with different settings or hyperparameters fail them all too (they would
        # train to different parameters, or wait for each other at different epochs).
        dist = self.distributed
        if dist is None:
            callbacks, X, y, val, engine = check()
        else:
            callbacks, X, y, val, engine = dist.checked(
                check, agree=lambda checked: self._agreement(checked, epochs, shuffle))
        n, optimizer = X.shape[0], self.optimizer
        starts = np.arange(0, n, self.batch_size, dtype=np.int64)
        rows = np.stack([starts, np.minimum(starts + self.batch_size, n)], axis=1)  # (steps, 2): lo, hi
        sizes = (rows[:, 1] - rows[:, 0]).astype(np.float64)
        Xs, ys = (np.empty_like(X), np.empty_like(y)) if shuffle else (X, y)
        preds = np.zeros(n, dtype=np.int64)
        history = {key: [] for key in self._history_keys(val)}
        verbose = verbose if engine.reports else 0  # data-parallel: rank 0 alone reports
        show_bar = bool(verbose) and stderr_is_tty()
        chunk = max(1, len(rows) // _BAR_UPDATES) if show_bar else len(rows)
        with engine.running(Xs, ys, preds, rows), self._fitting(engine):
            for _ in range(epochs):
                optimizer.start_epoch(self.epochs_done)
                bar = _bar(n, self.epochs_done, show_bar)
                t0 = time.perf_counter()
                if shuffle:
                    perm = self.rng.permutation(n)
                    # mode="clip": a permutation is in range, and the default "raise"
                    # gathers into a temporary before copying to out (2.7x slower)
                    np.take(X, perm, axis=0, out=Xs, mode="clip")
                    np.take(y, perm, axis=0, out=ys, mode="clip")
                engine.begin_epoch()
                losses = np.empty(len(rows))
                for first in range(0, len(rows), chunk):
                    last = min(first + chunk, len(rows))
                    engine.run(first, last, losses)
                    if bar is not None:
                        _bar_update(bar, self._epoch_loss(losses[:last], sizes[:last], rows[last - 1, 1]),
                                    rows[last - 1, 1], t0)
                engine.end_epoch()
                elapsed = time.perf_counter() - t0
                logs = {"loss": self._epoch_loss(losses, sizes, n)}
                if self.classification and not self.sequence:  # a sequence step holds no logits
                    logs["accuracy"] = _accuracy(preds, ys, getattr(self.loss, "ignore_index", None))
                if val is not None:
                    logs.update({f"val_{k}": v for k, v in self._evaluate(*val, engine.kernels).items()})
                logs["samples_per_s"] = n / elapsed if elapsed > 0 else float("inf")
                if self.sequence:
                    logs["tokens_per_s"] = X.size / elapsed if elapsed > 0 else float("inf")
                logs["lr"] = optimizer.lr
                logs["engine"] = engine.name
                logs["precision"] = self.precision_choice[0]
                for key in history:
                    history[key].append(logs[key])
                    self.history.setdefault(key, []).append(logs[key])
                self.epochs_done += 1
                _bar_close(bar, logs)
                if verbose == 2:
                    print(_epoch_line(self.epochs_done, logs), flush=True)
                stop = any(cb(self.epochs_done - 1, dict(logs)) is True for cb in callbacks)
                if engine.agree(stop):
                    break
        return history

    def _first_fit_backend(self, X, y, validation_data, verbose):
        """No backend named (none given to the Trainer or the model, the default left as
        kernprop's numba): on the first fit, numba when the fit's kernels are in Numba's
        cache, else cython while a background process compiles them for the next run
        (``kernprop.first_run``).  Kept in ``backend`` for every later call; the choice
        and its reason in ``backend_choice`` (on stderr when ``verbose``).  Not for a
        sequence model, a distributed fit, or an engine only numba runs."""
        from .backends import default_is_named, get_backend

        if (self.backend is not None or self.model.backend is not None or default_is_named()
                or get_backend() != "numba" or self.sequence or self.distributed is not None
                or self.engine not in ("auto", "layerwise", "packed")):
            return
        from . import first_run

        try:
            choice = first_run.choose(self, X, y, validation_data)
        except (ValueError, TypeError):
            return  # bad data: fit's checks say so
        self.backend_choice = (choice.backend, choice.line)
        if verbose:
            print(choice.line, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _fitting(self, engine):
        """While ``fit`` runs, ``training_state`` asks its engine."""
        self._engine_running = engine
        try:
            yield
        finally:
            self._engine_running = None

    def training_state(self):
        """``(parameters, optimizer state)``: the model's parameters and the optimizer's
        state (``{name: [arrays]}``), one host array per parameter in
        ``model.parameters()`` order, also during ``fit`` (from a callback), where the
        engine may hold them flat or on the GPU.  What a checkpoint saves."""
        engine = self._engine_running
        if engine is not None:
            return engine.training_state()
        return self.model.parameters(), self.optimizer.state

    def warmup(self, X, y, validation_data=None):
        """Compile (first run) or load from Numba's cache every kernel that
        ``fit(X, y, validation_data=validation_data)`` calls, so that no epoch's
        ``samples_per_s`` pays for it; returns the seconds it took.

        It fits copies of the model and optimizer for one epoch on the first rows of
        ``(X, y)`` (a full batch and the last, shorter one of an epoch: their sizes
        choose between serial and parallel kernels) with the engine ``fit`` would
        choose, and evaluates them on the first rows of ``validation_data``.  The
        trainer is left as it was: model, optimizer state, shuffling generator, history.
        Data-parallel trainers warm their engine's single-process kernels.
        """
        start = time.perf_counter()
        X, y = self._check_data(X, y)
        n, batch = X.shape[0], self.batch_size
        rows = min(n, batch + n % batch)
        val = None
        if validation_data is not None:
            X_val, y_val = self._check_validation(validation_data)
            val_rows = min(X_val.shape[0], _EVAL_ROWS + X_val.shape[0] % _EVAL_ROWS)
            val = (X_val[:val_rows], y_val[:val_rows])
        # one deepcopy, one memo: optimizer state stays tied to the copied parameters
        model, optimizer = copy.deepcopy((self.model, self.optimizer))
        engine = self.choose_engine()[0]
        copy_trainer = Trainer(model, self.loss, optimizer, backend=self.backend_name(), batch_size=batch,
                               seed=0, engine=engine, precision=self.precision)
        copy_trainer.epochs_done = self.epochs_done  # the same learning rate schedule step
        copy_trainer.fit(X[:rows], y[:rows], 1, validation_data=val, shuffle=False, verbose=0)
        return time.perf_counter() - start

    def precision_in_effect(self, engine_name=None):
        """``(precision, reason)``: what the products of a fit run at, given its engine
        (default: the one a fit would take now): the Trainer's ``precision``, or "fp32"
        where the fused step, the backend or this CPU has no faster kernel for it."""
        asked = self.precision
        if asked == "fp32":
            return "fp32", ""
        if self.dtype == np.float64:
            return "fp32", "a float64 model computes in float64"
        engine_name = engine_name or self.choose_engine()[0]
        if engine_name == "fused":
            return "fp32", "the fused small-MLP step computes in fp32: its products are too small for bf16 to pay"
        kernel = matmul_kernel(self.backend_name(), asked) or asked  # silent: computes what is asked
        if kernel.startswith("fp32"):
            return "fp32", f"{self.backend_name()} has no faster {asked} kernel on this CPU: {kernel or 'fp32'}"
        return asked, kernel

    def _engine(self, X, y):
        """This fit's step engine, chosen once (see ``kernprop.engines``)."""
        name, why = self.engine_choice = self.choose_engine()
        self.precision_choice = self.precision_in_effect(name)
        if self.precision_choice[0] != self.precision and name != "fused":
            _warn_once(f"precision={self.precision!r} runs the fp32 kernels ({self.precision_choice[1]})")
        backend = self.backend_name()
        dist = self.distributed
        if dist is not None and backend == "cuda":
            raise ValueError("distributed training runs on the CPU backends, not on 'cuda'")
        return engines.make(name, self.model, self.loss, self.optimizer, nn.raw_kernels(backend, self.precision), backend,
                            self.batch_size, dist, self.rng, (X, y))

    def _agreement(self, checked, epochs, shuffle):
        """What every rank of a distributed fit must hold alike, by name: the fit's
        settings, the optimizer's hyperparameters, and the data, model and loss
        (``distributed.fingerprint``)."""
        _, X, y, val, engine = checked
        out = {"engine": engine.name, "precision": self.precision, "epochs": int(epochs), "shuffle": bool(shuffle),
               "backend": self.backend_name(), "validation_data": None if val is None else val[0].shape}
        out.update({f"optimizer {k}": v for k, v in self.optimizer.hyperparameters().items()})
        out.update(_distributed.fingerprint(self.model.parameters(), self.optimizer, X, y, self.batch_size,
                                             self.loss))
        return out

    def _check_fit_args(self, epochs, verbose, callbacks):
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        if verbose not in (0, 1, 2, True, False):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        callbacks = list(callbacks) if callbacks is not None else []
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks must be callables (epoch, logs), got {cb!r}")
        return callbacks

    def _check_validation(self, validation_data):
        if validation_data is None:
            return None
        try:
            X_val, y_val = validation_data
        except (TypeError, ValueError):
            raise ValueError("validation_data must be a pair (X_val, y_val)") from None
        return self._check_data(X_val, y_val, "validation_data[0]", "validation_data[1]")

    def _history_keys(self, val):
        keys = ["loss"] + (["accuracy"] if self.classification and not self.sequence else [])
        if val is not None:
            keys += ["val_loss"] + (["val_accuracy"] if self.classification else [])
        return keys + ["samples_per_s"] + (["tokens_per_s"] if self.sequence else []) + ["lr", "engine",
                                                                                         "precision"]

    def _epoch_loss(self, losses, sizes, rows):
        """Mean loss per row: batch means weighted by batch size, or summed losses / rows."""
        if getattr(self.loss, "reduction", "mean") == "mean":
            return float(losses @ sizes) / float(sizes.sum())
        return float(losses.sum()) / rows

    # --- inference --------------------------------------------------------------------

    def _outputs(self, X, kernels):
        if self.sequence:  # logits (N, T, V), a few sequences per pass
            return _sequence.predict_logits(self.model, X, kernels)
        chunks = [host(self.model.forward(X[s:s + _EVAL_ROWS])) for s in range(0, X.shape[0], _EVAL_ROWS)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _evaluate(self, X, y, kernels):
        if self.sequence:
            return _sequence.evaluate(self.model, self.loss, X, y, kernels)
        out = self._outputs(X, kernels)
        loss = host(self.loss.forward(out, y, kernels))
        reduction = getattr(self.loss, "reduction", "mean")
        result = {"loss": float(loss) if reduction == "mean" else float(np.sum(loss)) / X.shape[0]}
        if self.classification:
            keep = y != getattr(self.loss, "ignore_index", None)
            hit = (out.argmax(axis=1) == y) & keep
            counted = int(np.count_nonzero(keep))
            result["accuracy"] = int(np.count_nonzero(hit)) / counted if counted else float("nan")
        return result

    def evaluate(self, X, y):
        """``{"loss": ..., "accuracy": ...}`` (accuracy for classification) on ``(X, y)``."""
        X, y = self._check_data(X, y)
        with nn.bind_kernels(self.model, nn.raw_kernels(self.backend_name(), self.precision)) as kernels:
            return self._evaluate(X, y, kernels)

    def predict_proba(self, X):
        """Class probabilities (N, C): the softmax of the model's logits ((N, T, V) for a
        sequence model)."""
        if not self.classification:
            raise ValueError("predict_proba needs a classification loss (cross_entropy)")
        X, _ = self._check_X(X, "X")
        with nn.bind_kernels(self.model, nn.raw_kernels(self.backend_name(), self.precision)) as kernels:
            out = self._outputs(X, kernels)
            return host(kernels.softmax_forward(out.reshape(-1, out.shape[-1]))).reshape(out.shape)

    def predict(self, X):
        """Class labels (N,) int64 for classification, else the model outputs (N, OUT);
        for a sequence model the most likely next token at every position (N, T)."""
        X, _ = self._check_X(X, "X")
        with nn.bind_kernels(self.model, nn.raw_kernels(self.backend_name(), self.precision)) as kernels:
            out = self._outputs(X, kernels)
        return out.argmax(axis=-1).astype(np.int64) if self.classification else out

    # --- checkpoints ------------------------------------------------------------------

    def save(self, path):
        """Write a checkpoint to ``path`` (a ``.npz`` file, see ``kernprop.checkpoint``;
        written to a temporary file then renamed).  Distributed: rank 0 writes, every
        rank returns once it has, or raises when rank 0 could not write."""
        dist = self.distributed
        if dist is None:
            return checkpoint.write(self, path)
        # The agreement is the barrier: a failed write reaches every rank as an error
        # instead of leaving the others waiting for rank 0.
        dist.checked(lambda: checkpoint.write(self, path) if dist.is_root else None)
        return os.fspath(path)

    @classmethod
    def load(cls, path, backend=None, loss=None, engine="auto"):
        """A Trainer restored from ``save``: model, optimizer state, loss, settings and
        the shuffling generator's state.  ``backend`` overrides the saved one; ``loss``
        must be given when the saved trainer used a custom loss object; ``engine`` as
        for ``Trainer``.

        Raises ValueError for a file that is truncated, altered or not a checkpoint.
        """
        return checkpoint.read(path, cls, backend, loss, engine)


def _warn_once(message):
    """A UserWarning; Python's default filter shows each message once per process."""
    import warnings

    warnings.warn(message, UserWarning, stacklevel=3)
