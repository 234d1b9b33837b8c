"""The ``cython`` backend: thin Python loaders over the extensions built from ``pyx/``.

Each family module here has the contract's function names (see ``kernprop.kernels``):
it allocates the outputs with NumPy, makes inputs C-contiguous where a kernel needs it
(never writing into a caller's array) and calls the compiled ``nogil`` kernels of
``kernprop._cy.<family>``, which run their ``prange`` loops on OpenMP threads.

On import the OpenMP thread count is set to Numba's, so both CPU backends start with
one count; ``kernprop.set_num_threads`` keeps them in step afterwards.
"""

from kernprop.threadpolicy import configure as _configure

_configure(numba=True)  # before libgomp loads, and before Numba starts its threads

import numba  # noqa: E402

from kernprop._cy import parallel as _parallel  # noqa: E402

_parallel.set_num_threads(numba.get_num_threads())

openmp_enabled = _parallel.openmp_enabled
