"""The backend registry, thread setting, Numba's on-disk cache and `kernprop info`."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kernprop
from kernprop.backends import NAMES


def test_every_backend_is_listed_with_a_reason_when_unavailable():
    statuses = kernprop.backends()
    assert tuple(statuses) == ("numpy", "numba", "cython", "cuda")
    assert statuses["numpy"].available and statuses["numba"].available
    for state in statuses.values():
        assert state.available or state.reason, f"{state.name} unavailable without a reason"
    assert set(kernprop.available_backends()) <= set(NAMES)


def test_default_backend_can_be_set_and_scoped():
    kernprop.set_backend("numpy")
    assert kernprop.get_backend() == "numpy"
    with kernprop.use_backend("numba"):
        assert kernprop.get_backend() == "numba"
        with kernprop.use_backend("numpy"):
            assert kernprop.get_backend() == "numpy"
        assert kernprop.get_backend() == "numba"
    assert kernprop.get_backend() == "numpy"


def test_default_backend_is_used_by_ops(monkeypatch):
    from kernprop.kernels.reference import activations

    calls = []
    monkeypatch.setattr(activations, "relu_forward", lambda x: calls.append(x) or x)
    with kernprop.use_backend("numpy"):
        kernprop.relu(np.ones(2))
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["", "NumPy", "gpu", 3])
def test_unknown_backend_names_are_rejected(name):
    with pytest.raises(ValueError, match="known backends: numpy, numba, cython, cuda"):
        kernprop.set_backend(name)
    with pytest.raises(ValueError, match="unknown backend"):
        kernprop.use_backend(name).__enter__()


def test_thread_count_is_one_setting():
    before = kernprop.get_num_threads()
    try:
        kernprop.set_num_threads(1)
        assert kernprop.get_num_threads() == 1
        if kernprop.backends()["cython"].available:
            from kernprop._cy import parallel

            assert parallel.get_num_threads() == 1 or not parallel.openmp_enabled()
    finally:
        kernprop.set_num_threads(before)
    with pytest.raises(ValueError, match="n must be a positive int"):
        kernprop.set_num_threads(0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_thread_count(rng, dtype):
    # One numba thread runs the serial builds (kernels' twins, the serial GEMM loops),
    # more run the parallel ones: the same bits either way.  Inputs above the serial
    # cut-off (SERIAL_ELEMENTS, _SERIAL_FLOPS) so that both builds are exercised.
    x = rng.normal(size=(257, 131)).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    w = rng.normal(size=(131, 97)).astype(dtype)
    labels = rng.integers(0, 131, 257)

    def run():
        param = x.copy()
        kernprop.adam_step(param, dy, np.zeros_like(x), np.zeros_like(x), 1, lr=0.1, backend="numba")
        return [
            kernprop.cross_entropy_with_grad(x, labels, backend="numba")[1],
            kernprop.log_softmax(x, backend="numba"),
            kernprop.sigmoid(x, backend="numba"),
            kernprop.tanh_backward(np.tanh(x), dy, backend="numba"),
            kernprop.relu_backward(x, dy, backend="numba"),
            kernprop.mse_backward(x, dy, backend="numba"),
            kernprop.linear(x, w, activation="relu", backend="numba"),
            *kernprop.linear_backward(x, w, x @ w, backend="numba"),
            param,
        ]

    before = kernprop.get_num_threads()
    results = []
    try:
        for threads in sorted({1, 2, before}):
            kernprop.set_num_threads(threads)
            results.append(run())
    finally:
        kernprop.set_num_threads(before)
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


CACHE_PROBE = textwrap.dedent(
    """
    import numpy as np
    from kernprop.kernels.numba_cpu import softmax
    kernel = softmax._log_softmax_forward
    x = np.ones((300, 100))
    kernel(x, np.empty_like(x))  # the parallel build
    kernel.serial(x, np.empty_like(x))  # its serial twin (small inputs, one thread)
    stats = [kernel.stats, kernel.serial.stats]
    print(sum(sum(s.cache_hits.values()) for s in stats), sum(sum(s.cache_misses.values()) for s in stats))
    """
)


def test_numba_cache_survives_a_change_of_thread_count(tmp_path):
    def run(threads):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", CACHE_PROBE], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        return int(out[0]), int(out[1])

    hits, misses = run(2)
    assert misses == 2 and hits == 0, "the first process compiles both builds"
    hits, misses = run(1)
    assert hits == 2 and misses == 0, "a second process with another thread count loads both from the cache"


def test_info_command_reports_backends_and_threads():
    out = subprocess.run([sys.executable, "-m", "kernprop.cli", "info"], capture_output=True,
                         text=True, check=True).stdout
    assert f"kernprop {kernprop.__version__}" in out
    for name in NAMES:
        assert name in out
    assert "CPU threads:" in out and "cache:" in out
    if not kernprop.backends()["cuda"].available:
        assert "cuda    unavailable: " in out


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_warmup_runs_every_op(name, monkeypatch):
    from kernprop import ops

    called = set()
    for op_name in ("matmul", "linear", "linear_backward", "log_softmax", "cross_entropy_with_grad",
                    "linear_cross_entropy", "sgd_step", "adam_step", "mse_backward", "tanh_backward"):
        original = getattr(ops, op_name)

        def spy(*args, _original=original, _name=op_name, **kwargs):
            called.add(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(ops, op_name, spy)
    seconds = kernprop.warmup(name, ("float32",))
    assert seconds > 0
    assert called == {"matmul", "linear", "linear_backward", "log_softmax", "cross_entropy_with_grad",
                      "linear_cross_entropy", "sgd_step", "adam_step", "mse_backward", "tanh_backward"}
