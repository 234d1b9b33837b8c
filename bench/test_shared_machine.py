"""bench/shared_machine.py, run once at its smallest: one op, one round, each backend
(CI checks the script works; the figures are in bench/SHARED_MACHINE.md)."""

import pytest

import shared_machine
from kernprop.backends import status


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_shared_machine_measures_every_scenario(backend):
    if not status(backend).available:
        pytest.skip(f"backend {backend} unavailable: {status(backend).reason}")
    results = shared_machine.run_child(backend, ["relu 256x512"], 2, 1, 0, {})
    assert results["threading_layer"] == "omp"
    assert "GOMP_SPINCOUNT" in results["policy"] and results["numpy_us"] > 0
    row = results["ops"]["relu 256x512"]
    for key in ("quiet_us", "busy_us", "busy_1thread_us", "busy_ratio", "after_numpy_ratio", "numpy_after_ratio"):
        assert row[key] > 0, key
    assert "| relu 256x512 |" in shared_machine.markdown(backend, results)
