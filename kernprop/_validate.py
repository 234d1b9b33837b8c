"""Input checks shared by the public ops: each failure names the argument, what it got
and what was expected, and is raised before any kernel runs."""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
REDUCTIONS = ("mean", "sum", "none")
ACTIVATIONS = (None, "relu", "sigmoid", "tanh")


def is_device_array(x) -> bool:
    """A CUDA device array: anything with ``__cuda_array_interface__`` (CuPy, PyTorch,
    Numba), or a Numba device array of the CUDA simulator, which lacks the interface."""
    if isinstance(x, np.ndarray):
        return False
    return hasattr(x, "__cuda_array_interface__") or bool(getattr(x, "__cuda_ndarray__", False))


def shape_and_dtype(x):
    """(shape, dtype) of a NumPy array or of a CUDA device array, without copying."""
    if isinstance(x, np.ndarray):
        return x.shape, x.dtype
    if not hasattr(x, "__cuda_array_interface__"):  # the simulator's device array
        return tuple(x.shape), np.dtype(x.dtype)
    interface = x.__cuda_array_interface__
    return tuple(interface["shape"]), np.dtype(interface["typestr"])


def check_array(name, x, ndim=None, backend="numpy"):
    """Check that ``x`` is a float32/float64 array (of ``ndim`` dims) with no empty axis."""
    if is_device_array(x):
        if backend != "cuda":
            raise TypeError(
                f"{name} is a CUDA device array but the backend is {backend!r}; "
                "use backend='cuda' or copy it to the host first"
            )
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    shape, dtype = shape_and_dtype(x)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {dtype}")
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {shape}")
    if 0 in shape:
        raise ValueError(f"{name} must not be empty, got shape {shape}")
    if len(shape) == 0:
        raise ValueError(f"{name} must have at least one dimension, got a 0-d array")
    return shape, dtype


def check_same_dtype(**arrays):
    """All named arrays share one float dtype: mixing is an error, never a silent cast."""
    dtypes = {name: shape_and_dtype(x)[1] for name, x in arrays.items() if x is not None}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} is {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"arrays must share one dtype, got {listed}")


def check_shape(name, shape, expected, what):
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {tuple(shape)}")


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_labels(labels, num_rows, num_classes, ignore_index):
    """Labels: 1-D integers, one per row, each in [0, C) or equal to ignore_index.

    Returns them as a host int64 array (the form every backend takes).
    """
    if is_device_array(labels):
        # Checking needs the values: labels are small, so they come to the host.
        if hasattr(labels, "copy_to_host"):
            labels = labels.copy_to_host()
        else:
            from numba import cuda

            labels = cuda.as_cuda_array(labels).copy_to_host()
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy.ndarray of integers, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape != (num_rows,):
        raise ValueError(f"labels must have shape ({num_rows},) (one per row), got {labels.shape}")
    if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    labels = labels.astype(np.int64, copy=False)
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"labels[{row}] = {labels[row]} is out of range: labels must be in "
            f"[0, {num_classes}) or equal ignore_index={ignore_index}"
        )
    return labels


def check_scalar(name, value, low=None, high=None, low_open=False, high_open=False):
    """A finite real number, optionally within bounds; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        bound = f"< {high}" if high_open else f"<= {high}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value
