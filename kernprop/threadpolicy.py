"""How kernprop's CPU backends use threads, and how they share the machine.

The policy, chosen by measurement (``bench/shared_machine.py``, ``bench/SHARED_MACHINE.md``):

- **One OpenMP runtime.**  Numba runs its ``omp`` threading layer and the Cython kernels
  are built with ``-fopenmp``: both use the system's libgomp, so a process that calls
  both backends has one pool of worker threads, not two pools spinning against each
  other.  (Numba would pick TBB when it can load it: a second runtime beside the Cython
  one.)  Set ``NUMBA_THREADING_LAYER`` to choose another layer yourself.
- **Bounded spinning.**  An idle libgomp worker spins before it sleeps, so that the next
  parallel region starts without a wake-up.  libgomp's default (300,000 pauses, about
  7 ms on a Zen 5, longer where a pause takes longer) keeps a core busy long after a
  kernel returns: NumPy's OpenBLAS threads, PyTorch's pool or another process then wait
  for it.  kernprop sets ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` (~0.25 ms), which covers
  the gap between the regions of one op, between the ops of a training step and the
  time to wake a sleeping thread, and little more.  Only where kernprop owns the decision: not when ``GOMP_SPINCOUNT`` or
  ``OMP_WAIT_POLICY`` is set, nor when another library loaded libgomp first; the
  variable is set only while kernprop loads libgomp, so child processes do not inherit it.
- **One level of OpenMP.**  Numba's ``omp`` layer turns libgomp's nesting on when it
  starts; kernprop turns it off again (:func:`_openmp_single_level`), or PyTorch's and
  MKL's teams nest inside each other in the same process (a GPT step in PyTorch on
  2 threads ran 27x slower).  ``OMP_MAX_ACTIVE_LEVELS``/``OMP_NESTED`` win when set.
- **Serial below a size.**  Small inputs run without threads (the Numba kernels'
  ``SERIAL_ELEMENTS``, the Cython kernels' ``PARALLEL_MIN_WORK``): a fork/join costs
  microseconds, and a parallel region waits for its slowest thread, which on a busy
  core is a whole scheduler time slice.
- **Busy cores: one thread while the cores are taken.**  A parallel region waits for its
  slowest thread; when another process (or another pool's spinning thread) holds a
  core, the worker gets it back only after a scheduler time slice, and two threads run
  slower than one.  Every numba and cython kernel call is judged by the time its
  calling thread spent off a core (``time.thread_time``, a few hundred ns): after
  :data:`VERDICTS` calls in a row off a core for more than ``1 - BUSY_SHARE`` of their
  time, the next calls run on one thread, for 20 ms, doubling while the cores stay busy
  (up to 0.5 s); then a few calls wake the workers and the full count is judged again.
  On a quiet machine the calling thread works or spins through the whole call, so the
  judgement costs nothing else.  Every kernel gives the same bits at 1 and 2 threads, so
  the guard never changes a result.
  ``KERNPROP_BUSY_GUARD=0`` turns the guard off (every call at the full count).
- **NumPy's BLAS is not kernprop's.**  OpenBLAS's idle threads spin for about 2**28
  cycles (~0.1 s) after each call; a kernprop op right after a NumPy product then runs
  on one core.  ``OPENBLAS_THREAD_TIMEOUT`` (set before NumPy is imported) shortens
  that; :func:`blas_threads` limits NumPy's BLAS threads inside a block.  kernprop never
  changes them by itself, and the trainer never calls NumPy's BLAS inside a step.
- **Forked children: one thread, same results.**  libgomp is not fork-safe: a child
  forked after the parent started OpenMP workers inherits a pool whose threads do not
  exist in it.  A Cython kernel in the child deadlocks waiting for them, and Numba's
  ``omp`` layer kills the child (``Terminating: fork() called from a process already
  using GNU OpenMP``, SIGTERM; its check compares the parent's pid, whatever the thread
  count).  A fork handler (:func:`_after_fork_in_child`) puts the child on one thread for
  good; see its docstring for the measurements behind it.  Spawn and forkserver
  children start their own runtime and keep the full count.

:func:`policy` says what is in force; ``kernprop info`` prints it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import sys
import threading
from dataclasses import dataclass
from time import perf_counter, thread_time

__all__ = ["SPIN_COUNT", "BUSY_SHARE", "OFF_CORE_S", "JUDGED_CALL_S", "VERDICTS", "WAKING_CALLS",
           "ThreadPolicy", "configure", "policy", "blas_threads", "openmp_runtimes", "guarded_family",
           "busy_state", "threads_set", "forked_child", "threads_allowed"]

# libgomp spins this many pause instructions before an idle worker sleeps: about 0.23 ms
# on a Zen 5 (23 ns per pause).  It must outlast waking a sleeping thread (80-150 µs in
# this VM): at 3,000 (70 µs) a worker fell asleep between back-to-back calls and every
# 6 µs relu waited 150 µs for it, call after call (bench/SHARED_MACHINE.md).
SPIN_COUNT = 10000

_lock = threading.Lock()
_state: dict[str, str] = {}


def _libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return any(re.search(r"/libgomp\.so", line) for line in maps)
    except OSError:  # not Linux: no libgomp to configure
        return False


def _configure_openmp_wait() -> str:
    env = os.environ
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        if name in env:
            return f"{name}={env[name]} (set by the user)"
    if _libgomp_loaded():
        return "libgomp's default (another library loaded libgomp before kernprop)"
    # libgomp reads its environment once, when it is loaded: load it now, with the
    # variable set only for that moment.
    env["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    try:
        ctypes.CDLL("libgomp.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return "no libgomp (the kernels run without OpenMP)"
    finally:
        del env["GOMP_SPINCOUNT"]
    return f"GOMP_SPINCOUNT={SPIN_COUNT} (set by kernprop: idle workers sleep after ~0.25 ms)"


def _configure_numba_layer() -> str:
    from numba.core import config
    from numba.np.ufunc import parallel

    if parallel._is_initialized:  # another caller started Numba's threads first
        return "started before kernprop configured it"
    _keep_openmp_single_level(parallel)
    requested = os.environ.get("NUMBA_THREADING_LAYER")
    if requested:
        return f"NUMBA_THREADING_LAYER={requested} (set by the user)"
    try:
        from numba.np.ufunc import omppool  # noqa: F401 - loads libgomp: the wait is set first
    except ImportError as exc:
        return f"Numba's default order (no omp layer here: {exc})"
    config.THREADING_LAYER = "omp"
    return "omp chosen by kernprop: the Cython kernels' runtime"


def _openmp_single_level() -> None:
    """Undo the nesting Numba's ``omp`` layer turns on when it starts (``omp_set_nested``,
    for parallel kernels called inside parallel kernels, which kernprop does not do).

    libgomp's nesting level is one setting for the whole process.  With nesting on, every
    other OpenMP library here starts a team inside each of its own teams: PyTorch's
    attention, whose parallel loop calls MKL's threaded products, ran a GPT training step
    on 2 threads at 435 tokens/s against 11,800 with nesting off (2-core Zen 3; the
    ``omp`` layer started before ``import torch``).  kernprop's kernels never nest, so
    one level changes nothing of theirs.  ``OMP_MAX_ACTIVE_LEVELS`` or ``OMP_NESTED`` set
    by the user is the user's choice: left as Numba made it.
    """
    if "OMP_MAX_ACTIVE_LEVELS" in os.environ or "OMP_NESTED" in os.environ:
        return
    try:
        ctypes.CDLL("libgomp.so.1").omp_set_max_active_levels(1)
    except (OSError, AttributeError):  # no libgomp: nothing nests
        pass


def _keep_openmp_single_level(parallel) -> None:
    """Wrap Numba's thread start (every path that starts its layer calls the module's
    ``_launch_threads``: the first parallel kernel, a cache load, ``set_num_threads``) so
    that the ``omp`` layer's nesting is turned off right after it starts."""
    launch = parallel._launch_threads

    @functools.wraps(launch)
    def launch_one_level():
        started = parallel._is_initialized
        launch()
        if not started and parallel._threading_layer == "omp":
            _openmp_single_level()

    parallel._launch_threads = launch_one_level


