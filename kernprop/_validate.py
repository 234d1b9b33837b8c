"""Input checks shared by the public ops: each failure names the argument, what it got
and what was expected, and is raised before any kernel runs."""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
REDUCTIONS = ("mean", "sum", "none")
ACTIVATIONS = (None, "relu", "sigmoid", "tanh")

# The kernels take integers (labels, ignore_index, step counts) as int64: a Python int
# outside this range would raise OverflowError inside a kernel, or wrap around.
INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


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


# DLPack device types (dlpack.h, DLDeviceType) an array can be read from.
_DLPACK_HOST = (1, 3)  # kDLCPU, kDLCUDAHost (pinned host memory)
_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


def as_array(name, x, backend="numpy"):
    """``x`` as the ops take it: a DLPack object (``__dlpack__``: a CPU PyTorch tensor, a
    JAX array, ...) becomes a NumPy view of the same memory (``np.from_dlpack``, never a
    copy, any strides); on the ``cuda`` backend a device-side one becomes a CuPy (or
    PyTorch) array, which the kernels read through ``__cuda_array_interface__``.
    Anything else is returned as it is, for ``check_array`` to judge.  Called by the ops
    before their checks; the results the ops return are NumPy arrays (device arrays on
    ``cuda``), whatever came in."""
    if isinstance(x, np.ndarray) or not hasattr(x, "__dlpack__") or is_device_array(x):
        return x
    try:
        device = int(x.__dlpack_device__()[0]) if hasattr(x, "__dlpack_device__") else 1
        if device in _DLPACK_HOST:
            return np.from_dlpack(x)
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        raise TypeError(f"{name} ({type(x).__name__}) cannot be read through DLPack: {exc}") from None
    if device not in _DLPACK_CUDA:
        raise TypeError(f"{name} ({type(x).__name__}) lives on DLPack device type {device}, "
                        "which kernprop cannot read; copy it to the host first")
    if backend != "cuda":
        raise TypeError(f"{name} ({type(x).__name__}) is on a CUDA device but the backend is {backend!r}; "
                        "use backend='cuda' or copy it to the host first")
    for library in ("cupy", "torch"):
        try:
            module = __import__(library)
        except ImportError:
            continue
        return module.from_dlpack(x)
    raise TypeError(f"{name} ({type(x).__name__}) is a CUDA DLPack array without __cuda_array_interface__; "
                    "reading it needs CuPy or PyTorch installed")


def float_dtype_error(name, dtype):
    """The TypeError for an array whose dtype is not float32/float64, with the fix."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and not dtype.isnative:
        return TypeError(
            f"{name} has dtype {dtype.str}, {dtype.name} in the other byte order (big-endian); "
            f"convert it with {name}.astype({name}.dtype.newbyteorder('='))"
        )
    return TypeError(f"{name} must have dtype float32 or float64, got {dtype}")


def check_array(name, x, ndim=None, backend="numpy"):
    """Check that ``x`` is a float32/float64 array (of ``ndim`` dims) with no empty axis."""
    if is_device_array(x):
        if backend != "cuda":
            raise TypeError(
                f"{name} is a CUDA device array but the backend is {backend!r}; "
                "use backend='cuda' or copy it to the host first"
            )
    elif not isinstance(x, np.ndarray):
        hint = (f"; call np.asarray({name}, dtype=np.float32) first (ops never convert a "
                f"{type(x).__name__}: the copy would be hidden)") if isinstance(x, (list, tuple)) else ""
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}{hint}")
    shape, dtype = shape_and_dtype(x)
    if dtype not in FLOAT_DTYPES:
        raise float_dtype_error(name, dtype)
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
    # a str (or None) equal to a choice: `value in choices` would compare an array
    # elementwise (np.array(["relu"]) == "relu" is truthy) and pass it on to a kernel
    if not (value is None or isinstance(value, str)) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_int(name, value, low=INT64_MIN, high=INT64_MAX):
    """An integer (Python or NumPy, not bool) within ``[low, high]``, both within int64
    (the kernels' type); returns it as a Python int.  TypeError for a non-integer,
    ValueError naming ``name`` for one out of range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    low, high = max(low, INT64_MIN), min(high, INT64_MAX)
    if not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value}")
    return value


def check_label_values(name, labels, num_classes, ignore_index):
    """Host integer ``labels`` of any shape: each in [0, num_classes) or equal to
    ``ignore_index`` (None: no label is ignored).  Values are checked in their own
    dtype before the conversion to int64, so a uint64 label above 2**63 cannot wrap to
    a negative (ignored) one.  Returns them as int64 (no copy when they already are)."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of integers, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    ignore_index = None if ignore_index is None else check_int("ignore_index", ignore_index)
    allowed = f"[0, {num_classes})" + ("" if ignore_index is None else f" or equal ignore_index={ignore_index}")
    if labels.dtype.kind == "u" and labels.dtype.itemsize == 8 and labels.size:
        too_big = labels > INT64_MAX
        if too_big.any():
            row = np.unravel_index(int(np.argmax(too_big)), labels.shape)
            index = ", ".join(map(str, row))
            raise ValueError(f"{name}[{index}] = {labels[row]} is out of range: {name} must be in {allowed}")
    labels = labels.astype(np.int64, copy=False)
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bad.any():
        row = np.unravel_index(int(np.argmax(bad)), labels.shape)
        index = ", ".join(map(str, row))
        raise ValueError(f"{name}[{index}] = {labels[row]} is out of range: {name} must be in {allowed}")
    return labels


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
        hint = "; call np.asarray(labels) first" if isinstance(labels, (list, tuple)) else ""
        raise TypeError(f"labels must be a numpy.ndarray of integers, got {type(labels).__name__}{hint}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape != (num_rows,):
        raise ValueError(f"labels must have shape ({num_rows},) (one per row), got {labels.shape}")
    return check_label_values("labels", labels, num_classes, ignore_index)


def check_no_alias(**arrays):
    """No two of the named arrays share memory: an in-place update reading one while
    writing another would depend on each backend's order of loads and stores.  Device
    arrays and None are skipped.  ValueError naming the pair."""
    named = [(n, a) for n, a in arrays.items() if isinstance(a, np.ndarray)]
    for i, (first, a) in enumerate(named):
        for second, b in named[i + 1:]:
            # may_share_memory compares address ranges (cheap); exact for the
            # C-contiguous arrays the optimizer steps take.
            if np.may_share_memory(a, b):
                raise ValueError(
                    f"{first} and {second} share memory; pass separate arrays "
                    "(they are read and updated in place)"
                )


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


def file_kind(path):
    """What ``path`` names, for messages: "a regular file", "a directory", "a FIFO
    (named pipe)", "a character device", "a block device", "a socket", or None when
    nothing is there (symlinks followed)."""
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"
