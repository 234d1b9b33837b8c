"""Registry of kernel backends: names, lazy import, availability and the reason.

A backend is a package under ``kernprop.kernels`` holding the family modules described
in ``kernprop.kernels``.  Nothing is imported until a backend is first used or asked
about, so ``import kernprop`` never fails, nor pays Numba's import, for a backend the
caller does not use.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from types import ModuleType

from ._defaults import ThreadDefault
from .threadpolicy import configure as configure_threads, guarded_family, threads_allowed, threads_set

__all__ = [
    "FAMILIES", "NAMES", "DEFAULT_BACKEND", "BackendStatus", "status", "backends", "available_backends",
    "set_backend", "get_backend", "default_is_named", "use_backend", "resolve", "family", "set_num_threads", "get_num_threads",
    "matmul_kernels",
]

FAMILIES = ("matmul", "activations", "softmax", "losses", "optimizers", "normalization", "attention", "embedding")


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here, and why not when it cannot."""

    name: str
    available: bool
    reason: str
    description: str

    def __str__(self) -> str:
        state = "available" if self.available else f"unavailable: {self.reason}"
        return f"{self.name:<7} {state}"


def _check_numpy() -> str | None:
    return None


def _check_numba() -> str | None:
    try:
        import numba  # noqa: F401
    except ImportError as exc:  # pragma: no cover - numba is a dependency
        return f"numba is not installed ({exc})"
    configure_threads(numba=True)
    return None


def _check_cython() -> str | None:
    configure_threads()  # loading an extension loads libgomp: its wait policy first
    try:
        importlib.import_module("kernprop._cy.parallel")
    except ImportError as exc:
        return f"extension not built ({exc}); reinstall with: pip install -e ."
    missing = []
    for family in FAMILIES:
        try:
            importlib.import_module(f"kernprop._cy.{family}")
        except ImportError:
            missing.append(family)
    if missing:
        return f"extension not built for: {', '.join(missing)}"
    return None


def _no_cuda_driver() -> bool:
    """Linux without the CUDA driver library (``libcuda.so.1``), where Numba would look for
    it (``NUMBA_CUDA_DRIVER`` unset): no device can run, and importing ``numba.cuda`` to
    say so took 0.9 of ``kernprop info``'s 2.3 s on a busy 2-core Zen 3."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("NUMBA_CUDA_DRIVER"):
        return False
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            ctypes.CDLL(name)
            return False
        except OSError:
            continue
    return True


def _check_cuda() -> str | None:
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if not simulator and _no_cuda_driver():
        import importlib.util

        try:
            installed = importlib.util.find_spec("numba.cuda") is not None
        except ImportError:
            installed = False
        return "no CUDA driver or no CUDA device" if installed else \
            "numba-cuda is not installed; pip install -e '.[cuda]'"
    try:
        from numba import cuda
    except ImportError as exc:
        return f"numba-cuda is not installed ({exc}); pip install -e '.[cuda]'"
    if simulator:
        return None
    try:
        if not cuda.is_available():
            try:
                cuda.detect()
            except Exception:  # noqa: BLE001 - any failure means no usable device
                pass
            return "no CUDA driver or no CUDA device"
    except Exception as exc:  # noqa: BLE001
        return f"no CUDA driver ({exc})"
    return None


_REGISTRY = {
    "numpy": ("kernprop.kernels.reference", _check_numpy, "NumPy reference (the oracle)"),
    "numba": ("kernprop.kernels.numba_cpu", _check_numba, "Numba CPU, parallel over rows"),
    "cython": ("kernprop.kernels.cython", _check_cython, "Cython with OpenMP prange"),
    "cuda": ("kernprop.kernels.numba_cuda", _check_cuda, "Numba CUDA kernels"),
}

NAMES = tuple(_REGISTRY)
DEFAULT_BACKEND = "numba"

_lock = threading.Lock()
_status_cache: dict[str, BackendStatus] = {}
_module_cache: dict[tuple[str, str], ModuleType] = {}


def _require_known(name) -> str:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(NAMES)}")
    return name


# the default backend: global, and per thread inside use_backend
_default = ThreadDefault(os.environ.get("KERNPROP_BACKEND", DEFAULT_BACKEND), _require_known)
_default_named = ["KERNPROP_BACKEND" in os.environ]  # set_backend names it too


def status(name: str) -> BackendStatus:
    """The availability of one backend (checked once, then remembered)."""
    _require_known(name)
    with _lock:
        if name not in _status_cache:
            package, check, description = _REGISTRY[name]
            reason = check()
            _status_cache[name] = BackendStatus(
                name, reason is None, reason or "", description
            )
        return _status_cache[name]


def backends() -> dict[str, BackendStatus]:
    """Every backend name mapped to its status (available, and why not)."""
    return {name: status(name) for name in NAMES}


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [name for name in NAMES if status(name).available]


def set_backend(name: str) -> None:
    """Set the global default backend used when an op gets ``backend=None``."""
    _default.set(name)
    _default_named[0] = True


def get_backend() -> str:
    """The backend an op uses when it gets ``backend=None``."""
    return _default.get()


def default_is_named() -> bool:
    """Whether the user chose the default backend (``KERNPROP_BACKEND``, ``set_backend``,
    or inside ``use_backend``), rather than leaving kernprop's (see ``kernprop.first_run``)."""
    return _default_named[0] or _default.overridden()


