"""The first run on a machine: train on Cython while Numba compiles in the background.

Numba compiles its kernels on their first call and caches them on disk; on an empty
cache the kernels of a training run take about a minute to compile on a 2-core Zen 3
(``compiled 8 kernels in 63.4 s`` for the digits MLP), and later runs load them in
under a second.  The Cython backend is compiled at install time and trains the same
models at once.  So when the user named no backend, ``kernprop train`` chooses, once,
before anything trains (``choose``):

1. it runs the numba warm-up of the fit (``Trainer.warmup``) and stops it at Numba's
   first compilation (the ``numba:compile`` event, ``kernprop.warmup.compiling``, raised
   only for a kernel missing from the on-disk cache);
2. every kernel loaded: **numba**, as before (the warm-up is done);
3. one missing: **cython** for the whole run, and a detached, low-priority child process
   (``python -m kernprop.first_run``) runs the same numba warm-up to the end, writing
   the kernels into the same cache (``NUMBA_CACHE_DIR`` or ``__pycache__``), so the next
   run finds them and trains on numba.  One child per cache and configuration at a time
   (a lock file ``kernprop-warmup-<hash>.lock`` in the temporary directory holds its
   process id, and goes when it ends).

The choice is printed (``backend: cython (numba kernels compiling in the background for
the next run)``) and never changes during a run: no step switches engines.  The two
backends do not give the same bits: each is tested against the NumPy reference within
float tolerance (sums are ordered differently; the fused numba step and the Cython
kernels round differently), so a seeded run on cython and the same run on numba agree
to a few units in the last place per step, not bit for bit.  Name ``--backend numba``
(or ``KERNPROP_BACKEND=numba``) to train on numba from the first run, compiling first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import time

__all__ = ["Choice", "choose", "numba_is_warm", "compile_in_background"]

# A lock older than this is a child that died: another may start.
_LOCK_SECONDS = 15 * 60


class _Cold(Exception):
    """Raised at Numba's first compilation inside ``numba_is_warm``."""


@dataclasses.dataclass(frozen=True)
class Choice:
    """The backend a run trains on, and the line that says why."""

    backend: str
    line: str


def numba_is_warm(trainer, X, y, validation_data=None) -> bool:
    """Whether every numba kernel of ``trainer.fit(X, y, validation_data=...)`` is in
    Numba's cache: its warm-up on numba, stopped at the first compilation.  When warm,
    the kernels are loaded and the warm-up is done."""
    from .warmup import compiling

    def cold():
        raise _Cold

    backend = trainer.backend
    trainer.backend = "numba"
    try:
        with compiling(cold):
            trainer.precision_in_effect()  # a bf16 kernel's self-check compiles too
            trainer.warmup(X, y, validation_data=validation_data)
    except _Cold:
        return False
    finally:
        trainer.backend = backend
    return True


def _lock_path(key):
    from numba.core.config import CACHE_DIR

    from .kernels.numba_cpu.cache import build_tag

    digest = hashlib.sha256(repr((CACHE_DIR or os.path.dirname(__file__), build_tag(), key)).encode())
    return os.path.join(tempfile.gettempdir(), f"kernprop-warmup-{digest.hexdigest()[:16]}.lock")


def _holder_alive(path):
    """Whether the process named in the lock ``path`` still runs (a lock being written,
    without a process id yet, counts as held)."""
    try:
        with open(path) as file:
            text = file.read().strip()
        if not text:
            return True
        os.kill(int(text), 0)
    except PermissionError:
        return True  # another user's live process
    except (OSError, ValueError):
        return False
    return True


def _take_lock(path):
    """Create ``path`` (False when a live child holds it)."""
    try:
        if time.time() - os.stat(path).st_mtime > _LOCK_SECONDS or not _holder_alive(path):
            os.remove(path)  # its child died
    except OSError:
        pass
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    return True