def configure(numba: bool = False) -> None:
    """Apply the parts of the policy kernprop owns, once per process: the OpenMP wait
    (before libgomp is loaded) and, with ``numba=True``, Numba's threading layer (before
    Numba starts its threads).  The backends call it before they load their kernels."""
    with _lock:
        if "wait" not in _state:
            _state["wait"] = _configure_openmp_wait()
        if numba and "numba_layer" not in _state:
            _state["numba_layer"] = _configure_numba_layer()


def openmp_runtimes() -> list[str]:
    """The OpenMP runtimes loaded in this process (file names), from threadpoolctl."""
    from threadpoolctl import threadpool_info

    return sorted({os.path.basename(pool["filepath"]) for pool in threadpool_info() if pool["user_api"] == "openmp"})


# A call found the cores busy when its calling thread was off a core for more than
# OFF_CORE_S and for more than (1 - BUSY_SHARE) of its wall time.  Quiet, the calling
# thread works or spins through a call (share 0.95-1.0 at 2 threads on a Zen 5); with one
# core taken by another process, 0.2-0.5.  In this VM the host also lends an idle virtual
# CPU to other tenants: a worker then arrives ~0.5 ms late, call after call, until the
# host gives it back (a 6 µs relu took 500 µs, 250 µs of them off the core), and the
# guard answers that too (bench/SHARED_MACHINE.md).  The floor is above what waking a
# sleeping worker costs when its CPU is ours (80-100 µs off the core here).
BUSY_SHARE = 0.7
OFF_CORE_S = 150e-6
# Calls shorter than this are not judged (the CPU clock costs ~0.4 µs a read): a call
# after a short one of the same function reads it only once that call took longer.
JUDGED_CALL_S = 50e-6
# VERDICTS busy calls in a row open a one-thread window; after it, WAKING_CALLS calls at
# the full count wake the workers (and their virtual CPUs) before the next verdict.
VERDICTS, WAKING_CALLS = 4, 16
_SERIAL_FIRST_S, _SERIAL_MAX_S = 0.02, 0.5


