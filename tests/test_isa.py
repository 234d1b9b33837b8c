"""The CPU GEMM table (kernprop.isa): which row a CPU runs, the KERNPROP_MAX_ISA cap, and
static checks of every row's micro-kernel compiled for CPUs this machine may not have."""

import os
import re
import subprocess
import sys

import pytest

from kernprop import isa

# LLVM feature sets of real CPUs (the flags that matter to the table)
HASWELL = {"avx", "avx2", "fma", "sse4.2"}
ZEN4 = HASWELL | {"avx512f", "avx512bw", "avx512vl", "avx512bf16"}
SKYLAKE_SP = HASWELL | {"avx512f", "avx512bw", "avx512vl"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx-tile", "amx-bf16", "amx-int8"}


@pytest.mark.parametrize("features,machine,expected", [
    (set(), "x86_64", "generic"),
    ({"avx", "sse4.2"}, "x86_64", "generic"),  # Sandy Bridge: AVX without FMA
    (HASWELL, "x86_64", "avx2"),
    (SKYLAKE_SP, "x86_64", "avx512"),
    (ZEN4, "x86_64", "avx512_bf16"),
    (SAPPHIRE_RAPIDS, "x86_64", "amx"),
    ({"neon"}, "aarch64", "neon"),
    (HASWELL, "aarch64", "generic"),  # x86 features never pick x86 rows elsewhere
    (set(), "riscv64", "generic"),
])
def test_native_row_follows_the_cpu_features(features, machine, expected):
    assert isa.native_row(features, machine).name == expected


def test_the_cap_lowers_the_row_and_never_raises_it():
    amx = isa.ROWS["amx"]
    assert isa.capped("avx2", amx).name == "avx2"
    assert isa.capped("AVX512", amx).name == "avx512"
    assert isa.capped("generic", amx).name == "generic"
    assert isa.capped("", amx) is amx
    assert isa.capped("amx", isa.ROWS["avx2"]).name == "avx2"  # a cap above the CPU: its own row
    assert isa.capped("generic", isa.ROWS["neon"]).name == "generic"
    with pytest.raises(ValueError, match="avx3.*known: generic, avx2"):
        isa.capped("avx3", amx)
    with pytest.raises(ValueError, match="neon is a row for aarch64"):
        isa.capped("neon", amx)


def test_a_bad_cap_names_the_variable(monkeypatch):
    monkeypatch.setenv(isa.ENV_MAX_ISA, "sse9")
    with pytest.raises(ValueError, match="KERNPROP_MAX_ISA='sse9': unknown instruction set"):
        isa.active_row()


@pytest.mark.parametrize("row", list(isa.ROWS.values()), ids=list(isa.ROWS))
def test_every_tile_fits_its_registers(row):
    # accumulators + B vectors + one broadcast of A, in the row's vector registers
    for tile in (row.tile, row.cython_tile):
        assert tile.mr * tile.nvec + tile.nvec + 1 <= row.registers
    assert row.kernel_name("fp32") == f"fp32_{row.name}_{row.tile.mr}x{row.tile.cols(4)}"
    assert row.kernel_name("fp64").endswith(f"{row.tile.mr}x{row.tile.cols(8)}")


def test_blocking_keeps_an_a_panel_in_half_of_l1_and_a_b_block_in_half_of_l2():
    tile = isa.ROWS["avx2"].tile
    kc, mc, nc = isa.blocking(tile, 4, l1=32 * 1024, l2=512 * 1024)
    assert kc * tile.mr * 4 <= 16 * 1024 and kc % 16 == 0
    assert kc * nc * 4 <= 256 * 1024 and nc % tile.cols(4) == 0 and mc % tile.mr == 0


# --- static checks: each row's micro-kernel compiled for the CPUs of that row ------------
mk = pytest.importorskip("kernprop.kernels.numba_cpu.gemm.microkernels")

TARGETS = [("generic", "x86-64"), ("avx2", "haswell"), ("avx2", "znver3"), ("avx512", "skylake-avx512"),
           ("avx512_bf16", "znver4"), ("amx", "sapphirerapids"), ("neon", "neoverse-n1"),
           ("neon", "neoverse-v1"), ("neon", "apple-m1")]
FMA = {"x86_64": re.compile(r"\bv?fmadd\d+p[sd]|\bmulp[sd]"), "aarch64": re.compile(r"\bfmla\b")}
STACK = {"x86_64": re.compile(r"\(%rsp\)|%rsp\)|\(%rbp\)|%rbp\)"), "aarch64": re.compile(r"\[sp\b|\[x29\b")}


def _loops(asm):
    """The bodies of the loops in ``asm``: the lines from a label to the branch back to it."""
    lines = asm.splitlines()
    bodies = []
    for start, line in enumerate(lines):
        label = re.match(r"^(\.?L\w+):", line)
        if not label:
            continue
        for end in range(start + 1, len(lines)):
            if re.search(r"\b(j\w+|b\.\w+|b|cbnz|cbz)\s+" + re.escape(label.group(1)) + r"\b", lines[end]):
                bodies.append(lines[start:end + 1])
                break
    return bodies


@pytest.mark.parametrize("double", [False, True], ids=["fp32", "fp64"])
@pytest.mark.parametrize("row_name,cpu", TARGETS)
def test_micro_kernel_inner_loop_has_no_spills(row_name, cpu, double):
    row = isa.ROWS[row_name]
    arch = "aarch64" if row.arch == "aarch64" else "x86_64"
    asm = mk.compile_tile_for(row, cpu, double)
    loops = [body for body in _loops(asm) if any(FMA[arch].search(line) for line in body)]
    assert loops, f"no multiply-add loop in the {row_name} kernel for {cpu}:\n{asm[:2000]}"
    for body in loops:
        spills = [line.strip() for line in body if STACK[arch].search(line)]
        assert not spills, f"{row_name} on {cpu}: stack traffic in the inner loop: {spills[:5]}"
    # the loop runs on the row's vector width: ymm for avx2, zmm for the AVX-512 rows
    register = {16: "xmm" if arch == "x86_64" else "v", 32: "ymm", 64: "zmm"}[row.tile.vector_bytes]
    assert any(register in line for body in loops for line in body)


# --- the cap, end to end --------------------------------------------------------------

CHILD = """
import numpy as np, kernprop
from kernprop.kernels.numba_cpu import gemm
from kernprop.kernels.reference.matmul import product
rng = np.random.default_rng(0)
a = rng.standard_normal((37, 53)).astype(np.float32)
b = rng.standard_normal((53, 29)).astype(np.float32)
got = kernprop.matmul(a, b, backend="numba")
assert np.allclose(got, product(a, b, "fp32"), rtol=1e-5, atol=1e-4)
print(gemm.ROW.name, gemm.kernel_info()["fp32"])
if "cython" in kernprop.available_backends():
    from kernprop.kernels.cython import matmul
    got = kernprop.matmul(a, b, backend="cython")
    assert np.allclose(got, product(a, b, "fp32"), rtol=1e-5, atol=1e-4)
    print(matmul.available_kernels(), matmul.kernel_info()["fp32"])
"""


def test_the_cap_runs_the_generic_row_in_a_child_process(tmp_path):
    env = dict(os.environ, KERNPROP_MAX_ISA="generic", NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "generic"
    assert "fp32_generic_6x8" in done.stdout
    if "fp32_generic_4x8" not in done.stdout:  # the cython engine under the same cap
        assert "cython" not in done.stdout
    else:
        assert "['generic']" in done.stdout
    # the cache of the capped row sits apart from the native row's
    assert any("-generic-" in name for _, dirs, _ in os.walk(tmp_path) for name in dirs)


def test_the_speed_headline_names_the_row_and_checks_every_product():
    from kernprop import speed

    rates = speed.gemm_rates(shapes=((9, 31, 7),), block_s=0.01)
    assert set(rates[(9, 31, 7)]) >= {"numpy", "numba"}
    assert all(rate > 0 for rate in rates[(9, 31, 7)].values())
    text = speed.headline(rates, threads=2)
    assert f"GEMM row: {isa.active_row().name}" in text and "9x31x7: numpy" in text and "x," not in text.split("numpy")[0]