def compile_in_background(trainer, X, y, validation_data=None, threads=None) -> str:
    """Start a detached child that compiles ``trainer``'s fit on numba into Numba's
    cache (``Trainer.warmup`` on the same rows, engine, precision and thread count);
    returns what it did, for the user.  The trainer is written to a temporary
    checkpoint with the rows the warm-up reads; the child removes both when done."""
    import numpy as np

    from .backends import get_num_threads
    from .train import _EVAL_ROWS

    threads = get_num_threads() if threads is None else threads
    backend = trainer.backend
    trainer.backend = "numba"
    try:
        engine = trainer.choose_engine()[0]
    finally:
        trainer.backend = backend
    # the rows Trainer.warmup takes, which choose its serial or parallel kernels
    n, batch = X.shape[0], trainer.batch_size
    arrays = {"X": X[:min(n, batch + n % batch)], "y": y[:min(n, batch + n % batch)]}
    if validation_data is not None:
        X_val, y_val = validation_data
        rows = min(X_val.shape[0], _EVAL_ROWS + X_val.shape[0] % _EVAL_ROWS)
        arrays.update(X_val=X_val[:rows], y_val=y_val[:rows])
    key = (engine, threads, trainer.precision, trainer.batch_size, str(trainer.dtype), type(trainer.loss).__name__,
           type(trainer.optimizer).__name__, sorted(trainer.optimizer.hyperparameters().items()),
           tuple(p.shape for p in trainer.model.parameters()), sorted((k, v.shape) for k, v in arrays.items()))
    lock = _lock_path(key)
    if not _take_lock(lock):
        return "numba kernels already compiling in the background for the next run"
    try:
        folder = tempfile.mkdtemp(prefix="kernprop-warmup-")
        checkpoint, data = os.path.join(folder, "trainer.npz"), os.path.join(folder, "rows.npz")
        trainer.save(checkpoint)
        np.savez(data, **arrays)
        child = subprocess.Popen([sys.executable, "-m", "kernprop.first_run", checkpoint, data, engine, str(threads),
                                  lock], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        with open(lock, "w") as file:  # who holds it
            file.write(f"{child.pid}\n")
    except (OSError, ValueError, TypeError) as exc:  # a custom loss, a full disk: the next run compiles
        os.remove(lock)
        return f"numba kernels not compiled in the background ({' '.join(str(exc).split())})"
    return "numba kernels compiling in the background for the next run"


def choose(trainer, X, y, validation_data=None) -> Choice:
    """The backend of a run whose user named none (see the module docstring): numba when
    its kernels are cached (then loaded), else cython with numba compiling in the
    background.  Sets ``trainer.backend`` to the choice."""
    from .backends import status

    cython = status("cython")
    if not cython.available:
        trainer.backend = "numba"
        return Choice("numba", f"backend: numba (the default; cython, which compiles nothing, is unavailable: "
                               f"{cython.reason})")
    if numba_is_warm(trainer, X, y, validation_data):
        trainer.backend = "numba"
        return Choice("numba", "backend: numba (the default; its kernels are in Numba's cache)")
    what = compile_in_background(trainer, X, y, validation_data)
    trainer.backend = "cython"
    return Choice("cython", f"backend: cython ({what})")


def _main(argv):
    """The background child: ``checkpoint rows engine threads lock``."""
    checkpoint, data, engine, threads, lock = argv
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # ended: still remove the files below
    try:
        if hasattr(os, "nice"):
            os.nice(10)  # the run in the foreground first
        import numpy as np

        from .backends import set_num_threads
        from .train import Trainer

        set_num_threads(int(threads))
        trainer = Trainer.load(checkpoint, backend="numba", engine=engine)
        with np.load(data) as rows:
            validation = (rows["X_val"], rows["y_val"]) if "X_val" in rows else None
            trainer.warmup(rows["X"], rows["y"], validation_data=validation)
    finally:
        for path in (checkpoint, data, lock):
            try:
                os.remove(path)
            except OSError:
                pass
        try:
            os.rmdir(os.path.dirname(checkpoint))
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
