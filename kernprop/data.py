"""Data sets for the trainer: scikit-learn's bundled digits and a user's ``.npz``.

Nothing is downloaded: the 8x8 digits (1797 images, 10 classes) ship inside
scikit-learn (the ``sklearn`` extra, imported only when the digits are loaded).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from ._validate import file_kind

__all__ = ["load_digits", "load_npz", "train_test_split"]


def train_test_split(X, y, test_fraction=0.2, seed=0):
    """Split rows into ``(X_train, y_train), (X_test, y_test)`` by a seeded permutation,
    stratified by class when ``y`` holds integer labels (each class split in the same
    proportion), so the split is fixed for a seed and balanced."""
    for name, array in (("X", X), ("y", y)):
        if not isinstance(array, np.ndarray) or array.ndim == 0:
            raise TypeError(f"{name} must be a numpy.ndarray with rows, got {type(array).__name__}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y must have one entry per row of X ({X.shape[0]}), got shape {y.shape}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.integer, np.floating)):
        raise TypeError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    if y.ndim == 1 and y.dtype.kind in "iu":
        test = []
        for label in np.unique(y):
            rows = np.flatnonzero(y == label)
            rows = rows[rng.permutation(rows.size)]
            test.append(rows[: int(round(rows.size * test_fraction))])
        test = np.sort(np.concatenate(test))
    else:
        test = np.sort(rng.permutation(n)[: int(round(n * test_fraction))])
    if test.size == 0 or test.size == n:
        raise ValueError(f"cannot split {n} rows with test_fraction={test_fraction}")
    mask = np.zeros(n, dtype=bool)
    mask[test] = True
    return (X[~mask], y[~mask]), (X[mask], y[mask])


def load_digits(test_fraction=0.2, seed=0, dtype=np.float32):
    """The 8x8 digits of scikit-learn, pixels scaled from 0..16 to [0, 1].

    Returns ``(X_train, y_train), (X_test, y_test)``: X (N, 64) of ``dtype``, y (N,)
    int64 labels 0..9; a stratified split, fixed by ``seed`` (default 80/20).
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError:  # an optional extra: `import kernprop` never needs it
        raise ModuleNotFoundError("the digits data set ships inside scikit-learn, which is not installed: "
                                  "pip install kernprop[sklearn]", name="sklearn") from None

    bunch = _sk_load_digits()
    X = (bunch.data / 16.0).astype(dtype)
    y = bunch.target.astype(np.int64)
    return train_test_split(X, y, test_fraction, seed)


def load_npz(path):
    """Arrays ``X`` (N, F) and ``y`` (N,) from a ``.npz`` file (no pickle allowed).

    X is returned as float32 (float64 kept), y as int64 when it holds integers.
    Raises FileNotFoundError or ValueError naming the file and what is wrong.
    """
    path = os.fspath(path)
    kind = file_kind(path)
    if kind is None:
        raise FileNotFoundError(f"data file {path!r} does not exist")
    if kind != "a regular file":
        raise ValueError(f"data file {path!r} is {kind}, not a .npz file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not named arrays X and y (save with np.savez(path, X=..., y=...))")
        with z:
            missing = [name for name in ("X", "y") if name not in z.files]
            if missing:
                raise ValueError(f"it has no array {' or '.join(map(repr, missing))} (found: {', '.join(z.files) or 'none'})")
            X, y = z["X"], z["y"]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{path!r} is not a readable .npz file: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path!r}: {exc}") from None
    if X.ndim != 2 or 0 in X.shape:
        raise ValueError(f"{path!r}: X must be a non-empty 2-D array (samples, features), got shape {X.shape}")
    if X.dtype.kind not in "fiub":
        raise ValueError(f"{path!r}: X must hold numbers, got dtype {X.dtype}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"{path!r}: y must be 1-D with one entry per row of X ({X.shape[0]}), got shape {y.shape}")
    # Integer labels become int64 only when they fit: a uint64 above 2**63, or a float
    # beyond 2**53 (not every integer there is a float), would change value silently.
    if y.dtype.kind == "u" and y.size and y.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{path!r}: y[{int(np.argmax(y))}] = {y.max()} does not fit in int64")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)) \
            and np.all(np.abs(y) <= 2.0**53):
        y = y.astype(np.int64)
    elif y.dtype.kind in "iub":
        y = y.astype(np.int64)
    X = X.astype(np.float64 if X.dtype == np.float64 else np.float32)
    return X, y
