"""A first `kernprop train` (issue 19): it says so before compiling, a cached run says
nothing, no epoch's samples/s counts compiling, and every thread choice gives its reason."""

import os
import subprocess
import sys

import numpy as np
import pytest

import kernprop
from kernprop import cli, nn, optim
from kernprop.backends import status
from kernprop.train import Trainer
from kernprop.warmup import compiling

COMPILING = "compiling kernels (first run with these settings on this machine, up to about "


def _needs(backend):
    state = status(backend)
    if not state.available:
        pytest.skip(f"backend {backend} unavailable: {state.reason}")


def _train(*args, env=None, timeout=300):
    """`kernprop train` in a fresh process (Numba reads NUMBA_* when it is imported); its
    stdout lines.  A pipe is not a terminal: one line per epoch, no bar."""
    run = subprocess.run([sys.executable, "-m", "kernprop", "train", *args], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})})
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def _index(lines, start):
    found = [i for i, line in enumerate(lines) if line.startswith(start)]
    assert found, f"no line starts with {start!r}:\n" + "\n".join(lines)
    return found[0]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = kernprop.get_num_threads()
    yield
    kernprop.set_num_threads(threads)


def test_first_run_says_it_compiles_and_a_cached_run_does_not(tmp_path):
    # The one cold compile of this file (about 20 s): an empty NUMBA_CACHE_DIR.
    _needs("numba")
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    cold = _train("--backend", "numba", "--epochs", "2", env=env)
    announced, compiled, first = _index(cold, COMPILING), _index(cold, "compiled "), _index(cold, "epoch 1/2")
    # said before compiling; the warm-up, compile included, is over before the first epoch
    assert announced < compiled < first, "\n".join(cold)
    assert cold[compiled].endswith(" s") and " kernels in " in cold[compiled]
    assert any(name.endswith(".nbi") for _, _, names in os.walk(tmp_path / "numba-cache") for name in names)
    cached = _train("--backend", "numba", "--epochs", "2", env=env)
    assert not any(line.startswith(("compiling kernels", "compiled ")) for line in cached), "\n".join(cached)
    assert any(line.startswith("epoch 2/2") for line in cached)


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_backends_that_compile_nothing_say_nothing(backend, capsys):
    _needs(backend)
    assert cli.main(["train", "--backend", backend, "--epochs", "1", "--hidden", "16"]) == 0
    out = capsys.readouterr().out
    assert "compiling kernels" not in out and "compiled " not in out
    assert ("thread" in out) == (backend == "cython")  # NumPy's threads are not kernprop's


def test_a_small_model_runs_one_thread_and_says_how_to_override(capsys, monkeypatch):
    _needs("cython")
    from numba.core.config import NUMBA_NUM_THREADS as cores

    if cores < 2:
        pytest.skip("one core: nothing to choose")
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    assert cli.main(["train", "--backend", "cython", "--epochs", "1", "--hidden", "16", "--batch-size", "8"]) == 0
    # 3 x 8 rows x (64*16 + 16*10) weights
    line = f"1 thread: the model is small (a step of 28,416 multiply-adds); use --threads {cores} to override"
    assert line in capsys.readouterr().out.splitlines()
    assert kernprop.get_num_threads() == 1


def test_threads_asked_for_are_kept_and_named(capsys, monkeypatch):
    _needs("cython")
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    assert cli.main(["train", "--backend", "cython", "--epochs", "1", "--hidden", "16", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "1 thread (--threads)" in lines  # singular
    assert not any("1 threads" in line for line in lines)


def test_a_large_model_runs_every_core(capsys, monkeypatch):
    _needs("cython")
    from numba.core.config import NUMBA_NUM_THREADS as cores

    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    assert cli.main(["train", "--backend", "cython", "--epochs", "1", "--hidden", "512", "--batch-size", "64"]) == 0
    expected = f"{cores} threads (every core)" if cores > 1 else "1 thread (one core)"
    assert expected in capsys.readouterr().out.splitlines()
    assert kernprop.get_num_threads() == cores


def test_numba_num_threads_in_the_environment_is_the_users_choice():
    # The small model would run on one thread; NUMBA_NUM_THREADS=2 says two.
    _needs("cython")
    lines = _train("--backend", "cython", "--epochs", "1", "--hidden", "16", env={"NUMBA_NUM_THREADS": "2"})
    assert any(line.startswith("2 threads (NUMBA_NUM_THREADS); the model is small") for line in lines), "\n".join(lines)
    lines = _train("--backend", "cython", "--epochs", "1", "--hidden", "16", "--threads", "1",
                   env={"NUMBA_NUM_THREADS": "2"})
    assert "1 thread (--threads)" in lines  # the option wins over the environment


def _trainer(engine="packed"):
    model = nn.MLP([64, 16, 10], rng=0)
    return Trainer(model, optimizer=optim.Adam(1e-2), backend="numba", batch_size=32, seed=3, engine=engine)


def test_warmup_compiles_every_kernel_a_fit_calls():
    _needs("numba")
    (X, y), (X_val, y_val) = kernprop.load_digits(seed=0)
    kernprop.set_num_threads(1)
    trainer = _trainer()
    trainer.warmup(X, y, validation_data=(X_val, y_val))
    with compiling() as compiles:  # anything not compiled or loaded by warmup compiles here
        history = trainer.fit(X, y, 1, validation_data=(X_val, y_val), verbose=0)
        trainer.evaluate(X_val, y_val)
    assert compiles.kernels == 0
    assert history["samples_per_s"][0] > 0


def test_warmup_leaves_the_trainer_as_it_was():
    _needs("numba")
    (X, y), (X_val, y_val) = kernprop.load_digits(seed=0)
    kernprop.set_num_threads(1)
    warmed, plain = _trainer(), _trainer()
    weights = [p.copy() for p in warmed.model.parameters()]
    warmed.warmup(X, y, validation_data=(X_val, y_val))
    assert all(np.array_equal(a, b) for a, b in zip(weights, warmed.model.parameters()))
    assert warmed.history == {} and warmed.epochs_done == 0 and warmed.optimizer.state == {}
    # same shuffling and updates afterwards: bit-identical to a fit without the warm-up
    warmed.fit(X, y, 2, verbose=0)
    plain.fit(X, y, 2, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(warmed.model.parameters(), plain.model.parameters()))
