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

Determinism: the shuffling draws from ``numpy.random.default_rng(seed)``; with the same
seed, initial weights, backend, engine and thread count, ``fit`` gives bit-identical
weights.

Checkpoints (``save`` / ``Trainer.load``): ``kernprop.checkpoint``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from . import checkpoint, engines, nn
from . import distributed as _distributed
from ._validate import as_array, check_int, check_label_values, float_dtype_error
from .backends import matmul_kernel, resolve
from .precision import check_precision
from .checkpoint import FORMAT_VERSION
from .engines.layerwise import host
from .optim import Adam, Optimizer

__all__ = ["Trainer", "FORMAT_VERSION"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
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
        each ``fit``.
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
        _check_trainer_keywords(loss, loss_kwargs)
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
        _check_distinct_parameters(params)
        self.model = model
        self.loss = nn.make_loss(loss, **loss_kwargs)
        outputs = _output_features(model)
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
        self.epochs_done = 0
        self.distributed = _distributed.make_context(distributed)
        self.engine = engine
        self.engine_choice = None  # (name, reason) of the last fit's engine
        self.precision = precision
        self.precision_choice = None  # (precision the products ran at, why) in the last fit
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
        X = _as_ndarray(X, name)
        if X.dtype not in _FLOAT_DTYPES:
            raise float_dtype_error(name, X.dtype)
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (samples, features), got shape {X.shape}")
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"{name} must not be empty, got shape {X.shape}")
        expected = _input_features(self.model)
        if expected is not None and X.shape[1] != expected:
            raise ValueError(f"{name} of shape {X.shape} does not fit the model: "
                             f"{name} has {X.shape[1]} features, the model expects {expected}")
        if not np.isfinite(X).all():
            raise ValueError(f"{name} must be finite (it holds NaN or inf)")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        # One checked forward pass on a row: the model must accept these features.
        try:
            with nn.bind_kernels(self.model, nn.validated_ops(self.backend_name(), self.precision)):
                out = self.model.forward(X[:1])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name} of shape {X.shape} does not fit the model: {exc}") from None
        return X, out.shape[1] if out.ndim == 2 else None

    def _check_y(self, y, n, num_outputs, name, x_name):
        y = _as_ndarray(y, name)
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(
                f"{name} must have one entry per row of {x_name}: {x_name} has {n} rows, "
                f"{name} has shape {y.shape}"
            )
        if self.classification:
            if y.dtype.kind not in "iu":
                raise TypeError(f"{name} must hold integer class labels for cross-entropy, got dtype {y.dtype}")
            if y.ndim != 1:
                raise ValueError(f"{name} must be 1-D (one label per row), got shape {y.shape}")
            if num_outputs is None:
                raise ValueError(f"the model's output for {x_name} is not 2-D (rows, classes)")
            # the ops' check: values range-checked in their own dtype, then int64
            y = check_label_values(name, y, num_outputs, getattr(self.loss, "ignore_index", None))
            return np.ascontiguousarray(y)
        if y.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold numbers, got dtype {y.dtype}")
        if y.ndim == 1:
            y = y.reshape(n, 1)
        if y.shape != (n, num_outputs):
            raise ValueError(f"{name} must have shape ({n}, {num_outputs}) to match the model output, got {y.shape}")
        if not np.isfinite(y).all():
            raise ValueError(f"{name} must be finite (it holds NaN or inf)")
        return np.ascontiguousarray(y, dtype=self.dtype)

    def _check_data(self, X, y, x_name="X", y_name="y"):
        X, num_outputs = self._check_X(X, x_name)
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
        y : array-like
            (N,) integer labels for cross-entropy; (N, OUT) or (N,) targets for mse.
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
            ``samples_per_s`` (training throughput, step loop only), ``lr``,
            ``engine`` (the step engine's name) and ``precision`` (what the products
            ran at: the Trainer's ``precision`` or "fp32", see ``precision_in_effect``).
        """
        def check():
            checked_callbacks = self._check_fit_args(epochs, verbose, callbacks)
            checked_X, checked_y = self._check_data(X, y)
            return (checked_callbacks, checked_X, checked_y, self._check_validation(validation_data),
                    self._engine(checked_X, checked_y))

        # Distributed: every rank checks, then they agree before the first collective,
        # so a rank with bad data fails them all instead of leaving them waiting.
        dist = self.distributed
        callbacks, X, y, val, engine = check() if dist is None else dist.checked(check)
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
        with engine.running(Xs, ys, preds, rows):
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
                if self.classification:
                    logs["accuracy"] = _accuracy(preds, ys, getattr(self.loss, "ignore_index", None))
                if val is not None:
                    logs.update({f"val_{k}": v for k, v in self._evaluate(*val, engine.kernels).items()})
                logs["samples_per_s"] = n / elapsed if elapsed > 0 else float("inf")
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
        keys = ["loss"] + (["accuracy"] if self.classification else [])
        if val is not None:
            keys += ["val_loss"] + (["val_accuracy"] if self.classification else [])
        return keys + ["samples_per_s", "lr", "engine", "precision"]

    def _epoch_loss(self, losses, sizes, rows):
        """Mean loss per row: batch means weighted by batch size, or summed losses / rows."""
        if getattr(self.loss, "reduction", "mean") == "mean":
            return float(losses @ sizes) / float(sizes.sum())
        return float(losses.sum()) / rows

    # --- inference --------------------------------------------------------------------

    def _outputs(self, X, kernels):
        chunks = [host(self.model.forward(X[s:s + _EVAL_ROWS])) for s in range(0, X.shape[0], _EVAL_ROWS)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _evaluate(self, X, y, kernels):
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
        """Class probabilities (N, C): the softmax of the model's logits."""
        if not self.classification:
            raise ValueError("predict_proba needs a classification loss (cross_entropy)")
        X, _ = self._check_X(X, "X")
        with nn.bind_kernels(self.model, nn.raw_kernels(self.backend_name(), self.precision)) as kernels:
            return host(kernels.softmax_forward(self._outputs(X, kernels)))

    def predict(self, X):
        """Class labels (N,) int64 for classification, else the model outputs (N, OUT)."""
        X, _ = self._check_X(X, "X")
        with nn.bind_kernels(self.model, nn.raw_kernels(self.backend_name(), self.precision)) as kernels:
            out = self._outputs(X, kernels)
        return out.argmax(axis=1).astype(np.int64) if self.classification else out

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


def _as_ndarray(data, name):
    """Array-likes as scikit-learn takes them: a NumPy array as it is, a DLPack object
    (a CPU tensor) viewed in place, anything else (lists, pandas) through
    ``np.asarray``, once per call; the dtype rules that follow are those of arrays."""
    data = as_array(name, data)
    if isinstance(data, np.ndarray):
        return data
    try:
        array = np.asarray(data)
    except (TypeError, ValueError) as exc:  # ragged lists, objects NumPy cannot read
        raise TypeError(f"{name} must be an array-like of numbers, got {type(data).__name__}: {exc}") from None
    if array.dtype == object:
        raise TypeError(f"{name} must be an array-like of numbers (rows of equal length), "
                        f"got {type(data).__name__} that NumPy reads as objects")
    return array


_TRAINER_KEYWORDS = ("model", "loss", "optimizer", "backend", "batch_size", "seed", "distributed", "engine",
                     "precision")
# Keywords other libraries' users reach for, and where they belong here.
_KEYWORD_HINTS = {
    "lr": "set the learning rate on the optimizer: optimizer=kernprop.optim.Adam(lr=...)",
    "learning_rate": "set the learning rate on the optimizer: optimizer=kernprop.optim.Adam(lr=...)",
    "momentum": "set it on the optimizer: optimizer=kernprop.optim.SGD(lr=..., momentum=...)",
    "epochs": "it is an argument of fit: trainer.fit(X, y, epochs=...)",
    "verbose": "it is an argument of fit: trainer.fit(X, y, verbose=...)",
    "callbacks": "it is an argument of fit: trainer.fit(X, y, callbacks=...)",
    "validation_data": "it is an argument of fit: trainer.fit(X, y, validation_data=...)",
    "random_state": "the Trainer's seed is seed=...",
    "device": "pick the backend: backend='cuda'",
}


def _check_trainer_keywords(loss, kwargs):
    """Keywords beyond the Trainer's own go to a named loss; one that neither takes is
    named, with the accepted ones (and where it belongs when it is a habit from PyTorch,
    Keras or scikit-learn), instead of surfacing as the loss's TypeError."""
    if not kwargs:
        return
    loss_class = nn.LOSSES.get(loss) if isinstance(loss, str) else None
    loss_options = ()
    if loss_class is not None:
        import inspect

        loss_options = tuple(p for p in inspect.signature(loss_class).parameters if p != "self")
    unknown = [k for k in kwargs if k not in loss_options]
    if not unknown:
        return
    key = unknown[0]
    accepted = ", ".join(_TRAINER_KEYWORDS)
    if loss_options:
        accepted += f"; for loss={loss!r}: " + ", ".join(loss_options)
    hint = f" ({_KEYWORD_HINTS[key]})" if key in _KEYWORD_HINTS else ""
    raise TypeError(f"Trainer got an unexpected keyword argument {key!r}{hint}; it accepts {accepted}")


def _input_features(model):
    """The number of input features when the model's first layer says it (a kernprop
    ``Linear``, alone or first in a ``Sequential``), else None."""
    while isinstance(model, nn.Sequential) and len(model):
        model = model[0]
    return model.weight.shape[0] if isinstance(model, nn.Linear) else None


def _output_features(model):
    """The model's number of outputs when its layers say it (built of kernprop's own
    layers only: the last ``Linear``'s ``out_features``, activations keep the width),
    else None (fit finds it by a forward pass)."""
    modules = list(model.modules())
    if not all(type(m) in (nn.Linear, nn.Sequential, nn.MLP, nn.ReLU, nn.Sigmoid, nn.Tanh) for m in modules):
        return None
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    return linears[-1].weight.shape[1] if linears else None


def _check_distinct_parameters(params):
    """No two parameters share memory: each is updated in place from its own gradient,
    and a shared one would take several updates per step in a backend-dependent order."""
    for i, p in enumerate(params):
        for j in range(i + 1, len(params)):
            if isinstance(p, np.ndarray) and isinstance(params[j], np.ndarray) \
                    and np.may_share_memory(p, params[j]):
                raise ValueError(f"model parameters {i} and {j} share memory; give each layer its own arrays")


def _accuracy(preds, labels, ignore):
    hit = preds == labels
    if ignore is not None:
        keep = labels != ignore
        counted = int(np.count_nonzero(keep))
        return int(np.count_nonzero(hit & keep)) / counted if counted else float("nan")
    return int(np.count_nonzero(hit)) / labels.shape[0]


def _epoch_line(epoch, logs):
    parts = [f"epoch {epoch}"]
    for key, value in logs.items():
        if key == "samples_per_s":
            parts.append(f"{value:,.0f} samples/s")
        elif key not in ("lr", "engine"):
            parts.append(f"{key} {value:.4f}")
    return "  ".join(parts)


def _bar(total, epoch, show):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}", unit="sample", leave=True, file=sys.stderr)


def _bar_update(bar, running_loss, seen, t0):
    bar.update(int(seen) - bar.n)
    elapsed = time.perf_counter() - t0
    bar.set_postfix(loss=f"{running_loss:.4f}", samples_per_s=f"{seen / max(elapsed, 1e-9):,.0f}", refresh=False)


def _bar_close(bar, logs):
    if bar is None:
        return
    short = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}
    bar.set_postfix({short[k]: f"{v:.4f}" for k, v in logs.items() if k in short}, refresh=True)
    bar.close()


def _warn_once(message):
    """A UserWarning; Python's default filter shows each message once per process."""
    import warnings

    warnings.warn(message, UserWarning, stacklevel=3)
