"""Where a small CUDA op's time goes (launch-bound shapes): the pieces of one
``kernprop.relu`` call on a device array timed apart, then cProfile of the MLP step of
``gpu_bench.py``.  Run on a GPU: ``python bench/gpu_profile.py``."""

import cProfile
import pstats
import time

import numpy as np
from numba import cuda

import kernprop
from kernprop.kernels.numba_cuda import activations
from kernprop.kernels.numba_cuda._common import elementwise_grid, to_device_flat


def per_call(fn, reps=300):
    fn()
    cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e6


def main():
    x = cuda.to_device(np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32))
    flat = x.reshape(256 * 512)
    out = cuda.device_array(256 * 512, np.float32)
    kernel = activations._kernels(np.dtype(np.float32))["relu_forward"]
    blocks, threads = elementwise_grid(256 * 512)
    pieces = {
        "kernprop.relu (all of it)": lambda: kernprop.relu(x, backend="cuda"),
        "bare launch, preallocated": lambda: kernel[blocks, threads](flat, out),
        "cuda.device_array(131072)": lambda: cuda.device_array(256 * 512, np.float32),
        "to_device_flat (reshape)": lambda: to_device_flat(x),
        "DeviceNDArray.reshape(256, 512)": lambda: out.reshape((256, 512)),
        "kernel[blocks, threads] (configure only)": lambda: kernel[blocks, threads],
    }
    for name, fn in pieces.items():
        print(f"{name:44} {per_call(fn):8.1f} us/call", flush=True)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(300):
        kernprop.relu(x, backend="cuda")
    cuda.synchronize()
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