class _Busy:
    """Process-wide: until when calls run on one thread, and how many judgements in a
    row found the cores busy.  Races between Python threads only blur the timing."""

    threads = 0  # the count set through kernprop (0: not read from Numba yet)
    one_thread_until = 0.0
    strikes = 0
    serial_calls = 0
    verdicts = 0  # judged calls in a row that found the cores busy
    waking = 0  # calls left that wake the workers after one-thread calls (not judged)


def busy_state() -> dict:
    """The busy-core guard's state: ``{"one_thread_for_s": seconds left (0: full count),
    "strikes": one-thread windows in a row, "serial_calls": calls it ran on one thread}``."""
    return {"one_thread_for_s": max(0.0, _Busy.one_thread_until - perf_counter()),
            "strikes": _Busy.strikes, "serial_calls": _Busy.serial_calls}


def threads_set(n: int) -> None:
    """Record the thread count kernprop.set_num_threads set (and clear the guard)."""
    _Busy.threads, _Busy.one_thread_until, _Busy.strikes, _Busy.verdicts, _Busy.waking = n, 0.0, 0, 0, 0


# Set in a child forked after this process's OpenMP threads started: why it runs one thread.
_forked_reason = ""


def forked_child() -> str:
    """Why this process runs its kernels on one thread for good: it was forked after its
    parent had started OpenMP threads (see :func:`_after_fork_in_child`); "" otherwise."""
    return _forked_reason


def threads_allowed(n: int) -> int:
    """The thread count kernprop.set_num_threads can give the kernels here: ``n``, or 1
    in a forked child (its inherited OpenMP pool has no threads behind it)."""
    return 1 if _forked_reason else n


