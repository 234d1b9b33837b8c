"""Pieces every CUDA family module shares: moving arrays between host and device, launch
geometry, and the warp/block reductions of the row kernels.

Host and device arrays.  A launcher takes NumPy arrays (copied, C-contiguous, to the
device, and the result copied back) or device arrays (Numba's own, the simulator's, or
anything with ``__cuda_array_interface__``); it returns device arrays when any input was
one, so that a chain of ops on the device never touches the host.

Reductions.  Row kernels (softmax, cross-entropy) run one block per row and reduce over
the block in two steps: a butterfly of warp shuffles (``shfl_xor_sync``), after which
every lane holds the warp's total, then one value per warp through shared memory, reduced
by every warp the same way.  The butterfly (rather than ``shfl_down_sync``) leaves the
result in every thread, so no broadcast through shared memory is needed, and it is
deterministic: lanes ``i`` and ``i ^ k`` add the same two numbers, and ``a + b == b + a``
exactly in floating point, so all lanes agree bit for bit.  Every thread of the block
calls the reductions (never only some warps): full-mask shuffles need whole warps, and the
simulator's emulation below needs the whole block.  ``group_sum`` and ``group_max`` are
the first log2(width) steps of the same butterfly: each aligned group of ``width`` lanes
(the lanes that share one attention row) gets its own total.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import numba
import numpy as np
from numba import cuda

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)

WARP = 32
MAX_WARPS = 32  # 1024 threads per block at most: one shared slot per warp
FULL_MASK = 0xFFFFFFFF
ROW_THREADS = 256  # threads of a row kernel's block once the row is wider than that
ELEMENTWISE_THREADS = 256
MAX_GRID = 4096  # elementwise grids stop here; the grid-stride loop covers the rest
NEG_INF = -math.inf  # a frozen constant: "-math.inf" in a kernel is a float64 negation


# --- host <-> device ------------------------------------------------------------------


def is_device(x) -> bool:
    """A device array: Numba's (real or simulated, both mark ``__cuda_ndarray__``) or
    any object exporting ``__cuda_array_interface__``."""
    if x is None or isinstance(x, np.ndarray):
        return False
    return bool(getattr(x, "__cuda_ndarray__", False)) or hasattr(x, "__cuda_array_interface__")


def any_device(*arrays) -> bool:
    return any(is_device(x) for x in arrays)


def to_device(x):
    """The device array a kernel reads: NumPy arrays are copied (C-contiguous first, so
    the copy is one transfer and the kernel gets the fast 'C' layout); device arrays are
    used in place, with their strides."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(x))
    if getattr(x, "__cuda_ndarray__", False):
        return x
    return cuda.as_cuda_array(x)


def to_device_flat(x):
    """``x`` as a C-contiguous 1-D device array (a view when it already is contiguous),
    for the elementwise kernels, which are the same for any shape."""
    d = to_device(x)
    if not d.is_c_contiguous():
        # A strided device array (a transposed view, a slice): go through the host once
        # rather than teach every elementwise kernel about strides.
        d = cuda.to_device(np.ascontiguousarray(d.copy_to_host()))
    return d.reshape(int(np.prod(d.shape)))


def finish(d, on_device: bool):
    """What a launcher returns: the device array itself, or its copy on the host."""
    if d is None or on_device:
        return d
    return d.copy_to_host()


@lru_cache(maxsize=None)
def dummy(dtype, ndim=1):
    """A one-element device array standing in for an absent optional argument (no bias,
    no class weights, no gradient): kernels take a flag and never touch it.  Cached, so
    an absent argument costs no allocation per launch."""
    return cuda.device_array((1,) * ndim, dtype=np.dtype(dtype))


@lru_cache(maxsize=None)
def numba_type(dtype):
    return numba.from_dtype(np.dtype(dtype))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def row_threads(width: int) -> int:
    """Threads of a one-block-per-row kernel: whole warps, no more than the row needs."""
    return min(ROW_THREADS, max(WARP, cdiv(width, WARP) * WARP))


def elementwise_grid(n: int):
    threads = min(ELEMENTWISE_THREADS, max(WARP, cdiv(n, WARP) * WARP))
    return min(MAX_GRID, cdiv(n, threads)), threads


# --- warp reductions ------------------------------------------------------------------


@cuda.jit(device=True, inline=True)
def merge_max_sum(m1, s1, m2, s2):
    # Two online-softmax partials (max m, sum of exp(x - m)) -> one (Milakov & Gimelshein
    # 2018, "Online normalizer calculation for softmax").  Both maxima -inf means both
    # sums are empty: exp(-inf - -inf) would be nan, so keep the sum at 0.
    m = max(m1, m2)
    if m == NEG_INF:
        return m, s1
    return m, s1 * math.exp(m1 - m) + s2 * math.exp(m2 - m)


