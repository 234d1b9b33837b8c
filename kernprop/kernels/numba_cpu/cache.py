"""Where the Numba CPU kernels' machine code is cached: a directory per build and row.

Numba's cache checks only the source file of the function it compiled.  A kernel also
holds machine code of the helpers it inlined from other files (the GEMM drivers inline
``packing`` and ``microkernels``) and constants folded at compile time (the register
tile of the instruction-set row, ``kernprop.isa``), so after an edit of ``packing.py``,
an upgrade, or a process under another ``KERNPROP_MAX_ISA``, Numba would load machine
code that no longer matches the source.  ``KernpropCacheLocator`` puts every kernprop
kernel's cache in a directory named by kernprop's version, the instruction-set row and a
hash of every source file the kernels are built from (this package, ``isa.py`` and the
fused engine's ``engines/mlp_step.py``):
an edit or an upgrade finds an empty directory and compiles afresh, and each row keeps
its own cache.

The directory is ``<NUMBA_CACHE_DIR>/kernprop-<tag>/<module's folder in the package>``
when ``NUMBA_CACHE_DIR`` is set (so an installed wheel and a checkout of the same
sources share it), else ``__pycache__/kernprop-<tag>`` beside the module; where that
cannot be written (a read-only install or cache directory), the same below the user's
cache directory (``$XDG_CACHE_HOME/numba`` or ``~/.cache/numba`` on Linux), without an
error.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from numba.core import caching, config

_PACKAGE = Path(__file__).resolve().parent
# Kernels of this backend that live beside the code that runs them: the fused engine's
# step (built from this package's helpers, so cached with them)
_OUTSIDE = (_PACKAGE.parent.parent / "engines" / "mlp_step.py",)
_SOURCES = (_PACKAGE, _PACKAGE.parent.parent / "isa.py", *_OUTSIDE)


@functools.lru_cache(maxsize=None)
def build_tag():
    """``<version>-<row>-<hash>``: what the cached machine code depends on besides the
    file of each function (which Numba checks itself)."""
    from ... import __version__
    from ...isa import active_row

    digest = hashlib.sha256()
    for source in _SOURCES:
        files = sorted(source.rglob("*.py")) if source.is_dir() else [source]
        for path in files:
            digest.update(str(path.relative_to(_PACKAGE.parent.parent)).encode())
            digest.update(path.read_bytes())
    return f"{__version__}-{active_row().name}-{digest.hexdigest()[:16]}"


class KernpropCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """Numba cache locator for kernprop's own kernels (see the module docstring)."""

    def __init__(self, py_func, py_file, path):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = path

    def get_cache_path(self):
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file):
        path = Path(py_file).resolve()
        if _PACKAGE not in path.parents and path not in _OUTSIDE:
            return None  # not kernprop's: Numba's own locators
        tag = "kernprop-" + build_tag()
        # below NUMBA_CACHE_DIR by the module's place in the package, not its absolute
        # path: an installed wheel and a checkout of the same sources (the same tag)
        # share one cache there
        inside = path.parent.relative_to(_PACKAGE.parent.parent)
        user = os.path.join(caching.AppDirs(appname="numba", appauthor=False).user_cache_dir, tag, inside)
        if config.CACHE_DIR:
            places = [os.path.join(config.CACHE_DIR, tag, inside), user]
        else:
            places = [os.path.join(path.parent, "__pycache__", tag), user]
        for place in places:
            locator = cls(py_func, py_file, place)
            try:
                locator.ensure_cache_path()
            except OSError:
                continue  # not writable: the next place
            return locator
        return None


def install():
    """Put ``KernpropCacheLocator`` first in Numba's list (once); idempotent."""
    # CacheImpl since Numba 0.62, _CacheImpl before
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    locators = impl._locator_classes
    if KernpropCacheLocator not in locators:
        locators.insert(0, KernpropCacheLocator)
