"""Every CUDA kernel compiles for a real GPU target (typed and lowered to LLVM IR), and
float32 kernels do no float64 arithmetic: the simulator runs kernels as Python and would
not notice either.  Runs ``device_compile_check.py`` in a child process without
``NUMBA_ENABLE_CUDASIM`` (the simulator replaces the compiler in this one); needs
numba-cuda, no GPU and no CUDA toolkit."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kernprop

pytestmark = pytest.mark.cudasim

SCRIPT = Path(__file__).with_name("device_compile_check.py")


def test_every_kernel_compiles_for_the_device():
    state = kernprop.backends()["cuda"]
    if not state.available:
        pytest.skip(f"cuda backend unavailable: {state.reason}")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert result.returncode == 0, "\n".join(failures) or result.stdout + result.stderr
