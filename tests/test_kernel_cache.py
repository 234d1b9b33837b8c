"""The Numba machine-code cache is keyed by kernprop's version, the instruction-set row and
a hash of the kernel sources: an edit of a helper in another file than the kernel, an
upgrade or a KERNPROP_MAX_ISA cap never loads stale machine code (issue 25)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kernprop

pytest.importorskip("kernprop.kernels.numba_cpu")

CHILD = """
import sys
# the copy on PYTHONPATH, not an editable install's finder (which sits before the path)
sys.meta_path = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
import numpy as np, kernprop
from kernprop.kernels.numba_cpu import cache
x = np.linspace(-3, 3, 40000).astype(np.float32)
y = kernprop.sigmoid(x, backend="numba")
print(cache.build_tag(), float(y[0]), kernprop.__file__)
"""


def _run(package_root, cache_dir, **env):
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600,
                          cwd=str(package_root),
                          env=dict(os.environ, PYTHONPATH=str(package_root), NUMBA_CACHE_DIR=str(cache_dir), **env))
    assert done.returncode == 0, done.stderr[-2000:]
    tag, value, path = done.stdout.split()
    assert Path(path).resolve().is_relative_to(Path(package_root).resolve())  # the copy ran
    return tag, float(value)


def _tags(cache_dir):
    return {name for _, dirs, _ in os.walk(cache_dir) for name in dirs if name.startswith("kernprop-")}


def test_an_edit_of_a_helper_file_or_a_cap_gets_a_cache_of_its_own(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(Path(kernprop.__file__).parent, copy / "kernprop",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cache_dir = tmp_path / "cache"
    first, value = _run(copy, cache_dir)
    assert _tags(cache_dir) == {"kernprop-" + first}
    assert _run(copy, cache_dir) == (first, value)  # unchanged sources: the same cache
    # sigmoid inlines _math's exp from another file: editing that file alone must not
    # leave the compiled sigmoid in use (Numba checks only the kernel's own file)
    math_file = copy / "kernprop" / "kernels" / "numba_cpu" / "_math.py"
    math_file.write_text(math_file.read_text() + "\n# edited\n")
    edited, edited_value = _run(copy, cache_dir)
    assert edited != first and edited_value == value
    assert _tags(cache_dir) == {"kernprop-" + first, "kernprop-" + edited}
    capped, _ = _run(copy, cache_dir, KERNPROP_MAX_ISA="generic")
    assert "-generic-" in capped and capped not in (first, edited)


@pytest.mark.parametrize("numba_cache_dir", [False, True])
def test_a_read_only_install_or_cache_directory_falls_back_to_the_user_cache(tmp_path, monkeypatch,
                                                                             numba_cache_dir):
    # Refused writes stand for a read-only directory (root ignores permission bits).
    from numba.core import config

    from kernprop.kernels.numba_cpu import activations, cache

    read_only = tmp_path / "read-only" if numba_cache_dir else Path(cache.__file__).parent
    monkeypatch.setattr(config, "CACHE_DIR", str(read_only) if numba_cache_dir else "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    real = cache.KernpropCacheLocator.ensure_cache_path

    def ensure_cache_path(locator):
        if Path(locator.get_cache_path()).is_relative_to(read_only):
            raise PermissionError(13, "Permission denied", locator.get_cache_path())
        return real(locator)

    monkeypatch.setattr(cache.KernpropCacheLocator, "ensure_cache_path", ensure_cache_path)
    py_func = next(getattr(activations, name).py_func for name in dir(activations)
                   if hasattr(getattr(activations, name), "py_func"))
    locator = cache.KernpropCacheLocator.from_function(py_func, activations.__file__)
    assert locator is not None
    assert Path(locator.get_cache_path()).is_relative_to(tmp_path / "user"), locator.get_cache_path()
    assert Path(locator.get_cache_path()).is_dir()
