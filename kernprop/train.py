"""The training loop: ``Trainer(model, loss, optimizer).fit(X, y, epochs)``.

The data are checked once per ``fit`` (shapes, dtypes, label range, that the model
accepts them); inside the step loop the layers then call the backend's kernels directly
(``kernprop.nn.bind_kernels``), so a step costs the kernels plus a few attribute
lookups.  Each epoch shuffles the rows into one preallocated buffer (one gather per
epoch, then every batch is a contiguous slice of it, copied nowhere).  The backward pass
skips the input gradient of the first layer, which nothing reads.  During a fit of a
small model the parameters, gradients and optimizer state sit in one flat buffer each
(``_packed``, where ``_pack_pays``), so the optimizer update is one kernel call per step;
on the ``cuda`` backend they stay on the device for the whole fit (``_resident``).  On
the ``numba`` backend a small MLP (Linear layers, each optionally followed by ReLU /
Sigmoid / Tanh; cross_entropy or mse with reduction "mean" or "sum"; SGD or Adam; not
distributed) takes instead one compiled call per epoch (per progress-bar update when a
bar shows) for every step's forward, loss, backward and update over those flat buffers
(``kernels/numba_cpu/mlp_step.py``, chosen by ``_fused_step``), with the same results
to float rounding.

Determinism: the shuffling draws from ``numpy.random.default_rng(seed)``; with the same
seed, initial weights, backend and thread count, ``fit`` gives bit-identical weights.

Checkpoints (``save`` / ``Trainer.load``) are ``.npz`` files read with
``allow_pickle=False``: a format version, the architecture as an array of JSON strings
(one per top-level layer), the parameters, the optimizer state, the trainer settings
(JSON) and a SHA-256 of all of it, so that a truncated or altered file is refused with
a ValueError rather than loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time

import numpy as np

from . import distributed as _distributed
from . import nn
from .backends import get_num_threads, resolve
from .optim import OPTIMIZERS, SGD, Adam, Optimizer

__all__ = ["Trainer", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_EVAL_ROWS = 4096  # rows per forward pass in evaluate / predict
_PRED_EVERY = 64  # training steps whose logits are kept for one batched argmax


def _stderr_is_tty():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Trainer:
    """Trains ``model`` (a ``kernprop.nn`` module) on NumPy arrays.

    loss: "cross_entropy" (integer labels; the options of ``kernprop.cross_entropy``
        as keyword arguments: ``reduction``, ``ignore_index``, ``label_smoothing``,
        ``weight``), "mse" (float targets; ``reduction``), or a loss object with
        ``forward(pred, target, kernels)`` and ``with_grad(pred, target, kernels)``.
    optimizer: a ``kernprop.optim`` optimizer (default ``Adam(1e-3)``).
    backend: backend name; None: the model's ``backend`` attribute if set, else the
        default backend at each ``fit``.
    batch_size: rows per step (the last batch of an epoch may be smaller).
    seed: seeds the shuffling.
    distributed: None / "none", or "mpi" for data-parallel training under ``mpirun``
        (``batch_size`` is then the global batch, split over the ranks; see
        ``kernprop.distributed``).
    """

    def __init__(self, model, loss="cross_entropy", optimizer=None, backend=None,
                 batch_size=128, seed=0, distributed=None, **loss_kwargs):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a kernprop.nn.Module, got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if optimizer is None:
            optimizer = Adam(1e-3)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a kernprop.optim optimizer, got {optimizer!r}")
        if backend is not None:
            resolve(backend)
        params = model.parameters()
        if not params:
            raise ValueError("model has no parameters to train")
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"model parameters must share one dtype, got {sorted(map(str, dtypes))}")
        self.model = model
        self.loss = nn.make_loss(loss, **loss_kwargs)
        self.optimizer = optimizer
        self.backend = backend
        self.batch_size = int(batch_size)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.dtype = dtypes.pop()
        self.history: dict[str, list] = {}
        self.epochs_done = 0
        self._dist = _distributed.make_context(distributed)

    def _backend_name(self):
        """The trainer's backend, else the model's ``backend`` attribute, else the default."""
        return resolve(self.backend if self.backend is not None else self.model.backend)

    @property
    def classification(self):
        return bool(getattr(self.loss, "classification", False))

    # --- checks, once per call --------------------------------------------------------

    def _check_X(self, X, name):
        if not isinstance(X, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(X).__name__}")
        if X.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64, got {X.dtype}")
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (samples, features), got shape {X.shape}")
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"{name} must not be empty, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError(f"{name} must be finite (it holds NaN or inf)")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        # One checked forward pass on a row: the model must accept these features.
        try:
            with _backend_of(self.model, self._backend_name()):
                out = self.model.forward(X[:1])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name} of shape {X.shape} does not fit the model: {exc}") from None
        return X, out.shape[1] if out.ndim == 2 else None

    def _check_y(self, y, n, num_outputs, name, x_name):
        if not isinstance(y, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(y).__name__}")
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
            y = np.ascontiguousarray(y, dtype=np.int64)
            ignore = getattr(self.loss, "ignore_index", None)
            bad = (y < 0) | (y >= num_outputs)
            if ignore is not None:
                bad &= y != ignore
            if bad.any():
                row = int(np.argmax(bad))
                raise ValueError(
                    f"{name}[{row}] = {y[row]} is out of range: labels must be in "
                    f"[0, {num_outputs}) for a model with {num_outputs} outputs"
                    + (f" (or equal ignore_index={ignore})" if ignore is not None else "")
                )
            return y
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
        return X, self._check_y(y, X.shape[0], num_outputs, y_name, x_name)

    # --- training ---------------------------------------------------------------------

    def fit(self, X, y, epochs=1, validation_data=None, shuffle=True, callbacks=(), verbose=1):
        """Train for ``epochs`` passes over ``(X, y)``; returns this fit's history.

        X: (N, F) float32/float64 (cast to the model's dtype once); y: (N,) integer
        labels for cross-entropy, (N, OUT) or (N,) targets for mse.
        validation_data: ``(X_val, y_val)`` evaluated after every epoch.
        callbacks: callables ``callback(epoch, logs)`` run after every epoch (``logs``
        holds that epoch's values); one returning True stops training.
        verbose: 0 silent; 1 a tqdm bar per epoch on a terminal (stderr); 2 also one
        printed line per epoch.

        History: lists per epoch of ``loss`` (mean loss per row over the epoch's
        batches; for reduction "sum" the summed loss divided by the rows),
        ``accuracy`` (classification), ``val_loss``, ``val_accuracy`` (with
        validation data), ``samples_per_s`` (training throughput, step loop only).
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        if verbose not in (0, 1, 2, True, False):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        callbacks = list(callbacks) if callbacks is not None else []
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks must be callables (epoch, logs), got {cb!r}")
        name = self._backend_name()
        X, y = self._check_data(X, y)
        val = None
        if validation_data is not None:
            try:
                X_val, y_val = validation_data
            except (TypeError, ValueError):
                raise ValueError("validation_data must be a pair (X_val, y_val)") from None
            val = self._check_data(X_val, y_val, "validation_data[0]", "validation_data[1]")

        history = {"loss": []}
        if self.classification:
            history["accuracy"] = []
        if val is not None:
            history["val_loss"] = []
            if self.classification:
                history["val_accuracy"] = []
        history["samples_per_s"] = []
        history["lr"] = []

        n, batch_size = X.shape[0], self.batch_size
        # Preallocated shuffled copies: one gather per epoch, contiguous batch slices.
        # On the cuda backend the parameters, gradients and optimizer state stay on the
        # device for the whole fit and each epoch's rows are uploaded once.
        X_host = X
        Xs = np.empty_like(X) if shuffle else X
        ys = np.empty_like(y) if shuffle else y
        starts = range(0, n, batch_size)
        sizes = np.array([min(batch_size, n - start) for start in starts], dtype=np.float64)
        preds = np.zeros(n, dtype=np.int64)
        dist = self._dist
        batched_preds = dist is None  # distributed shards are not consecutive rows
        verbose = verbose if dist is None or dist.is_root else 0  # rank 0 alone reports
        show_bar = bool(verbose) and _stderr_is_tty()
        ignore = getattr(self.loss, "ignore_index", None) if self.classification else None
        mean = getattr(self.loss, "reduction", "mean") == "mean"
        model, loss_fn, optimizer = self.model, self.loss, self.optimizer
        forward, backward, gradients = model.forward, model.backward, model.gradients
        classification = self.classification
        bar_every = max(1, len(starts) // 50)

        on_gpu = name == "cuda"
        Xs_host = Xs
        if on_gpu and dist is not None:
            raise ValueError("distributed training runs on the CPU backends, not on 'cuda'")
        pack = not on_gpu and dist is None and _pack_pays(model.parameters(), name, batch_size)
        with nn.bind_kernels(model, name) as kernels, _guard(dist), _resident(model, optimizer, on_gpu), \
                _packed(model, optimizer, pack) as packed:
            params = model.parameters()
            if packed is not None:  # one optimizer kernel call per step for all parameters
                flat_params, grad_views, flat_grads = packed
                copyto = np.copyto
            with_grad = loss_fn.with_grad
            # Small MLPs on numba: the whole step is one compiled kernel (see _fused_step).
            fused = _fused_step(model, loss_fn, optimizer, name, packed, batch_size, self.dtype)
            # bound once: the shuffled Xs, ys are refilled in place every epoch
            fused_steps = fused.step.bind_steps(Xs, ys, preds) if fused is not None else None
            steps_at_start = optimizer.steps
            if dist is None:
                shards = [(start, min(start + batch_size, n)) for start in starts]
                bounds = np.array(shards, dtype=np.int64).reshape(-1, 2)
            else:  # same start on every rank, then this rank's rows of each global batch
                dist.setup(params, optimizer, self.rng, X, y, batch_size, loss_fn)
                shards = dist.shards(starts, n, batch_size)
            for epoch in range(epochs):
                optimizer.start_epoch(self.epochs_done)
                if fused_steps is not None and not fused.current(optimizer):
                    fused_steps = None  # hyperparameters changed mid-fit: layer by layer
                bar = _bar(n, self.epochs_done, epochs, show_bar)
                t0 = time.perf_counter()
                if shuffle:
                    perm = self.rng.permutation(n)
                    Xs = Xs_host if on_gpu else Xs
                    # mode="clip": a permutation is in range, and the default "raise"
                    # gathers into a temporary before copying to out (2.7x slower)
                    np.take(X, perm, axis=0, out=Xs, mode="clip")
                    np.take(y, perm, axis=0, out=ys, mode="clip")
                step_losses, pending, pending_lo = [], [], 0
                append_loss = step_losses.append
                if on_gpu:  # one upload per epoch; each batch is then a device slice
                    Xs = _to_device(Xs_host if shuffle else X_host)
                if fused_steps is not None:
                    # forward, loss, backward, update and the argmax into preds: the
                    # epoch's steps in one call, or one call per bar update
                    step_losses = np.empty(len(starts))
                    chunk = bar_every if bar is not None else max(1, len(starts))
                    for first in range(0, len(starts), chunk):
                        last = min(first + chunk, len(starts))
                        fused_steps(bounds[first:last], optimizer.lr, optimizer.steps + 1,
                                    step_losses[first:last])
                        optimizer.steps += last - first
                        if bar is not None:
                            _bar_update(bar, step_losses[:last], sizes, mean, last - 1, starts[last - 1],
                                        batch_size, n, t0)
                for i, start in enumerate(starts if fused_steps is None else ()):
                    lo, hi = shards[i]
                    xb = Xs[lo:hi]
                    if hi > lo:  # distributed: a rank may get no rows of a small batch
                        out = forward(xb)
                        loss, dout = with_grad(out, ys[lo:hi], kernels)
                        backward(dout, need_input_grad=False)
                    if dist is not None:  # the global batch's gradients: one Allreduce
                        loss = dist.allreduce_gradients(gradients(), loss if hi > lo else None, ys, start, lo, hi)
                    if packed is None:
                        optimizer.step(params, gradients(), kernels)
                    else:
                        for view, grad in zip(grad_views, gradients()):
                            copyto(view, grad)
                        optimizer.step(flat_params, flat_grads, kernels)
                    # Bookkeeping, batched: a list append per step; the losses are
                    # reduced once per epoch and the logits' argmax taken every
                    # _PRED_EVERY steps (consecutive batches are consecutive rows).
                    append_loss(loss if mean else np.sum(_host(loss)))
                    if classification and hi > lo:
                        if batched_preds:
                            pending.append(out)
                            if len(pending) == _PRED_EVERY:
                                pending_lo = _flush_preds(pending, preds, pending_lo)
                        else:
                            out.argmax(axis=1, out=preds[lo:hi])
                    if bar is not None and (i % bar_every == 0 or start + batch_size >= n):
                        _bar_update(bar, step_losses, sizes, mean, i, start, batch_size, n, t0)
                if pending:
                    _flush_preds(pending, preds, pending_lo)
                elapsed = time.perf_counter() - t0
                logs = {"loss": _epoch_loss(_loss_array(step_losses), sizes, mean, n)}
                if classification:
                    if dist is not None:
                        dist.gather_predictions(preds)
                    logs["accuracy"] = _accuracy(preds, ys, ignore)
                if val is not None:
                    logs.update({f"val_{k}": v for k, v in self._evaluate(*val, kernels).items()})
                logs["samples_per_s"] = n / elapsed if elapsed > 0 else float("inf")
                logs["lr"] = optimizer.lr
                for key in history:
                    history[key].append(logs[key])
                    self.history.setdefault(key, []).append(logs[key])
                self.epochs_done += 1
                if bar is not None:
                    short = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}
                    bar.set_postfix({short[k]: f"{v:.4f}" for k, v in logs.items() if k in short}, refresh=True)
                    bar.close()
                if verbose == 2:
                    print(_epoch_line(self.epochs_done, logs), flush=True)
                stop = any(cb(self.epochs_done - 1, dict(logs)) is True for cb in callbacks)
                if dist is not None:
                    stop = dist.any(stop)  # all ranks stop when one asks to
                if stop:
                    break
            if fused_steps is not None and optimizer.steps != steps_at_start:
                fused.store_gradients()
        return history

    # --- inference --------------------------------------------------------------------

    def _outputs(self, X, kernels):
        chunks = [_host(self.model.forward(X[s:s + _EVAL_ROWS])) for s in range(0, X.shape[0], _EVAL_ROWS)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _evaluate(self, X, y, kernels):
        out = self._outputs(X, kernels)
        loss = _host(self.loss.forward(out, y, kernels))
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
        name = self._backend_name()
        X, y = self._check_data(X, y)
        with nn.bind_kernels(self.model, name) as kernels:
            return self._evaluate(X, y, kernels)

    def predict_proba(self, X):
        """Class probabilities (N, C): the softmax of the model's logits."""
        if not self.classification:
            raise ValueError("predict_proba needs a classification loss (cross_entropy)")
        name = self._backend_name()
        X, _ = self._check_X(X, "X")
        with nn.bind_kernels(self.model, name) as kernels:
            return _host(kernels.softmax_forward(self._outputs(X, kernels)))

    def predict(self, X):
        """Class labels (N,) int64 for classification, else the model outputs (N, OUT)."""
        name = self._backend_name()
        X, _ = self._check_X(X, "X")
        with nn.bind_kernels(self.model, name) as kernels:
            out = self._outputs(X, kernels)
        return out.argmax(axis=1).astype(np.int64) if self.classification else out

    # --- checkpoints ------------------------------------------------------------------

    def _checkpoint_arrays(self):
        model = self.model
        if isinstance(model, nn.Sequential):
            layers, container = [layer.config() for layer in model.layers], "Sequential"
        else:
            layers, container = [model.config()], "single"
        settings = {
            "container": container,
            "loss": getattr(self.loss, "name", "custom"),
            "loss_kwargs": self.loss.kwargs() if hasattr(self.loss, "kwargs") else {},
            "batch_size": self.batch_size,
            "backend": self.backend,
            "seed": self.seed if isinstance(self.seed, (int, type(None))) else None,
            "epochs_done": self.epochs_done,
            "rng_state": self.rng.bit_generator.state,
        }
        arrays = {
            "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
            "architecture": np.array([json.dumps(c, sort_keys=True) for c in layers]),
            "trainer": np.array(json.dumps(settings, sort_keys=True)),
        }
        for i, p in enumerate(model.parameters()):
            arrays[f"param.{i}"] = p
        weight = getattr(self.loss, "weight", None)
        if weight is not None:
            arrays["loss.weight"] = np.asarray(weight, dtype=np.float64)
        for key, value in self.optimizer.state_dict().items():
            arrays[f"optimizer.{key}"] = value
        arrays["checksum"] = np.array(_checksum(arrays))
        return arrays

    def save(self, path):
        """Write a checkpoint to ``path`` (a ``.npz`` file; written to a temporary
        file then renamed, so a crash never leaves half a checkpoint under ``path``).
        Distributed: rank 0 writes, every rank returns once it has."""
        path = os.fspath(path)
        if self._dist is not None and not self._dist.is_root:
            self._dist.barrier()
            return path
        buffer = io.BytesIO()
        np.savez(buffer, **self._checkpoint_arrays())
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
        if self._dist is not None:
            self._dist.barrier()
        return path

    @classmethod
    def load(cls, path, backend=None, loss=None):
        """A Trainer restored from ``save``: model, optimizer state, loss, settings and
        the shuffling generator's state.  ``backend`` overrides the saved one; ``loss``
        must be given when the saved trainer used a custom loss object.

        Raises ValueError for a file that is truncated, altered or not a checkpoint.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint at {path!r}")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {key: z[key] for key in z.files}
        except Exception as exc:  # noqa: BLE001 - zip, npy and pickle refusals all mean "bad file"
            raise ValueError(f"{path!r} is not a readable kernprop checkpoint (truncated or corrupt?): {exc}") from None
        return cls._from_arrays(arrays, path, backend, loss)

    @classmethod
    def _from_arrays(cls, arrays, path, backend, loss):
        def bad(why):
            return ValueError(f"{path!r} is not a valid kernprop checkpoint: {why}")

        for key in ("format_version", "architecture", "trainer", "checksum"):
            if key not in arrays:
                raise bad(f"missing {key!r}")
        try:
            version = int(arrays["format_version"])
        except (TypeError, ValueError):
            raise bad("format_version is not an integer") from None
        if version != FORMAT_VERSION:
            raise bad(f"format version {version}, this kernprop reads version {FORMAT_VERSION}")
        stored = arrays.pop("checksum")
        if stored.dtype.kind != "U" or stored.shape != () or str(stored) != _checksum(arrays):
            raise bad("checksum mismatch (the file was altered or damaged)")
        try:
            arch = arrays["architecture"]
            if arch.dtype.kind != "U" or arch.ndim != 1:
                raise ValueError("architecture must be a 1-D array of JSON strings")
            configs = [json.loads(str(s)) for s in arch]
            # Shapes first, from the stored arrays: a bad architecture fails here,
            # before any layer allocates what it claims to need.
            shapes = [shape for c in configs for shape in _parameter_shapes(c)]
            for i, shape in enumerate(shapes):
                saved = arrays.get(f"param.{i}")
                if saved is None or saved.shape != shape:
                    got = "missing" if saved is None else f"shape {saved.shape}"
                    raise ValueError(f"param.{i} is {got}, the architecture needs {shape}")
            layers = [nn.from_config(c) for c in configs]
            settings = json.loads(str(arrays["trainer"]))
            if not isinstance(settings, dict):
                raise ValueError("trainer settings must be a JSON object")
            model = nn.Sequential(*layers) if settings.get("container") == "Sequential" else layers[0]
            params = model.parameters()
            for i, p in enumerate(params):
                key = f"param.{i}"
                if key not in arrays:
                    raise ValueError(f"missing {key!r} for the architecture")
                saved = arrays[key]
                if saved.shape != p.shape or saved.dtype != p.dtype:
                    raise ValueError(f"{key} has shape {saved.shape} {saved.dtype}, the architecture needs {p.shape} {p.dtype}")
                p[...] = saved
            if f"param.{len(params)}" in arrays:
                raise ValueError("more parameters than the architecture has")
            opt = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer.")}
            kind = str(opt.get("kind", ""))
            if kind not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer kind {kind!r}")
            optimizer = OPTIMIZERS[kind](lr=float(opt.get("lr", 0.0)))
            optimizer.load_state_dict(opt)
            optimizer._ensure_state(params)  # the state must fit these parameters
            loss_name = settings.get("loss")
            if loss is None:
                if loss_name not in nn.LOSSES:
                    raise ValueError(f"the checkpoint used loss {loss_name!r}; pass loss= to load it")
                kwargs = dict(settings.get("loss_kwargs") or {})
                if "loss.weight" in arrays:
                    kwargs["weight"] = arrays["loss.weight"]
                loss = nn.make_loss(loss_name, **kwargs)
            trainer = cls(
                model, loss=loss, optimizer=optimizer,
                backend=backend if backend is not None else settings.get("backend"),
                batch_size=settings.get("batch_size", 128), seed=settings.get("seed"),
            )
            trainer.epochs_done = int(settings.get("epochs_done", 0))
            if settings.get("rng_state") is not None:
                trainer.rng.bit_generator.state = settings["rng_state"]
        except (ValueError, TypeError, KeyError) as exc:
            raise bad(exc) from None
        return trainer


def _guard(dist):
    """Distributed: an exception on one rank aborts all (none waits forever)."""
    return contextlib.nullcontext() if dist is None else dist.abort_on_error()


class _backend_of:
    """Context: run ``model`` on ``backend`` through the checked ops, then restore."""

    def __init__(self, model, backend):
        self.model, self.backend = model, backend

    def __enter__(self):
        self.saved = [(m, m._backend) for m in self.model.modules()]
        for m, _ in self.saved:
            m._backend = self.backend if self.backend is not None else m._backend

    def __exit__(self, *exc):
        for m, b in self.saved:
            m._backend = b


def _host(x):
    """A NumPy value of a result that may live on the GPU (one copy when it does)."""
    return x.copy_to_host() if hasattr(x, "copy_to_host") else x


def _to_device(x):
    from numba import cuda

    return cuda.to_device(x)


def _loss_array(step_losses):
    if isinstance(step_losses, np.ndarray):  # the fused steps' losses
        return step_losses
    return np.array([_host(v) for v in step_losses], dtype=np.float64)


# Packing (below) makes the optimizer one kernel call instead of one per array, at the
# cost of copying every gradient into the flat buffer each step: it pays for small
# models, where a call costs more than the copy, and the fused step needs it.  Measured
# at 784-512-256-10, batch 256 (535K parameters), numba, SGD: 4.15-4.41 ms per step
# packed, 3.96-4.12 ms not (bench/TRAIN_STEP.md).
_PACK_MAX_PARAMS = 65_536


def _pack_pays(params, backend, batch_size):
    """Whether a fit packs its parameters (see _packed): several arrays, and either few
    parameters or a model small enough for the fused numba step (see _fused_limit)."""
    if len(params) < 2:
        return False
    size = sum(p.size for p in params)
    return size <= _PACK_MAX_PARAMS or (backend == "numba" and 3 * batch_size * size <= _fused_limit())


@contextlib.contextmanager
def _packed(model, optimizer, enabled):
    """While a fit runs, the parameters, their gradients and each kind of optimizer state
    live in one flat buffer each, the model's arrays being views into it, so that an
    optimizer step is one kernel call for the whole model instead of one per array (the
    update is elementwise, so the arithmetic is the same).  The gradients, new arrays
    each step, are copied into their views.  Afterwards the values are copied back into
    the original arrays, which the model and optimizer hold again.

    Yields ``([flat params], grad views, [flat grads])``, or None when not enabled."""
    params = model.parameters()
    if not enabled:
        yield None
        return
    optimizer._ensure_state(params)  # per-array state first (refuses a mismatched one)
    offsets = np.cumsum([0] + [p.size for p in params])

    def views(flat):
        return [flat[o:o + p.size].reshape(p.shape) for o, p in zip(offsets, params)]

    flat = np.concatenate([p.ravel() for p in params])
    param_views = views(flat)
    flat_grad = np.zeros_like(flat)
    old_state = optimizer.state
    optimizer.state = {
        key: [np.concatenate([a.ravel() for a in arrays])]
        for key, arrays in old_state.items() if len(arrays) == len(params)
    }
    optimizer._checked = None
    model._set_parameters(param_views)
    try:
        yield [flat], views(flat_grad), [flat_grad]
    finally:
        for p, view in zip(params, param_views):
            p[...] = view
        model._set_parameters(params)
        state = {}
        for key, (flat_state,) in optimizer.state.items():
            old = old_state.get(key)
            if old is not None and len(old) == len(params):
                for a, view in zip(old, views(flat_state)):
                    a[...] = view
                state[key] = old
            else:
                state[key] = [view.copy() for view in views(flat_state)]
        optimizer.state = state
        optimizer._checked = None


@contextlib.contextmanager
def _resident(model, optimizer, on_gpu):
    """While a fit runs on the GPU, the model's parameters and the optimizer's state
    are device copies; afterwards they are copied back into the host arrays (which the
    model holds again), so checkpoints and the CPU backends see the trained values."""
    if not on_gpu:
        yield
        return
    host_params = model.parameters()
    host_state = optimizer.state
    device_params = [_to_device(p) for p in host_params]
    model._set_parameters(device_params)
    optimizer.state = {k: [_to_device(a) for a in v] for k, v in host_state.items()}
    optimizer._checked = None
    try:
        yield
    finally:
        for h, d in zip(host_params, device_params):
            d.copy_to_host(h)
        model._set_parameters(host_params)
        state = {}
        for key, arrays in optimizer.state.items():
            old = host_state.get(key, [])
            state[key] = []
            for i, a in enumerate(arrays):
                if i < len(old) and old[i].shape == a.shape and old[i].dtype == a.dtype:
                    a.copy_to_host(old[i])  # the host arrays a caller may hold stay current
                    state[key].append(old[i])
                else:
                    state[key].append(_host(a))
        optimizer.state = state
        optimizer._checked = None
        for layer in model.modules():  # gradients back on the host too
            if isinstance(layer, nn.Linear):
                layer.dweight = _host(layer.dweight)
                layer.dbias = _host(layer.dbias) if layer.dbias is not None else None


def _bar_update(bar, step_losses, sizes, mean, i, start, batch_size, n, t0):
    seen = min(start + batch_size, n)
    bar.update(seen - bar.n)
    elapsed = time.perf_counter() - t0
    running = _epoch_loss(_loss_array(step_losses), sizes[:i + 1], mean, seen)
    bar.set_postfix(loss=f"{running:.4f}", samples_per_s=f"{seen / max(elapsed, 1e-9):,.0f}",
                    refresh=False)


# The fused step runs serially.  Measured on 2 cores (bench/TRAIN_STEP.md): with 2 numba
# threads it wins up to ~100M multiply-adds per step (1.2x at 784-256-10 batch 128, 78M)
# and the parallel layer-by-layer path from ~200M (0.8-1.0x at 784-512-256-10 batch 256,
# 411M); with 1 thread it won at every size measured, up to those 411M (1.4x).
_FUSED_MAX_MACS = 100_000_000


def _fused_limit():
    """The most multiply-adds per step (3 x batch x weights) that take the fused step:
    _FUSED_MAX_MACS with more than one numba thread, 4x that with one."""
    return _FUSED_MAX_MACS if get_num_threads() > 1 else 4 * _FUSED_MAX_MACS


class _FusedStep:
    """A fit's whole-step kernel (``kernels.numba_cpu.mlp_step``) and where its
    gradients go back to the layers when the fit ends."""

    def __init__(self, plan, linears, grad_views, optimizer):
        self.step, self.linears, self.grad_views = plan, linears, grad_views
        self.hyper = self._hyper(optimizer)

    @staticmethod
    def _hyper(optimizer):
        return {k: v for k, v in optimizer.hyperparameters().items() if k != "lr"}

    def current(self, optimizer):
        # the kernel reads lr every step; the other hyperparameters are fixed at fit start
        return self._hyper(optimizer) == self.hyper

    def store_gradients(self):
        # the layer-by-layer path leaves the last step's gradients on the layers
        views = iter(self.grad_views)
        for layer in self.linears:
            layer.dweight = next(views).copy()
            if layer.bias is not None:
                layer.dbias = next(views).copy()


def _fused_step(model, loss, optimizer, backend, packed, batch_size, dtype):
    """The fused whole-step kernel for this fit, or None where the layer-by-layer path
    runs: it needs the numba backend, packed parameters (not distributed, not cuda), a
    model of Linear layers each optionally followed by ReLU / Sigmoid / Tanh, loss
    cross_entropy or mse with reduction "mean" or "sum", optimizer SGD or Adam, and a
    step of at most _FUSED_MAX_MACS multiply-adds (forward + backward)."""
    if backend != "numba" or packed is None:
        return None
    if type(optimizer) not in (SGD, Adam) or type(loss) not in (nn.CrossEntropyLoss, nn.MSELoss):
        return None
    if loss.reduction not in ("mean", "sum"):
        return None
    if type(model) is nn.Linear:
        plan = [(model, None)]
    elif type(model) in (nn.Sequential, nn.MLP):
        plan = model._plan
    else:
        return None
    layers, offset, macs, width = [], 0, 0, None
    for layer, activation in plan:
        if type(layer) is not nn.Linear or activation not in (None, "relu", "sigmoid", "tanh"):
            return None
        if width is not None and layer.in_features != width:
            return None
        n_in, n_out = layer.in_features, layer.out_features
        bias_offset = offset + n_in * n_out if layer.bias is not None else -1
        layers.append((n_in, n_out, offset, bias_offset, activation))
        offset += n_in * n_out + (n_out if layer.bias is not None else 0)
        macs += 3 * batch_size * n_in * n_out
        width = n_out
    if macs > _fused_limit():
        return None
    from .kernels.numba_cpu.mlp_step import MLPStep

    (flat,), grad_views, (flat_grad,) = packed
    if flat.size != offset:
        return None
    if isinstance(optimizer, SGD):
        velocity = optimizer.state["velocity"][0] if optimizer.momentum else None
        opt = dict(optimizer="sgd", momentum=optimizer.momentum, nesterov=optimizer.nesterov,
                   weight_decay=optimizer.weight_decay)
        state = (velocity, None)
    else:
        opt = dict(optimizer="adam", betas=optimizer.betas, eps=optimizer.eps,
                   weight_decay=optimizer.weight_decay, decoupled=optimizer.decoupled)
        state = (optimizer.state["exp_avg"][0], optimizer.state["exp_avg_sq"][0])
    if isinstance(loss, nn.CrossEntropyLoss):
        loss_opts = dict(loss="cross_entropy", ignore_index=loss.ignore_index,
                         label_smoothing=loss.label_smoothing, weight=loss._weight(dtype))
    else:
        loss_opts = dict(loss="mse")
    step = MLPStep(layers, batch_size, dtype, flat, flat_grad, *state, reduction=loss.reduction,
                   **loss_opts, **opt)
    return _FusedStep(step, [layer for layer, _ in plan], grad_views, optimizer)


def _flush_preds(pending, preds, lo):
    """Argmax of the pending logits (consecutive batches from row ``lo``) into ``preds``;
    empties ``pending`` and returns the next row."""
    logits = _host(pending[0]) if len(pending) == 1 else np.concatenate([_host(p) for p in pending])
    hi = lo + logits.shape[0]
    logits.argmax(axis=1, out=preds[lo:hi])
    pending.clear()
    return hi


def _epoch_loss(losses, sizes, mean, rows):
    """Mean loss per row: batch means weighted by batch size, or summed losses / rows."""
    return float(losses @ sizes) / float(sizes.sum()) if mean else float(losses.sum()) / rows


def _accuracy(preds, labels, ignore):
    hit = preds == labels
    if ignore is not None:
        keep = labels != ignore
        counted = int(np.count_nonzero(keep))
        return int(np.count_nonzero(hit & keep)) / counted if counted else float("nan")
    return int(np.count_nonzero(hit)) / labels.shape[0]


def _parameter_shapes(config):
    """The parameter shapes a layer config describes, without building the layer."""
    if not isinstance(config, dict):
        raise ValueError(f"a layer config must be a JSON object, got {config!r}")
    if config.get("type") == "Sequential":
        layers = config.get("layers")
        if not isinstance(layers, list):
            raise ValueError("a Sequential config needs a 'layers' list")
        return [shape for c in layers for shape in _parameter_shapes(c)]
    if config.get("type") == "Linear":
        fan_in, fan_out = config.get("in_features"), config.get("out_features")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (fan_in, fan_out)):
            raise ValueError(f"a Linear config needs positive int sizes, got {config!r}")
        return [(fan_in, fan_out), (fan_out,)] if config.get("bias") else [(fan_in, fan_out)]
    return []


def _checksum(arrays):
    """SHA-256 over every entry's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _epoch_line(epoch, logs):
    parts = [f"epoch {epoch}"]
    for key, value in logs.items():
        if key == "samples_per_s":
            parts.append(f"{value:,.0f} samples/s")
        elif key != "lr":
            parts.append(f"{key} {value:.4f}")
    return "  ".join(parts)


def _bar(total, epoch, epochs, show):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}", unit="sample", leave=True,
                file=sys.stderr)
