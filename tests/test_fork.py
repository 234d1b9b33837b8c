"""Forked workers (issue 25): after this process has run parallel kernels, a child made
by fork (``multiprocessing`` fork Pool, ``os.fork``, a torch DataLoader) runs every op and
``Trainer.fit`` on each CPU backend with the parent's results, bit for bit, on one thread
(``kernprop.threadpolicy``: fork handler); forkserver and spawn workers too.

Without the handler a numba child is killed (SIGTERM from Numba's ``omp`` layer) and a
cython child hangs, so each case runs in its own interpreter (tests/fork_cases.py) under a
timeout: a hang fails the test, not the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kernprop
from kernprop.backends import status

CASES = Path(__file__).with_name("fork_cases.py")
BACKENDS = ["numpy", "numba", "cython"]
TIMEOUT_S = 500  # the first run in a fresh environment compiles the numba kernels


def _run_case(case, backend):
    if not status(backend).available:
        pytest.skip(f"backend {backend} unavailable: {status(backend).reason}")
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}  # two threads: the parent runs parallel kernels
    env.pop("NUMBA_THREADING_LAYER", None)  # kernprop's choice: omp, the layer that is not fork-safe
    try:
        out = subprocess.run([sys.executable, str(CASES), case, backend], env=env, capture_output=True,
                             text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case} on {backend}: hung for {TIMEOUT_S} s")
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines, f"{case} on {backend}: exit {out.returncode}\n{out.stderr[-3000:]}"
    result = json.loads(lines[-1])
    # the child imported the package under test (the installed one when run from outside the tree)
    assert result["kernprop"] == kernprop.__file__
    assert result["ok"], f"{case} on {backend}: " + "; ".join(result["why"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["os_fork", "fork", "forkserver", "spawn"])
def test_workers_match_the_parent_after_its_parallel_kernels(case, backend):
    """os_fork also checks, in the child: ``kernprop info`` says one thread,
    ``set_num_threads(2)`` keeps one, a new thread and a grandchild give the same results."""
    _run_case(case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_dataloader_workers(backend):
    pytest.importorskip("torch")
    _run_case("dataloader", backend)


def test_info_says_what_a_forked_child_gets():
    assert "after fork: a child forked once the OpenMP threads started runs its kernels on one thread" in \
        str(kernprop.threadpolicy.policy())