if SIMULATOR:
    # The simulator (numba-cuda 0.30) has no warp shuffles, and runs each thread of a
    # block as a Python thread.  A warp reduction becomes a block-wide exchange: every
    # thread posts its value, all wait at a barrier, then each replays the butterfly
    # below on its warp's values.  Correct only when every thread of the block calls it,
    # which the block reductions do.  Two boards used in turn make one barrier per
    # reduction enough (a thread can only post to a board again once every thread has
    # passed the barrier after its last read of it); a barrier costs milliseconds here.
    def _warp_values(value):
        thread = threading.current_thread()
        turn = getattr(thread, "_kernprop_turn", 0)
        thread._kernprop_turn = 1 - turn
        boards = thread._manager.__dict__.setdefault("_kernprop_boards", ({}, {}))
        boards[turn][thread.thread_id] = value
        thread.syncthreads()
        first = thread.thread_id - thread.thread_id % WARP
        return [boards[turn][first + lane] for lane in range(WARP)], thread.thread_id % WARP

    def warp_sum(value):
        values, lane = _warp_values(value)
        offset = WARP // 2
        while offset > 0:
            values = [values[i] + values[i ^ offset] for i in range(WARP)]
            offset //= 2
        return values[lane]

    def warp_max_sum(m, s):
        pairs, lane = _warp_values((m, s))
        offset = WARP // 2
        while offset > 0:
            pairs = [merge_max_sum(*pairs[i], *pairs[i ^ offset]) for i in range(WARP)]
            offset //= 2
        return pairs[lane]

    def group_sum(value, width):
        values, lane = _warp_values(value)
        offset = width // 2
        while offset > 0:
            values = [values[i] + values[i ^ offset] for i in range(WARP)]
            offset //= 2
        return values[lane]

    def group_max(value, width):
        values, lane = _warp_values(value)
        offset = width // 2
        while offset > 0:
            values = [max(values[i], values[i ^ offset]) for i in range(WARP)]
            offset //= 2
        return values[lane]

else:

    @cuda.jit(device=True, inline=True)
    def warp_sum(value):
        # butterfly: after log2(32) exchanges every lane holds the sum of the warp
        offset = WARP // 2
        while offset > 0:
            value += cuda.shfl_xor_sync(FULL_MASK, value, offset)
            offset //= 2
        return value

    @cuda.jit(device=True, inline=True)
    def warp_max_sum(m, s):
        offset = WARP // 2
        while offset > 0:
            other_m = cuda.shfl_xor_sync(FULL_MASK, m, offset)
            other_s = cuda.shfl_xor_sync(FULL_MASK, s, offset)
            m, s = merge_max_sum(m, s, other_m, other_s)
            offset //= 2
        return m, s

    @cuda.jit(device=True, inline=True)
    def group_sum(value, width):
        # the sum over each aligned group of ``width`` lanes (a power of two <= 32, a
        # compile-time constant), in every lane of the group: the butterfly's first
        # log2(width) exchanges never leave the group
        offset = width // 2
        while offset > 0:
            value += cuda.shfl_xor_sync(FULL_MASK, value, offset)
            offset //= 2
        return value

    @cuda.jit(device=True, inline=True)
    def group_max(value, width):
        # the max over each aligned group of ``width`` lanes, as group_sum
        offset = width // 2
        while offset > 0:
            value = max(value, cuda.shfl_xor_sync(FULL_MASK, value, offset))
            offset //= 2
        return value


# --- block reductions -----------------------------------------------------------------
# ``scratch`` is a shared array of MAX_WARPS slots allocated by the calling kernel (shared
# arrays need a compile-time dtype, which the kernel factories know); each reduction ends
# with a barrier so the next one may reuse it.


@cuda.jit(device=True, inline=True)
def block_sum(value, scratch, zero):
    # value: one per thread -> the sum over the block, in every thread
    lane = cuda.threadIdx.x % WARP
    warp = cuda.threadIdx.x // WARP
    num_warps = cuda.blockDim.x // WARP
    value = warp_sum(value)
    if num_warps == 1:  # one warp: done, no shared memory or barrier needed
        return value
    if lane == 0:
        scratch[warp] = value
    cuda.syncthreads()
    value = scratch[lane] if lane < num_warps else zero
    value = warp_sum(value)
    cuda.syncthreads()  # scratch may be reused by the next reduction
    return value


@cuda.jit(device=True, inline=True)
def block_max_sum(m, s, scratch_m, scratch_s, empty_m, empty_s):
    # per-thread online partials -> the block's (max, sum of exp(x - max)), in every thread
    lane = cuda.threadIdx.x % WARP
    warp = cuda.threadIdx.x // WARP
    num_warps = cuda.blockDim.x // WARP
    m, s = warp_max_sum(m, s)
    if num_warps == 1:  # one warp: done, no shared memory or barrier needed
        return m, s
    if lane == 0:
        scratch_m[warp] = m
        scratch_s[warp] = s
    cuda.syncthreads()
    if lane < num_warps:
        m = scratch_m[lane]
        s = scratch_s[lane]
    else:
        m = empty_m
        s = empty_s
    m, s = warp_max_sum(m, s)
    cuda.syncthreads()
    return m, s


@cuda.jit(device=True, inline=True)
def log_of_sum(s, nan):
    # log(sum(exp(x - max))), for log_softmax = (x - max) - log(s): subtracting max first
    # keeps x - max exact for the large logits near the max (max + log(s) would round to
    # the spacing of max, 1e-3 at 1e4 in float32).  s == 0 only for a row of all -inf:
    # PyTorch gives nan there, and log(0) would raise on the simulator.
    if s > 0:
        return math.log(s)
    return nan
