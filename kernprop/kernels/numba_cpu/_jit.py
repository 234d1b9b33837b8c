"""The one ``njit`` configuration every Numba CPU kernel uses."""

from numba import njit

# fastmath lets LLVM reassociate sums (so reductions vectorise) and fuse multiply-adds;
# never the nnan/ninf flags: they would delete the -inf and NaN handling the tests check.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


def kernel(function):
    """A parallel, cached kernel (the thread count comes from numba.set_num_threads)."""
    return njit(parallel=True, cache=True, fastmath=FASTMATH)(function)


def helper(function):
    """A scalar helper inlined into kernels."""
    return njit(cache=True, fastmath=FASTMATH, inline="always")(function)
