"""The one ``njit`` configuration every Numba CPU kernel uses."""

from numba import njit

# fastmath lets LLVM reassociate sums (so reductions vectorise) and fuse multiply-adds;
# never the nnan/ninf flags: they would delete the -inf and NaN handling the tests check.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
# Without reassoc, for loops whose rounding order matters: (z - m) - log_s must not become
# z - (m + log_s) (one rounding of a large m + log_s), nor Cody-Waite's x - n*C1 - n*C2
# become x - n*(C1 + C2).  Fast-math flags are per instruction, so they survive LLVM
# inlining these functions into reassoc kernels; Numba-level inlining would not keep them.
PRECISE = {"contract", "nsz", "arcp"}
# NumPy's error model: a float division by zero gives inf/nan as in NumPy instead of a
# ZeroDivisionError check, whose branch stops LLVM vectorising any loop that divides.
ERROR_MODEL = "numpy"


def kernel(function):
    """A parallel, cached kernel (the thread count comes from numba.set_num_threads)."""
    return njit(parallel=True, cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)(function)


def helper(function):
    """A scalar helper inlined into kernels."""
    return njit(cache=True, fastmath=FASTMATH, inline="always", error_model=ERROR_MODEL)(function)


def precise(function):
    """A helper that keeps its own rounding order (no reassoc); LLVM inlines it."""
    return njit(cache=True, fastmath=PRECISE, error_model=ERROR_MODEL)(function)
