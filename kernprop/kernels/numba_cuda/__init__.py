"""Numba CUDA kernels (``from numba import cuda``), one module per op family.

Each module holds the ``_kernel`` functions (built per dtype by small cached factories,
because shared and local arrays need a compile-time dtype) and the launchers with the
contract's plain names (see ``kernprop.kernels``).  Launchers take NumPy arrays (copied
to the device and back) or device arrays (results stay on the device).  Runs on the
Numba CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1`` is set before Numba is imported.
"""

import numpy as _np

if not hasattr(_np, "row_stack"):
    # numba-cuda 0.30 registers a device overload of np.row_stack, an alias of vstack
    # that NumPy 2.5 removed; the lookup fails at the first kernel compile and takes
    # every kernel down with it.  Restore the alias until numba-cuda stops asking.
    _np.row_stack = _np.vstack
