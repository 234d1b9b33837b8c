"""Numba CPU backend: ``@njit(parallel=True, cache=True)`` kernels.

Each family module has private kernels (``_name``) that only compute, and launchers with
the contract's names that allocate outputs with NumPy (cheaper than ``np.empty`` inside
``@njit``) and call the kernels.  Where LLVM will not vectorise what we write in Python,
the loop is written in LLVM IR as a Numba intrinsic: the GEMM micro-kernels
(``gemm/microkernels.py``), a max reduction and a float32 exp (``_math``).  Every module docstring
says how its loops were checked to vectorise (``inspect_asm``).  The thread count is
``kernprop.set_num_threads`` (Numba's); no kernel calls BLAS.  ``kernprop.warmup``
compiles or loads every kernel a training run needs; speeds against NumPy and PyTorch
are in ``bench/SPEED_NOTES.md``.  Threads follow ``kernprop.threadpolicy`` (Numba's
``omp`` layer, sharing one libgomp pool with the Cython kernels), configured on import.
The machine code is cached per build and instruction-set row (``cache``), so an edit, an
upgrade or a ``KERNPROP_MAX_ISA`` cap never loads stale kernels.
"""

from kernprop.threadpolicy import configure as _configure

from . import cache as _cache

_configure(numba=True)
_cache.install()
