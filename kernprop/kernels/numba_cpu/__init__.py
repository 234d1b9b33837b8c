"""Numba CPU backend: ``@njit(parallel=True, cache=True)`` kernels, parallel over rows.

Each family module has a private kernel (``_name``) that only computes, and a launcher
with the contract's name that allocates outputs with NumPy (cheaper than ``np.empty``
inside ``@njit``), makes inputs contiguous, and calls the kernel.
"""