def _after_fork_in_child() -> None:
    """Put a forked child on one thread for good, if its parent had started OpenMP.

    What a child forked after a parallel kernel meets (2 threads, AMD EPYC, Numba 0.68,
    libgomp; products and elementwise ops above the serial sizes, ``tests/test_fork.py``):

    - nothing done: numba's first parallel kernel kills the child (Numba's ``omp`` layer
      raises SIGTERM when its parent's pid is the one that started the layer), the
      cython kernels wait forever for the parent's workers;
    - ``numba.set_num_threads(1)`` and every kernel's serial twin (``_jit.sized``): still
      killed (the fused linear + cross-entropy calls its parallel row kernel directly,
      and a Python thread started in the child has the default count): switching every
      call site is a list that will miss one;
    - what this does: the numba layer's ``launch_threads(1)`` again, which records this
      process as the one that started it (so its fork check passes) and makes 1 the
      count of every thread here, then one thread for numba and for OpenMP in the
      forking thread.  A parallel region of one thread never touches libgomp's pool (it
      runs on the calling thread), so the same compiled kernels run and give the
      parent's bits; every op, a product of 2 GFLOP and ``Trainer.fit`` on each backend
      matched the parent's results exactly, in the forking thread and in a new thread.

    A Python thread started in the child that calls a cython kernel gets a new pool of
    its own from libgomp (pools belong to the thread that starts a region).  Nothing is
    done when the parent had started neither backend's threads; the handler runs again
    in a grandchild.  It must not raise (fork handlers' errors are only printed), so a
    failure is kept as the reason shown by ``kernprop info``.
    """
    global _forked_reason
    numba_parallel = sys.modules.get("numba.np.ufunc.parallel")
    numba_started = bool(numba_parallel is not None and numba_parallel._is_initialized)
    cython_parallel = sys.modules.get("kernprop._cy.parallel")
    if not numba_started and cython_parallel is None:
        return
    _Busy.threads, _Busy.one_thread_until, _Busy.strikes, _Busy.verdicts, _Busy.waking = 1, 0.0, 0, 0, 0
    reason = f"1, for good: forked from pid {os.getppid()} after its OpenMP threads started (they do not exist here)"
    try:
        if numba_started:
            if numba_parallel._threading_layer == "omp":
                from numba.np.ufunc import omppool

                ctypes.CFUNCTYPE(None, ctypes.c_int)(omppool.launch_threads)(1)
                _openmp_single_level()
            numba_parallel.set_num_threads(1)
        if cython_parallel is not None:
            cython_parallel.set_num_threads(1)
    except Exception as exc:  # noqa: BLE001 - a fork handler must not raise
        reason += f"; switching failed: {type(exc).__name__}: {exc}"
    _forked_reason = reason


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _guard(function, set_threads):
    last_wall = [1.0]  # this function's previous call, seconds (the first one is judged)

    @functools.wraps(function)
    def call(*args, **kwargs):
        threads = _Busy.threads
        if threads == 1:
            return function(*args, **kwargs)
        if threads == 0:
            import numba

            threads = _Busy.threads = numba.get_num_threads()
            if threads == 1:
                return function(*args, **kwargs)
        start = perf_counter()
        if start < _Busy.one_thread_until:
            _Busy.serial_calls += 1
            set_threads(1)
            try:
                return function(*args, **kwargs)
            finally:
                set_threads(threads)
        if last_wall[0] < JUDGED_CALL_S or _Busy.waking:
            # the first calls at the full count after one-thread calls wake the sleeping
            # workers (80-300 µs each in this VM): not a verdict on the cores
            _Busy.waking = max(0, _Busy.waking - 1)
            result = function(*args, **kwargs)
            last_wall[0] = perf_counter() - start
            return result
        on_core = thread_time()
        result = function(*args, **kwargs)
        wall = last_wall[0] = perf_counter() - start
        off_core = wall - (thread_time() - on_core)
        if off_core > OFF_CORE_S and off_core > (1.0 - BUSY_SHARE) * wall:
            _Busy.verdicts += 1
            if _Busy.verdicts >= VERDICTS:
                _Busy.verdicts, _Busy.waking = 0, WAKING_CALLS
                _Busy.strikes += 1
                _Busy.one_thread_until = perf_counter() + min(_SERIAL_FIRST_S * 2 ** (_Busy.strikes - 1), _SERIAL_MAX_S)
        elif wall >= JUDGED_CALL_S:
            _Busy.strikes = _Busy.verdicts = 0
        return result

    return call


class _GuardedFamily:
    """A backend's family module whose contract functions run under the busy-core guard;
    every other attribute is the module's own."""

    def __init__(self, module, functions, set_threads):
        self.__module = module
        for name in functions:
            setattr(self, name, _guard(getattr(module, name), set_threads))

    def __getattr__(self, name):
        return getattr(self.__module, name)

    def __repr__(self):
        return f"<guarded {self.__module!r}>"