def use_backend(name: str):
    """Use ``name`` as the default backend inside a ``with`` block (per thread)."""
    return _default.override(name)


def resolve(name: str | None) -> str:
    """The backend an op will run on: ``name``, or the default when it is None."""
    return get_backend() if name is None else _require_known(name)


def family(backend: str | None, family_name: str) -> ModuleType:
    """The module of one op family in one backend, imported on first use; for numba and
    cython, its contract functions run under the busy-core guard (``kernprop.threadpolicy``).

    Raises RuntimeError with the reason when the backend cannot run here.
    """
    name = resolve(backend)
    key = (name, family_name)
    module = _module_cache.get(key)
    if module is None:
        state = status(name)
        if not state.available:
            raise RuntimeError(f"backend {name!r} is not available: {state.reason}")
        module = importlib.import_module(f"{_REGISTRY[name][0]}.{family_name}")
        module = _module_cache[key] = guarded_family(name, family_name, module)
    return module


def set_num_threads(n: int) -> None:
    """Set the thread count of every CPU backend (Numba and the Cython OpenMP kernels).

    The default is Numba's: ``NUMBA_NUM_THREADS`` or the number of cores.  How the
    threads wait and share the machine: ``kernprop.threadpolicy``.  A child forked after
    the threads started keeps one thread, whatever ``n`` (``threadpolicy.forked_child``).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    configure_threads(numba=True)  # Numba starts its threads below
    import numba
    from numba.core.config import NUMBA_NUM_THREADS

    if n > NUMBA_NUM_THREADS:  # Numba's pool is sized when it starts
        raise ValueError(f"n must be at most {NUMBA_NUM_THREADS} (the cores, or NUMBA_NUM_THREADS), got {n}")

    # a forked child keeps one thread (kernprop.threadpolicy: its OpenMP pool is the
    # parent's, without threads)
    n = threads_allowed(n)
    numba.set_num_threads(n)
    if status("cython").available:
        importlib.import_module("kernprop._cy.parallel").set_num_threads(n)
    threads_set(n)


def get_num_threads() -> int:
    """The thread count the CPU backends use."""
    configure_threads(numba=True)  # asking Numba starts its threads
    import numba

    return numba.get_num_threads()


def matmul_kernels() -> dict[str, dict[str, str]]:
    """For each available backend that reports it, the kernel each float32 matmul
    precision runs (``{"numba": {"fp32": "fp32_avx512_12x32 fma ...", ...}}``); choosing
    them may run each kernel's self-check once."""
    out = {}
    for name in available_backends():
        info = getattr(family(name, "matmul"), "kernel_info", None)
        if info is not None:
            out[name] = info()
    return out


def matmul_kernel(name: str, precision: str) -> str | None:
    """The description of the kernel ``name``'s backend runs float32 products at
    ``precision`` with (``kernel_info`` of its matmul family), or None when it does not say."""
    info = getattr(family(name, "matmul"), "kernel_info", None)
    return None if info is None else info().get(precision)
