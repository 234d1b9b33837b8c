"""The one ``njit`` configuration every Numba CPU kernel uses."""

import types

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


# Inputs of at most this many elements run a kernel's ``serial`` twin: a parallel launch
# costs ~2 us here (a 2048-element relu: 2.4 us parallel, 0.4 us serial), and the
# blocked kernels (activations, MSE, optimizers: 16384 elements a block) have a single
# task at this size anyway.
SERIAL_ELEMENTS = 16384


def kernel(function):
    """A parallel, cached kernel (the thread count comes from numba.set_num_threads).

    Its ``serial`` attribute is the same code compiled without threads (``prange`` runs
    as ``range``), for small inputs: see ``sized``.  The twin is compiled from a copy of
    the function under another name, since Numba's cache files are named after the
    function and would otherwise mix the two builds."""
    parallel = njit(parallel=True, cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)(function)
    twin = types.FunctionType(function.__code__, function.__globals__, function.__name__ + "_serial",
                              function.__defaults__, function.__closure__)
    twin.__qualname__ = function.__qualname__ + "_serial"
    parallel.serial = njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)(twin)
    return parallel


def sized(compiled_kernel, elements):
    """``compiled_kernel`` (made by ``kernel``), or its serial twin for an input of at
    most SERIAL_ELEMENTS elements.  By size alone, never by thread count: the two builds
    may vectorise a reduction differently, and results must not depend on the threads."""
    return compiled_kernel.serial if elements <= SERIAL_ELEMENTS else compiled_kernel


def helper(function):
    """A scalar helper inlined into kernels."""
    return njit(cache=True, fastmath=FASTMATH, inline="always", error_model=ERROR_MODEL)(function)


def precise(function):
    """A helper that keeps its own rounding order (no reassoc); LLVM inlines it."""
    return njit(cache=True, fastmath=PRECISE, error_model=ERROR_MODEL)(function)