def guarded_family(backend: str, family: str, module):
    """``module`` (a numba or cython family) with its contract functions guarded against
    busy cores (see the module docstring); other backends' modules as they are."""
    from .kernels import FUNCTIONS

    if os.environ.get("KERNPROP_BUSY_GUARD", "1") == "0":
        return module
    if backend == "numba":
        import numba

        set_threads = numba.set_num_threads
    elif backend == "cython":
        from ._cy import parallel

        set_threads = parallel.set_num_threads
    else:
        return module
    return _GuardedFamily(module, FUNCTIONS[family], set_threads)


@dataclass(frozen=True)
class ThreadPolicy:
    """What the CPU backends' threads do here, each field a sentence for a person."""

    threads: int
    numba_layer: str
    openmp_runtimes: str
    openmp_wait: str
    serial_below: str
    busy_cores: str
    blas: str
    after_fork: str = ""

    def __str__(self) -> str:
        return "\n".join([
            f"threads: {self.threads}",
            f"numba threading layer: {self.numba_layer}",
            f"OpenMP runtimes loaded: {self.openmp_runtimes}",
            f"idle OpenMP workers: {self.openmp_wait}",
            f"serial below: {self.serial_below}",
            f"busy cores: {self.busy_cores}",
            f"NumPy's BLAS: {self.blas}",
            f"after fork: {self.after_fork}",
        ])


def _numba_layer_now() -> str:
    import sys

    if "numba" not in sys.modules:
        return "numba not imported"
    from numba.np.ufunc import parallel

    configured = _state.get("numba_layer", "Numba's default order")
    if parallel._is_initialized:
        return f"{parallel._threading_layer}, running ({configured})"
    return f"not started yet; {configured}"


def _blas_now() -> str:
    from threadpoolctl import threadpool_info

    pools = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    if not pools:
        return "none loaded"
    timeout = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    parts = [" ".join(filter(None, (pool["internal_api"], pool.get("version")))) + f", {pool['num_threads']} threads"
             for pool in pools]
    if any(pool["internal_api"] == "openblas" for pool in pools):
        parts.append(f"OPENBLAS_THREAD_TIMEOUT={timeout}" if timeout else
                     "idle threads spin ~0.1 s after each call (OPENBLAS_THREAD_TIMEOUT unset)")
    return "; ".join(parts)


def policy() -> ThreadPolicy:
    """The thread policy in force in this process (see the module docstring)."""
    from .backends import get_num_threads, status
    from .kernels.numba_cpu._jit import SERIAL_ELEMENTS

    configure()
    runtimes = openmp_runtimes()
    if not runtimes:
        shared = "none yet (loaded with the first CPU kernel)"
    elif len(runtimes) == 1:
        shared = f"{runtimes[0]} (one pool for numba and cython)"
    else:
        shared = f"{', '.join(runtimes)} (another library brought its own)"
    serial = f"numba {SERIAL_ELEMENTS:,} elements"
    if status("cython").available:
        from ._cy import parallel

        serial += f", cython {parallel.parallel_min_work():,} elements"
    state = busy_state()
    now = f"one thread for {state['one_thread_for_s']:.2f} s" if state["one_thread_for_s"] else "full count"
    busy = ("guard off (KERNPROP_BUSY_GUARD=0)" if os.environ.get("KERNPROP_BUSY_GUARD", "1") == "0" else
            f"one thread after {VERDICTS} calls in a row whose calling thread was off a core for over "
            f"{OFF_CORE_S * 1e3:.2f} ms and {1 - BUSY_SHARE:.0%} of the call (now: {now}; "
            f"{state['serial_calls']} calls on one thread so far)")
    after_fork = _forked_reason or ("a child forked once the OpenMP threads started runs its kernels on one "
                                    "thread, with the same results (spawn and forkserver children: full count)")
    return ThreadPolicy(get_num_threads(), _numba_layer_now(), shared, _state["wait"], serial, busy, _blas_now(),
                        after_fork)


@contextlib.contextmanager
def blas_threads(n: int = 1):
    """Limit NumPy's BLAS (OpenBLAS, MKL, BLIS) to ``n`` threads inside a ``with`` block,
    through threadpoolctl.  For loops that alternate NumPy products with kernprop ops on
    few cores: with one BLAS thread there is no idle BLAS thread spinning on the core a
    kernprop thread needs (bench/SHARED_MACHINE.md measures it)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield
