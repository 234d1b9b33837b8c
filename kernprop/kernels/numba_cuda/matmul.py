"""CUDA GEMM and linear layer.

Kernels:
    gemm_kernel        out = op(a) @ op(b) (+ out) (+ bias), then an activation; op()
                       is the identity or a transpose *by indexing* (no transposed copy),
                       fixed per compiled variant.  Shared-memory tiles of BM x BK of
                       op(a) and BK x BN of op(b); each of the 16 x 16 threads keeps a
                       TM x TN = 4 x 4 register tile of outputs (``TILES``), so every
                       value read from shared memory feeds 4 multiply-adds (the register
                       blocking of Volkov & Demmel 2008, "Benchmarking GPUs to tune dense
                       linear algebra").
                       Edges: out-of-range loads read 0, stores are guarded.
    column_sum_kernel  db = sum of dy over rows (the bias gradient), deterministic.

``linear_forward`` fuses bias and activation into the GEMM's epilogue;
``linear_backward`` runs dx = dy @ w.T and dw = x.T @ dy through gemm_kernel with
transposed indexing, and db through column_sum_kernel.  Every ``precision`` runs the
float32 kernel for now (more accurate than "bf16x3" or "bf16" asks: see
``kernprop.precision``); ``kernel_info`` says so.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import cuda

from ._common import any_device, cdiv, dummy, finish, numba_type, to_device
from .activations import CODES, scalar_functions

# Every GEMM block is 16 x 16 = 256 threads; each thread keeps a TM x TN register tile.
THREADS_Y, THREADS_X = 16, 16
THREADS = THREADS_X * THREADS_Y


class Tiles:
    """Block tile of one dtype: BM x BN outputs per block, staged BK deep through shared
    memory, TM x TN of them per thread (BM = 16 TM, BN = 16 TN)."""

    def __init__(self, tm, tn, bk):
        self.tm, self.tn, self.bk = tm, tn, bk
        self.bm, self.bn = THREADS_Y * tm, THREADS_X * tn
        # elements of each operand tile one thread stages per step
        self.a_loads = self.bm * bk // THREADS
        self.b_loads = bk * self.bn // THREADS


# 64 x 64 blocks of 4 x 4 per thread, 16 deep, for both dtypes.  Measured on an H200
# (bench/RESULTS-gpu.md), SGEMM 4096^3 ran at 14.3-14.5 TFLOP/s so, and at 12.5 with
# float32 on 128 x 128 blocks of 8 x 8, 8 deep (no spills, 127 registers, 2 blocks per
# multiprocessor): more reuse per shared-memory read did not pay for half the warps to
# hide the unbuffered tile loads, so the smaller tile stays until the loads overlap.
TILES = {np.dtype(np.float32): Tiles(4, 4, 16), np.dtype(np.float64): Tiles(4, 4, 16)}

COLSUM_X, COLSUM_Y = 32, 8  # column-sum block: 32 columns, 8 row-strided partial sums


@lru_cache(maxsize=None)
def _gemm_kernel(dtype, trans_a, trans_b):
    """gemm_kernel for one dtype and one choice of transposes (compile-time constants,
    so the untaken indexing branch disappears)."""
    T = numba_type(dtype)
    _, _, _, activate = scalar_functions(np.dtype(dtype))
    tiles = TILES[np.dtype(dtype)]
    # Frozen into the kernel as constants (a shared array's shape must be constants).
    BM, BN, BK, TM, TN = tiles.bm, tiles.bn, tiles.bk, tiles.tm, tiles.tn
    A_LOADS, B_LOADS = tiles.a_loads, tiles.b_loads
    # Tile rows of BM + 1 words: staging stores that walk down a tile column (consecutive
    # kk) then hit different shared-memory banks, instead of one bank BK times.
    A_TILE_ROW, B_TILE_ROW = BM + 1, BN + 1

    @cuda.jit
    def gemm_kernel(a, b, bias, out, has_bias, activation, accumulate):
        # a (M, K) or, trans_a, (K, M); b (K, N) or, trans_b, (N, K); bias (N,) -> out (M, N)
        m = out.shape[0]
        n = out.shape[1]
        k = b.shape[1] if trans_b else b.shape[0]
        # Both tiles are stored depth-major, so step kk of the inner loop reads one row
        # of each: a_tile[kk, rows of this thread], b_tile[kk, columns of this thread].
        a_tile = cuda.shared.array((BK, A_TILE_ROW), T)
        b_tile = cuda.shared.array((BK, B_TILE_ROW), T)
        acc = cuda.local.array((TM, TN), T)
        a_frag = cuda.local.array(TM, T)
        b_frag = cuda.local.array(TN, T)

        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * THREADS_X + tx
        row0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = T(0)

        for k0 in range(0, k, BK):
            # Stage the tiles.  Consecutive threads take consecutive addresses of the
            # operand as it lies in memory (along K for a, along M for a transposed), so
            # global loads coalesce whichever way the operand is indexed.
            for load in range(A_LOADS):
                e = tid + load * THREADS
                if trans_a:
                    kk = e // BM
                    i = e % BM
                else:
                    i = e // BK
                    kk = e % BK
                gi = row0 + i
                gk = k0 + kk
                value = T(0)
                if gi < m and gk < k:
                    value = a[gk, gi] if trans_a else a[gi, gk]
                a_tile[kk, i] = value
            for load in range(B_LOADS):
                e = tid + load * THREADS
                if trans_b:
                    j = e // BK
                    kk = e % BK
                else:
                    kk = e // BN
                    j = e % BN
                gj = col0 + j
                gk = k0 + kk
                value = T(0)
                if gj < n and gk < k:
                    value = b[gj, gk] if trans_b else b[gk, gj]
                b_tile[kk, j] = value
            cuda.syncthreads()

            for kk in range(BK):
                # Thread (ty, tx) owns rows ty + 16 i and columns tx + 16 j: a warp reads
                # 2 distinct a_tile words (broadcast) and 16 consecutive b_tile words (no
                # bank conflict), and its stores to out are consecutive columns.
                for i in range(TM):
                    a_frag[i] = a_tile[kk, ty + i * THREADS_Y]
                for j in range(TN):
                    b_frag[j] = b_tile[kk, tx + j * THREADS_X]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += a_frag[i] * b_frag[j]
            cuda.syncthreads()  # the tiles are overwritten by the next stage

        # Epilogue, fused so the output makes one trip to memory: (+ out) (+ bias) act().
        for i in range(TM):
            r = row0 + ty + i * THREADS_Y
            if r < m:
                for j in range(TN):
                    c = col0 + tx + j * THREADS_X
                    if c < n:
                        value = acc[i, j]
                        if accumulate:
                            value += out[r, c]
                        if has_bias:
                            value += bias[c]
                        out[r, c] = activate(activation, value)

    return gemm_kernel


@lru_cache(maxsize=None)
def _column_sum_kernel(dtype):
    @cuda.jit
    def column_sum_kernel(dy, db, accumulate):
        # dy (N, C) -> db (C,) (+= when accumulate)
        # Threads (tx, ty) of a block take 32 columns; each sums rows ty, ty + 8, ...
        # (coalesced: a warp reads 32 consecutive columns of one row) in float64, then
        # thread ty == 0 adds the 8 partials in a fixed order: deterministic, no atomics.
        partial = cuda.shared.array((COLSUM_Y, COLSUM_X), np.float64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        c = cuda.blockIdx.x * COLSUM_X + tx
        total = 0.0
        if c < dy.shape[1]:
            for r in range(ty, dy.shape[0], COLSUM_Y):
                total += dy[r, c]
        partial[ty, tx] = total
        cuda.syncthreads()
        if ty == 0 and c < dy.shape[1]:
            for y in range(1, COLSUM_Y):
                total += partial[y, tx]
            if accumulate:
                total += db[c]
            db[c] = total

    return column_sum_kernel


# --- launchers on device arrays (used by losses.linear_cross_entropy too) --------------


def gemm(a, b, out, *, trans_a=False, trans_b=False, bias=None, activation=None, accumulate=False):
    """out (M, N) = op(a) @ op(b) (+ out) (+ bias), then the activation; device arrays."""
    dtype = np.dtype(out.dtype)
    m, n = out.shape
    kernel = _gemm_kernel(dtype, bool(trans_a), bool(trans_b))
    tiles = TILES[dtype]
    grid = (cdiv(n, tiles.bn), cdiv(m, tiles.bm))
    kernel[grid, (THREADS_X, THREADS_Y)](
        a, b, dummy(dtype) if bias is None else bias, out,
        bias is not None, CODES[activation], bool(accumulate),
    )
    return out


def column_sum(dy, db, *, accumulate=False):
    """db (C,) = dy.sum(axis=0) (+ db); device arrays."""
    kernel = _column_sum_kernel(np.dtype(dy.dtype))
    kernel[cdiv(dy.shape[1], COLSUM_X), (COLSUM_X, COLSUM_Y)](dy, db, bool(accumulate))
    return db


def kernel_info():
    """Which kernel each float32 matmul precision runs on this backend."""
    return {precision: "fp32 shared-memory tiles (no bf16 kernel yet)" for precision in ("fp32", "bf16x3", "bf16")}


# --- the contract ---------------------------------------------------------------------


def matmul(a, b, precision="fp32"):
    # a (M, K), b (K, N) -> (M, N)
    on_device = any_device(a, b)
    da, db_ = to_device(a), to_device(b)
    out = cuda.device_array((da.shape[0], db_.shape[1]), dtype=np.dtype(da.dtype))
    return finish(gemm(da, db_, out), on_device)


def linear_forward(x, w, b, activation, precision="fp32"):
    # x (N, IN), w (IN, OUT), b (OUT,) or None -> activation(x @ w + b) (N, OUT)
    on_device = any_device(x, w, b)
    dx, dw = to_device(x), to_device(w)
    out = cuda.device_array((dx.shape[0], dw.shape[1]), dtype=np.dtype(dx.dtype))
    gemm(dx, dw, out, bias=to_device(b), activation=activation)
    return finish(out, on_device)


def linear_backward(x, w, dy, has_bias, need_dx=True, precision="fp32"):
    # y = x @ w + b: dx = dy @ w.T (N, IN), dw = x.T @ dy (IN, OUT), db = dy.sum(0) (OUT,)
    on_device = any_device(x, w, dy)
    d_x, d_w, d_dy = to_device(x), to_device(w), to_device(dy)
    dtype = np.dtype(d_x.dtype)
    grad_x = None
    if need_dx:
        grad_x = cuda.device_array(d_x.shape, dtype=dtype)
        gemm(d_dy, d_w, grad_x, trans_b=True)
    grad_w = cuda.device_array(d_w.shape, dtype=dtype)
    gemm(d_x, d_dy, grad_w, trans_a=True)
    grad_b = None
    if has_bias:
        grad_b = column_sum(d_dy, cuda.device_array(d_dy.shape[1], dtype=dtype))
    return finish(grad_x, on_device), finish(grad_w, on_device), finish(grad_b, on_device)
