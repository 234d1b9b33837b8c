"""``kernprop cuda-check``: the occupancy arithmetic, the reading of ptxas reports, the
verdicts, and one kernel through the real compilers when they are installed (the
``cuda`` extra); no GPU needed."""

import os

import numpy as np
import pytest

from kernprop import cli, cuda_check

SM90 = cuda_check.ARCHS["sm_90"]

PTXAS_REPORT = """\
ptxas info    : 8 bytes gmem
ptxas info    : Compiling entry function '_Z4gemm' for 'sm_90'
ptxas info    : Function properties for _Z4gemm
    64 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 96 registers, used 1 barriers, 64 bytes cumulative stack size, 8320 bytes smem
ptxas info    : Compile time = 85.193 ms
"""


def test_occupancy_of_the_gemm_block():
    # 96 registers x 32 lanes = 3072 per warp; 16384 per scheduler hold 5 warps, 20 in
    # all: two blocks of 8 warps, 16 of 64 warps resident
    occ = cuda_check.occupancy(SM90, threads=256, registers=96, smem=8320)
    assert occ.launchable and occ.blocks == 2 and occ.limit == "registers" and occ.occupancy == 0.25


def test_occupancy_bounded_by_threads_and_smem():
    assert cuda_check.occupancy(SM90, 256, 32, 0).blocks == 8  # 2048 threads
    occ = cuda_check.occupancy(SM90, 64, 16, 40 * 1024)  # 228 KiB / 41 KiB
    assert occ.limit == "smem" and occ.blocks == 5


@pytest.mark.parametrize("threads,registers,smem,why", [
    (2048, 32, 0, "threads > 1024"),
    (1024, 255, 0, "register file"),
    (256, 32, 64 * 1024, "static shared memory"),
])
def test_blocks_that_cannot_launch(threads, registers, smem, why):
    occ = cuda_check.occupancy(SM90, threads, registers, smem)
    assert not occ.launchable and why in occ.reason


def test_occupancy_rejects_bad_input():
    with pytest.raises(ValueError, match="threads must be >= 1"):
        cuda_check.occupancy(SM90, 0, 32, 0)


def test_parse_ptxas_report():
    assert cuda_check.parse_ptxas(PTXAS_REPORT) == (96, 64, 8, 4, 8320)
    with pytest.raises(ValueError, match="no register count"):
        cuda_check.parse_ptxas("ptxas fatal   : something went wrong")


def test_float64_instructions_are_counted_but_not_conversions():
    ptx = "\tadd.f32 \t%f1, %f2, %f3;\n\tfma.rn.f64 \t%fd1, %fd2, %fd3, %fd4;\n" \
          "\tcvt.f64.f32 \t%fd5, %f1;\n\t@%p1 mul.f64 \t%fd6, %fd1, %fd1;\n// add.f64 in a comment\n"
    assert len(cuda_check.F64_PTX.findall(ptx)) == 2


def test_cli_without_compilers_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(cuda_check, "compilers", lambda arch: (None, "ptxas not found (test)"))
    assert cli.main(["cuda-check", "--arch", "sm_90"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "kernprop cuda-check: ptxas not found (test)"


def test_every_launcher_block_is_listed():
    launches = pytest.importorskip("kernprop.kernels.numba_cuda.launches")
    table = launches.launches()
    names = {launch.kernel for launch in table}
    assert {"gemm_kernel", "cross_entropy_kernel", "softmax_forward_kernel", "adam_step_kernel"} <= names
    assert {"gelu_forward_kernel", "gelu_tanh_backward_kernel", "layer_norm_forward_kernel",
            "layer_norm_backward_kernel", "layer_norm_params_partial_kernel", "column_total_kernel",
            "attention_forward_kernel", "attention_delta_kernel", "attention_backward_dkdv_kernel",
            "attention_backward_dq_kernel", "embedding_forward_kernel", "embedding_backward_kernel"} <= names
    assert all(launch.threads <= 1024 for launch in table)
    assert {launch.dtype for launch in table} == {np.dtype(np.float32), np.dtype(np.float64)}


@pytest.fixture(scope="module")
def ptxas():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("the simulator replaces the compiler")
    pytest.importorskip("numba.cuda")
    found, why = cuda_check.compilers(SM90)
    if found is None:
        pytest.skip(f"no CUDA compilers here: {why}")
    return found


def test_gemm_kernel_assembles_without_spills(ptxas):
    from kernprop.kernels.numba_cuda import launches

    gemm = next(x for x in launches.launches((np.float32,)) if x.kernel == "gemm_kernel")
    row = cuda_check.check_one(gemm, SM90, ptxas)
    assert row.ok, row.problems
    assert 0 < row.report.registers <= 255 and row.report.smem > 0 and row.occupancy.launchable


def test_float64_leak_in_a_float32_kernel_fails(ptxas):
    from numba import cuda, types

    from kernprop.kernels.numba_cuda.launches import Launch

    @cuda.jit
    def leaky_kernel(x):
        x[0] = x[0] * 1.1  # a float64 literal: the product is float64

    launch = Launch("leaky_kernel", "", np.dtype(np.float32), leaky_kernel, (types.float32[::1],), (32,))
    row = cuda_check.check_one(launch, SM90, ptxas)
    assert not row.ok and "float64 instructions in a float32 kernel" in row.problems[0]
