#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: the cuda backend's tests on the device,
# a training run on it, and the GPU benchmarks against cuBLAS (CuPy) and PyTorch CUDA
# (the transformer ops too: gelu, layer_norm, attention, embedding, forward and
# backward), written to bench/RESULTS-gpu.md.  Under 8 minutes on an H100/H200.
#
#   bash bench/gpu.sh                # from the repository root, or anywhere
#
# Environment: PYTHON (default python3), OUT (folder for the logs; default
# bench/gpu-logs), KERNPROP_COMMIT (recorded in the page; default: git's HEAD),
# GPU_QUICK=1 (small shapes, a smoke test).  Installs kernprop[cuda,test] and CuPy with
# pip when they are missing; where pip cannot reach an index, have numba-cuda, pytest,
# torch and cupy installed beforehand.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PY=${PYTHON:-python3}
OUT=${OUT:-$root/bench/gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$root:$root/bench${PYTHONPATH:+:$PYTHONPATH}"
export KERNPROP_COMMIT=${KERNPROP_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export KERNPROP_SIGNATURES_DIR=$(mktemp -d)
status=0
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

step "device and packages"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
if ! $PY -c "import numba.cuda, pytest, torch, cupy" 2>/dev/null; then
    # a machine with an index: the project's own extras, and CuPy for cuBLAS
    $PY -m pip install -q -e "$root[cuda,test]" cupy-cuda12x torch || status=1
fi
# numba-cuda finds libNVVM in NVIDIA's wheels or CUDA_HOME; point it at the toolkit
# when the wheels are absent
if ! $PY -c "from numba import cuda; cuda.cudadrv.nvvm.NVVM()" 2>/dev/null; then
    for home in /usr/local/cuda /usr/local/cuda-*; do
        [ -d "$home/nvvm" ] || [ -e "$home/lib/libnvvm.so" ] || continue
        export CUDA_HOME=$home && break
    done
fi
$PY - <<'EOF' || status=1
import numba, numba.cuda as cuda, torch
print("numba", numba.__version__, "| torch", torch.__version__, torch.version.cuda, "| device", torch.cuda.get_device_name(0))
print("libNVVM", cuda.cudadrv.nvvm.NVVM().get_version(), "| driver", cuda.driver.driver.get_version())
import kernprop
print("kernprop backends:", {k: (v.available, v.reason) for k, v in kernprop.backends().items()})
EOF

step "tests: tests/cuda and every backend-parametrised test, on the cuda backend"
# -k cuda keeps the cuda parameter of the shared suite and the cuda-only files; each
# xdist worker compiles its own kernels, so a few workers, not one per core
workers=$($PY -c "import xdist" 2>/dev/null && echo "-n ${GPU_TEST_WORKERS:-4}")
# without the built extension (PYTHONPATH use, no pip install) its test module cannot import
$PY -c "import kernprop._cy.parallel" 2>/dev/null || workers="$workers --ignore=tests/test_cython_backend.py"
# (260 s: each worker compiles the kernels its tests start; the transformer ops' attention
# kernels take about 5 s each to compile)
timeout 260 $PY -m pytest tests -k "cuda" -q -p gpu_signatures -p no:cacheprovider \
    $workers --maxfail=50 -o addopts="" -rfE 2>&1 | tee "$OUT/tests.log" | tail -60
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "tests/cuda again with kernprop's caching allocator (kernels/numba_cuda/pool.py)"
NUMBA_CUDA_MEMORY_MANAGER=kernprop.kernels.numba_cuda.pool timeout 120 $PY -m pytest tests/cuda -q \
    -p no:cacheprovider -o addopts="" -rfE 2>&1 | tee "$OUT/tests-pool.log" | tail -15
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "training: kernprop train --backend cuda"
timeout 60 $PY -m kernprop.cli train --backend cuda --epochs 8 --batch-size 128 --hidden 256,128 \
    2>&1 | tee "$OUT/train.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "benchmarks against cuBLAS (CuPy) and PyTorch CUDA"
timeout 180 $PY bench/gpu_bench.py --out "$root/bench/RESULTS-gpu.md" ${GPU_QUICK:+--quick} \
    --tests-log "$OUT/tests.log" --train-log "$OUT/train.log" --signatures "$KERNPROP_SIGNATURES_DIR" \
    || status=1
step "the launch-bound benchmarks again with kernprop's caching allocator"
timeout 90 $PY bench/gpu_bench.py --pool --only mlp,small --out "$root/bench/RESULTS-gpu.md" || status=1
step "transformer ops (gelu, layer_norm, attention, embedding) forward and backward against PyTorch CUDA"
timeout 180 $PY bench/gpu_bench.py --only copy,transformer --append --out "$root/bench/RESULTS-gpu.md" \
    ${GPU_QUICK:+--quick} 2>&1 | tee "$OUT/transformer.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
cp "$root/bench/RESULTS-gpu.md" "$OUT/" 2>/dev/null || true

step "done, status $status"
exit $status
