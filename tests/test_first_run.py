"""A first `kernprop train` (issues 19 and 30): with no backend named, a cold cache trains on
cython at once while numba compiles in the background, and the next run trains on numba;
a run that names numba says so before compiling, a cached run says nothing, no epoch's
samples/s counts compiling, and every thread choice gives its reason.  The start-up
targets of issue 30 are measured in child processes with an empty NUMBA_CACHE_DIR,
against loose bounds (the figures and the CPU are in the README, "Threads and start-up")."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import kernprop
from kernprop import cli, nn, optim
from kernprop.backends import status
from kernprop.train import Trainer
from kernprop.warmup import compiling

COMPILING = "compiling kernels (first run with these settings on this machine, up to about "
ON_CYTHON = "backend: cython (numba kernels compiling in the background for the next run)"
ON_NUMBA = "backend: numba (the default; its kernels are in Numba's cache)"

# Loose bounds for a busy 2-core CI runner; the targets (issue 30) are the README's.
FIRST_EPOCH_S = 20  # target 5 s: `kernprop train` until its first epoch, and a Trainer's first step
END_TO_END_S = 40  # target 10 s
IMPORT_S = 1.0  # target 0.3 s
INFO_S = 5.0  # target 1.5 s


def _needs(backend):
    state = status(backend)
    if not state.available:
        pytest.skip(f"backend {backend} unavailable: {state.reason}")


def _env(tmp_path, cache="numba-cache"):
    """A child's environment: no backend named, an empty NUMBA_CACHE_DIR, and TMPDIR in
    tmp_path, where a background compile's lock file lands (kernprop.first_run)."""
    env = {k: v for k, v in os.environ.items() if k != "KERNPROP_BACKEND"}
    return {**env, "NUMBA_CACHE_DIR": str(tmp_path / cache), "TMPDIR": str(tmp_path)}


def _train(*args, env=None, timeout=300):
    """`kernprop train` in a fresh process (Numba reads NUMBA_* when it is imported); its
    stdout lines.  A pipe is not a terminal: one line per epoch, no bar."""
    return [line for _, line in _timed_train(*args, env=env, timeout=timeout)[0]]


def _timed_train(*args, env=None, timeout=300):
    """As ``_train``: ``([(seconds since the start, line)], seconds to the exit)``."""
    env = {**os.environ, **(env or {})}
    if "--backend" not in args:
        env.pop("KERNPROP_BACKEND", None)  # no backend named
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "kernprop", "train", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in child.stdout]
    stderr = child.stderr.read()
    assert child.wait(timeout) == 0, stderr
    return lines, time.perf_counter() - start


def _index(lines, start):
    found = [i for i, line in enumerate(lines) if line.startswith(start)]
    assert found, f"no line starts with {start!r}:\n" + "\n".join(lines)
    return found[0]


def _background(tmp_path, wait):
    """The background compiles started with TMPDIR=tmp_path: wait for them to end (True
    when they did within ``wait`` seconds), or with ``wait=0`` end them by process id."""
    deadline = time.monotonic() + wait
    while True:
        locks = glob.glob(str(tmp_path / "kernprop-warmup-*.lock"))
        if not locks:
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for lock in locks:
        try:
            with open(lock) as file:
                os.kill(int(file.read()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
    return False


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = kernprop.get_num_threads()
    yield
    kernprop.set_num_threads(threads)


def test_a_cold_first_run_trains_on_cython_at_once_and_the_next_on_numba(tmp_path):
    # The one cold compile of this file (about a minute on 2 cores, run twice at once).
    _needs("numba")
    _needs("cython")
    env = _env(tmp_path)
    timed, total = _timed_train("--epochs", "2", env=env)
    cold = [line for _, line in timed]
    assert cold[0] == ON_CYTHON, "\n".join(cold)
    first = _index(cold, "epoch 1/2")
    assert timed[first][0] < FIRST_EPOCH_S and total < END_TO_END_S, (timed[first][0], total)
    assert "backend cython" in cold[_index(cold, "model: ")]
    assert not any(line.startswith(("compiling kernels", "compiled ")) for line in cold), "\n".join(cold)
    # Meanwhile a run that names numba gets numba: it says so before compiling, and the
    # warm-up, compile included, is over before the first epoch (its own empty cache).
    named_env = _env(tmp_path, "named-cache")
    named = _train("--backend", "numba", "--epochs", "2", env=named_env)
    announced, compiled, first = _index(named, COMPILING), _index(named, "compiled "), _index(named, "epoch 1/2")
    assert announced < compiled < first, "\n".join(named)
    assert named[compiled].endswith(" s") and " kernels in " in named[compiled]
    assert not any(line.startswith("backend: ") for line in named)
    assert any(name.endswith(".nbi") for _, _, names in os.walk(tmp_path / "named-cache") for name in names)
    cached = _train("--backend", "numba", "--epochs", "2", env=named_env)
    assert not any(line.startswith(("compiling kernels", "compiled ")) for line in cached), "\n".join(cached)
    assert any(line.startswith("epoch 2/2") for line in cached)
    # The background compile filled the first cache: the next run trains on numba, compiling nothing.
    assert _background(tmp_path, wait=300), "the background compile did not end within 5 minutes"
    warm = _train("--epochs", "2", env=env)
    assert warm[0] == ON_NUMBA, "\n".join(warm)
    assert not any(line.startswith(("compiling kernels", "compiled ")) for line in warm), "\n".join(warm)
    assert "engine: fused" in warm[_index(warm, "engine: ")]


FIT_784 = """
import time
start = time.perf_counter()
import numpy as np, kernprop
from kernprop import nn, optim
X = np.random.default_rng(0).standard_normal((256, 784)).astype(np.float32)
y = np.arange(256) % 10
trainer = kernprop.Trainer(nn.MLP([784, 512, 256, 10], rng=0), optimizer=optim.SGD(0.01), batch_size=256)
trainer.fit(X, y, 1, verbose=0)  # one step
print(trainer.backend_choice[1])
print(time.perf_counter() - start)
"""


def test_a_trainer_with_no_backend_named_takes_its_first_step_at_once(tmp_path):
    # The default backend on an empty cache: cython for this Trainer, numba compiling
    # behind it (ended here, by process id: the test does not wait a minute for it).
    _needs("numba")
    _needs("cython")
    try:
        done = subprocess.run([sys.executable, "-c", FIT_784], capture_output=True, text=True, timeout=300,
                              env=_env(tmp_path))
    finally:
        _background(tmp_path, wait=0)
    assert done.returncode == 0, done.stderr
    line, seconds = done.stdout.splitlines()
    assert line == ON_CYTHON
    assert float(seconds) < FIRST_EPOCH_S


def test_import_and_info_are_quick(tmp_path):
    env = _env(tmp_path)
    timing = "import time; t = time.perf_counter(); import kernprop; print(time.perf_counter() - t)"
    imports = [float(subprocess.run([sys.executable, "-c", timing], capture_output=True, text=True, env=env,
                                    timeout=60, check=True).stdout) for _ in range(3)]
    assert min(imports) < IMPORT_S, imports
    infos = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kernprop", "info"], capture_output=True, env=env, timeout=60,
                       check=True)
        infos.append(time.perf_counter() - start)
    assert min(infos) < INFO_S, infos


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
