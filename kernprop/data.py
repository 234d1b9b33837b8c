"""Data sets for the trainer: scikit-learn's bundled digits, a user's ``.npz``, and text
for language models (``CharCorpus``, ``ByteCorpus``; ``python_docs_text``: the standard
library's docstrings, gathered at run time).

Nothing is downloaded: the 8x8 digits (1797 images, 10 classes) ship inside
scikit-learn (the ``sklearn`` extra; its file is read, scikit-learn itself not imported).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from ._validate import file_kind

__all__ = ["load_digits", "load_npz", "train_test_split", "CharCorpus", "ByteCorpus", "python_docs_text"]


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
    data = _digits_file()
    X = (data[:, :-1] / 16.0).astype(dtype)
    y = data[:, -1].astype(np.int64)
    return train_test_split(X, y, test_fraction, seed)


def _digits_file():
    """The digits as scikit-learn ships them (``sklearn/datasets/data/digits.csv.gz``: 64
    pixels then the label per row), read without importing scikit-learn, whose import
    (SciPy's statistics) takes 0.7 s on a quiet 2-core Zen 3 and 2.4 s on a busy one; the
    same float64 values its ``load_digits`` returns.  Through its loader when the file is
    not where scikit-learn keeps it."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None:  # an optional extra: `import kernprop` never needs it
        raise ModuleNotFoundError("the digits data set ships inside scikit-learn, which is not installed: "
                                  "pip install kernprop[sklearn]", name="sklearn")
    for folder in spec.submodule_search_locations or ():
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, "rt") as file:
                return np.loadtxt(file, delimiter=",", dtype=np.float64)
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    return np.column_stack([bunch.data, bunch.target])


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


# --- text for language models --------------------------------------------------------


class CharCorpus:
    """A text as integer tokens, one per character, for a character-level language model
    (nanoGPT's ``shakespeare_char``).

    ``vocabulary`` is the sorted distinct characters, ``encode(str) -> int64 ids``,
    ``decode(ids) -> str``.  The first ``1 - val_fraction`` of the tokens are ``train``,
    the rest ``val`` (a split in the text's order, so the two share no window).
    ``windows(split, block_size)`` gives every training window as ``(X, y)`` (N, T) with
    ``y`` the next token of each position, ready for ``Trainer.fit``; ``batch`` draws
    random windows, as nanoGPT's ``get_batch``.
    """

    def __init__(self, text, val_fraction=0.1):
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__} (ByteCorpus takes bytes)")
        self._init(text, sorted(set(text)), val_fraction)

    def _init(self, text, vocabulary, val_fraction):
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
                or not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        self.vocabulary = vocabulary
        self._index = {symbol: i for i, symbol in enumerate(vocabulary)}
        self.tokens = self.encode(text)
        if self.tokens.size < 2:
            raise ValueError(f"the text must hold at least 2 tokens, got {self.tokens.size}")
        cut = self.tokens.size - int(round(self.tokens.size * val_fraction))
        self.train, self.val = self.tokens[:cut], self.tokens[cut:]

    @property
    def vocab_size(self):
        """The number of distinct symbols (the GPT's ``vocab_size``)."""
        return len(self.vocabulary)

    def encode(self, text):
        """The ids (int64) of ``text``'s characters; a character outside the vocabulary
        is a ValueError naming it."""
        try:
            return np.fromiter((self._index[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as exc:
            raise ValueError(f"{exc.args[0]!r} is not in the corpus's vocabulary") from None

    def decode(self, ids):
        """The text of token ids (any integer sequence)."""
        return "".join(self.vocabulary[int(i)] for i in np.asarray(ids).reshape(-1))

    def _split(self, split):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return self.train if split == "train" else self.val

    def windows(self, split, block_size, stride=None):
        """Windows of ``block_size`` tokens of ``split`` every ``stride`` tokens (default:
        ``block_size``, not overlapping): ``(X, y)`` int64 (N, block_size), ``y`` shifted by one."""
        tokens = self._split(split)
        stride = block_size if stride is None else stride
        for name, value in (("block_size", block_size), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if tokens.size < block_size + 1:
            raise ValueError(f"the {split} split holds {tokens.size} tokens, fewer than block_size + 1 = "
                             f"{block_size + 1}")
        starts = np.arange(0, tokens.size - block_size, stride)
        index = starts[:, None] + np.arange(block_size)
        return tokens[index], tokens[index + 1]

    def batch(self, split, batch_size, block_size, rng=None):
        """``batch_size`` random windows of ``split``: ``(X, y)`` (batch_size, block_size)."""
        tokens = self._split(split)
        if tokens.size < block_size + 1:
            raise ValueError(f"the {split} split holds {tokens.size} tokens, fewer than block_size + 1")
        rng = np.random.default_rng(rng)
        starts = rng.integers(0, tokens.size - block_size, batch_size)
        index = starts[:, None] + np.arange(block_size)
        return tokens[index], tokens[index + 1]

    def unigram_entropy(self, split="train"):
        """The entropy (nats per token) of ``split``'s token frequencies: the loss of a
        model that knows only how often each token occurs."""
        counts = np.bincount(self._split(split), minlength=self.vocab_size)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())


class ByteCorpus(CharCorpus):
    """``CharCorpus`` over bytes: 256 tokens, any text or binary data (a ``str`` is
    encoded as UTF-8); ``decode`` returns a str (invalid UTF-8 replaced)."""

    def __init__(self, data, val_fraction=0.1):
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes or a str, got {type(data).__name__}")
        self._init(bytes(data), list(range(256)), val_fraction)

    def encode(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        return np.frombuffer(bytes(data), dtype=np.uint8).astype(np.int64)

    def decode(self, ids):
        return bytes(np.asarray(ids, dtype=np.int64).reshape(-1).astype(np.uint8)).decode("utf-8", "replace")


def python_docs_text(max_chars=1_000_000, min_length=200):
    """English text that ships with every Python: the docstrings (modules, classes,
    functions; each at least ``min_length`` characters) of the standard library's
    top-level modules, read from their sources in name order (nothing is imported or
    downloaded), up to ``max_chars`` characters.  Falls back to the docstrings of the
    built-in functions and types where the sources are absent (an embedded Python)."""
    import ast
    import glob
    import sysconfig

    parts, size = [], 0
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_length:
                    parts.append(doc)
                    size += len(doc) + 2
        if size >= max_chars:
            break
    if size < 10_000:
        import builtins

        parts += [getattr(builtins, name).__doc__ or "" for name in sorted(dir(builtins))]
    return "\n\n".join(parts)[:max_chars]
