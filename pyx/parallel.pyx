"""OpenMP thread control shared by every Cython kernel module.

The package exposes one thread setting (``kernprop.set_num_threads``); it calls
``set_num_threads`` here so the OpenMP runtime used by the ``cython`` backend follows
the same count as Numba's threading layer.
"""

# _OPENMP is defined by the C compiler exactly when it compiles with -fopenmp, so the
# module tells the truth about how it was built, whatever setup.py believed
# (pyx/kp_common.h).
cdef extern from "kp_common.h":
    int kp_openmp_enabled()
    void kp_set_num_threads(int n)
    int kp_max_threads()


include "_grain.pxi"


def parallel_min_work():
    """Inputs of at most this many elements run a kernel without OpenMP threads."""
    return PARALLEL_MIN_WORK


def openmp_enabled():
    """True when the extensions were compiled with OpenMP."""
    return bool(kp_openmp_enabled())


def set_num_threads(int n):
    """Set the number of OpenMP threads the Cython kernels use."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    kp_set_num_threads(n)


def get_num_threads():
    """The number of OpenMP threads a parallel region will use."""
    return kp_max_threads()
