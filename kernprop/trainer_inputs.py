"""What a ``Trainer`` is given, checked once before any kernel runs: its keywords, its
model's parameters, and the data of ``fit`` / ``evaluate`` / ``predict`` (array-likes
converted once, as scikit-learn takes them).  Every failure is a ValueError or TypeError
naming the argument, in the user's terms ("X has 10 features, the model expects 64")."""

from __future__ import annotations

import numpy as np

from . import nn
from ._validate import as_array, check_label_values, float_dtype_error

__all__ = ["FLOAT_DTYPES", "TRAINER_KEYWORDS", "KEYWORD_HINTS", "as_ndarray", "check_trainer_keywords",
           "check_features", "check_targets", "input_features", "output_features", "check_distinct_parameters",
           "is_sequence_model", "check_token_ids", "check_token_targets"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_ndarray(data, name):
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


TRAINER_KEYWORDS = ("model", "loss", "optimizer", "backend", "batch_size", "seed", "distributed", "engine",
                     "precision")
# Keywords other libraries' users reach for, and where they belong here.
KEYWORD_HINTS = {
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


def check_trainer_keywords(loss, kwargs):
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
    accepted = ", ".join(TRAINER_KEYWORDS)
    if loss_options:
        accepted += f"; for loss={loss!r}: " + ", ".join(loss_options)
    hint = f" ({KEYWORD_HINTS[key]})" if key in KEYWORD_HINTS else ""
    raise TypeError(f"Trainer got an unexpected keyword argument {key!r}{hint}; it accepts {accepted}")


def input_features(model):
    """The number of input features when the model's first layer says it (a kernprop
    ``Linear``, alone or first in a ``Sequential``), else None."""
    while isinstance(model, nn.Sequential) and len(model):
        model = model[0]
    return model.weight.shape[0] if isinstance(model, nn.Linear) else None


def output_features(model):
    """The model's number of outputs when its layers say it (built of kernprop's own
    layers only: the last ``Linear``'s ``out_features``, activations keep the width),
    else None (fit finds it by a forward pass)."""
    modules = list(model.modules())
    if not all(type(m) in (nn.Linear, nn.Sequential, nn.MLP, nn.ReLU, nn.Sigmoid, nn.Tanh) for m in modules):
        return None
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    return linears[-1].weight.shape[1] if linears else None


def check_distinct_parameters(params):
    """No two parameters share memory: each is updated in place from its own gradient,
    and a shared one would take several updates per step in a backend-dependent order."""
    for i, p in enumerate(params):
        for j in range(i + 1, len(params)):
            if isinstance(p, np.ndarray) and isinstance(params[j], np.ndarray) \
                    and np.may_share_memory(p, params[j]):
                raise ValueError(f"model parameters {i} and {j} share memory; give each layer its own arrays")


def check_features(X, name, model, dtype, probe_kernels):
    """``X`` as ``fit`` trains on it: converted once (``as_ndarray``), 2-D, non-empty, finite,
    of the model's input features, cast to ``dtype`` and C-contiguous; then one checked
    forward pass of its first row through ``probe_kernels`` (the public ops), so that a
    model that does not accept these features says so here.  Returns ``(X, outputs)``
    with the model's output width (None when the output is not 2-D)."""
    X = as_ndarray(X, name)
    if X.dtype not in FLOAT_DTYPES:
        raise float_dtype_error(name, X.dtype)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {X.shape}")
    expected = input_features(model)
    if expected is not None and X.shape[1] != expected:
        raise ValueError(f"{name} of shape {X.shape} does not fit the model: "
                         f"{name} has {X.shape[1]} features, the model expects {expected}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")
    X = np.ascontiguousarray(X, dtype=dtype)
    try:
        with nn.bind_kernels(model, probe_kernels):
            out = model.forward(X[:1])
    except (ValueError, TypeError) as exc:
        if expected is not None:
            # X has the features the model's first layer takes: the error is not X's
            # (a bad KERNPROP_GEMM_KERNEL, layers that do not chain): raised as it is
            raise
        raise ValueError(f"{name} of shape {X.shape} does not fit the model: {exc}") from None
    return X, out.shape[1] if out.ndim == 2 else None


def check_targets(y, n, num_outputs, name, x_name, loss, classification, dtype):
    """``y`` for ``n`` rows of ``x_name``: integer labels in ``[0, num_outputs)`` (or the
    loss's ``ignore_index``) as int64 for a classification loss, else float targets of
    shape (n, num_outputs) in ``dtype``; converted once, C-contiguous."""
    y = as_ndarray(y, name)
    if y.ndim == 0 or y.shape[0] != n:
        raise ValueError(
            f"{name} must have one entry per row of {x_name}: {x_name} has {n} rows, "
            f"{name} has shape {y.shape}"
        )
    if classification:
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer class labels for cross-entropy, got dtype {y.dtype}")
        if y.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one label per row), got shape {y.shape}")
        if num_outputs is None:
            raise ValueError(f"the model's output for {x_name} is not 2-D (rows, classes)")
        # the ops' check: values range-checked in their own dtype, then int64
        y = check_label_values(name, y, num_outputs, getattr(loss, "ignore_index", None))
        return np.ascontiguousarray(y)
    if y.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold numbers, got dtype {y.dtype}")
    if y.ndim == 1:
        y = y.reshape(n, 1)
    if y.shape != (n, num_outputs):
        raise ValueError(f"{name} must have shape ({n}, {num_outputs}) to match the model output, got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")
    return np.ascontiguousarray(y, dtype=dtype)


def is_sequence_model(model):
    """Whether ``model`` trains on (N, T) token ids (``nn.GPT``: ``sequence_model = True``)."""
    return bool(getattr(model, "sequence_model", False))


def check_token_ids(X, name, model):
    """``X`` (N, T) integer token ids for a sequence model: 1 <= T <= its block size,
    each id in [0, vocab_size); as int64, C-contiguous.  Returns ``(X, vocab_size)``."""
    X = as_ndarray(X, name)
    if X.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer token ids for a {type(model).__name__}, got dtype {X.dtype}")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (sequences, positions) of token ids, "
                         f"got shape {X.shape}")
    if X.shape[1] > model.block_size:
        raise ValueError(f"{name} has sequences of {X.shape[1]} tokens, more than the model's "
                         f"block_size {model.block_size}")
    X = check_label_values(name, X, model.vocab_size, None)
    return np.ascontiguousarray(X), model.vocab_size


def check_token_targets(y, X, name, x_name, vocab_size, loss):
    """``y`` of ``X``'s shape (N, T): next-token targets in [0, vocab_size) or the
    loss's ``ignore_index``; as int64, C-contiguous."""
    y = as_ndarray(y, name)
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer token ids (next-token targets), got dtype {y.dtype}")
    if y.shape != X.shape:
        raise ValueError(f"{name} must have the shape of {x_name} {X.shape} (one target per position), "
                         f"got {y.shape}")
    return np.ascontiguousarray(check_label_values(name, y, vocab_size, getattr(loss, "ignore_index", None)))
