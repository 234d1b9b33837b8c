"""Where an array lives: ``host`` brings a result that may be on the GPU back as a NumPy
array, ``to_device`` puts a NumPy array on the GPU (the ``cuda`` backend's
``numba.cuda``, imported only when called).  The trainer, the layer-by-layer engines
and the device engine all move values with these two."""

from __future__ import annotations


def host(x):
    """A NumPy value of a result that may live on the GPU (one copy when it does)."""
    return x.copy_to_host() if hasattr(x, "copy_to_host") else x


def to_device(x):
    """A device copy of the NumPy array ``x``."""
    from numba import cuda

    return cuda.to_device(x)
