"""CUDA fused scaled dot-product attention, forward and backward (FlashAttention-2).

Kernels (Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning", Algorithms 1 and 2, on CUDA cores: no tensor cores, so every precision
runs in the dtype's full precision, float32 or float64):
    attention_forward_kernel        a block per (batch x head, tile of BM queries).  The
                                    query tile sits in shared memory for the whole pass;
                                    key tiles of BN rows, then the matching value tiles,
                                    go through one shared buffer in turn.  Each thread
                                    holds a TM x TN register tile of the scores and a
                                    TM x TV tile of the output; a row's max is reduced over
                                    the TX lanes that share it by shuffles
                                    (``_common.group_max``), its sum of exponentials only
                                    once at the end (each lane keeps its own partial sum,
                                    rescaled with the row's running max: the online softmax
                                    of Milakov & Gimelshein 2018).  out = acc / l and
                                    lse = m + log(l) are written once; no (Lq, Lk) matrix
                                    exists anywhere, in global or shared memory.
    attention_delta_kernel          delta = rowsum(dout * out), a warp per row.
    attention_backward_dkdv_kernel  a block per (batch x head, tile of B keys): K and V of
                                    the tile stay in shared memory while the query tiles
                                    stream past; P = exp(S scale - lse) is recomputed from
                                    the forward's lse, dS = P (dP - delta), and
                                    dV += P^T dO, dK += dS^T Q accumulate in registers.
    attention_backward_dq_kernel    a block per (batch x head, tile of B queries): dQ +=
                                    dS K over the key tiles, S and dP recomputed.  A second
                                    pass instead of FlashAttention-2's atomic adds into dQ:
                                    deterministic, the same bits on every run, for 3 more
                                    tile products out of 7.

``causal`` masks key j > i (top-left aligned, as PyTorch, also when Lq != Lk): the
forward and the dQ pass stop at the query tile's last row, the dK/dV pass starts at the
first query tile that can see the key tile.  Every query sees key 0, so no row is ever
fully masked and the running max is finite after the first key tile.

Head dimensions: shared arrays need compile-time shapes, so each kernel is compiled for
a largest head dimension ``head`` in ``HEADS`` (64 or 128) with the tiles of ``TILES``,
and the launcher picks the smallest that holds max(D, Dv).  D or Dv above 128 is a
ValueError.  Every tile fits the 48 KiB of static shared memory per block.

Stability: exp only sees scores minus the running max (forward) or minus the row's lse
(backward), both <= 0 up to rounding, so scores of +-1e4 neither overflow nor lose the
softmax; masked scores are -inf and add exp(-inf) = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import cuda

from ._common import (
    NEG_INF,
    WARP,
    any_device,
    cdiv,
    finish,
    group_max,
    group_sum,
    numba_type,
    to_device,
    to_device_flat,
    warp_sum,
)

HEADS = (64, 128)  # the compiled largest head dimensions; D, Dv <= HEADS[-1]


@dataclass(frozen=True)
class Tiles:
    """One kernel's tiling for one dtype and largest head dimension ``head``.

    bm, bn   query rows and key rows of a tile
    ty, tx   the block's threads as ty rows of tx lanes (tx lanes share a query row)
    """

    head: int
    bm: int
    bn: int
    ty: int
    tx: int

    @property
    def threads(self) -> int:
        return self.ty * self.tx

    @property
    def tm(self) -> int:  # query rows per thread
        return self.bm // self.ty

    @property
    def tn(self) -> int:  # keys per thread in the score tile
        return self.bn // self.tx

    @property
    def tv(self) -> int:  # output columns per thread
        return self.head // self.tx


F4, F8 = np.dtype(np.float32), np.dtype(np.float64)

# Forward: shared memory is q (head x bm+1), one buffer for k (head x bn+1) then v
# (bn x head), and p (bm x bn+1): 33 to 42 KiB.  Per thread: TM x TN scores and TM x TV
# outputs (16 to 32 accumulators).
FORWARD_TILES = {
    (F4, 64): Tiles(64, bm=64, bn=32, ty=16, tx=8),
    (F4, 128): Tiles(128, bm=32, bn=32, ty=16, tx=8),
    (F8, 64): Tiles(64, bm=32, bn=32, ty=16, tx=8),
    (F8, 128): Tiles(128, bm=16, bn=16, ty=8, tx=8),
}
# Backward: square tiles (bm = bn = ty: one query row or key per thread row); shared
# memory is q, dO, k, v (head x b+1 each) and p, dS (b x b+1): 37 to 43 KiB.  Per thread:
# TV columns of dK and of dV (dK/dV pass) or of dQ (dQ pass).
BACKWARD_TILES = {
    (F4, 64): Tiles(64, bm=32, bn=32, ty=32, tx=8),
    (F4, 128): Tiles(128, bm=16, bn=16, ty=16, tx=8),
    (F8, 64): Tiles(64, bm=16, bn=16, ty=16, tx=8),
    (F8, 128): Tiles(128, bm=8, bn=8, ty=8, tx=8),
}
DELTA_WARPS = 4  # rows per block of attention_delta_kernel


def head_for(depth: int, depth_v: int) -> int:
    """The smallest compiled head dimension holding D and Dv; ValueError above them all."""
    for head in HEADS:
        if max(depth, depth_v) <= head:
            return head
    raise ValueError(
        f"the cuda backend's attention holds head dimensions up to {HEADS[-1]} "
        f"(shared-memory tiles), got D={depth}, Dv={depth_v}; use the numba or numpy backend"
    )


@lru_cache(maxsize=None)
def _forward_kernel(dtype, head):
    T = numba_type(dtype)
    t = FORWARD_TILES[(np.dtype(dtype), head)]
    HEAD, BM, BN, TY, TX, TM, TN, TV, THREADS = t.head, t.bm, t.bn, t.ty, t.tx, t.tm, t.tn, t.tv, t.threads
    # Depth-major tiles with rows of BM + 1 / BN + 1 words: the staging stores of
    # consecutive d (one row of q or k in memory) land in different banks.
    Q_ROW, K_ROW = BM + 1, BN + 1
    KV_SIZE = max(HEAD * K_ROW, BN * HEAD)  # k as (HEAD, BN + 1), then v as (BN, HEAD)

    @cuda.jit
    def attention_forward_kernel(q, k, v, scale, causal, out, lse):
        # q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) -> out (B, H, Lq, Dv), lse (B, H, Lq)
        q_s = cuda.shared.array((HEAD, Q_ROW), T)
        kv_s = cuda.shared.array(KV_SIZE, T)
        p_s = cuda.shared.array((BM, K_ROW), T)
        s = cuda.local.array((TM, TN), T)
        acc = cuda.local.array((TM, TV), T)
        m = cuda.local.array(TM, T)
        l = cuda.local.array(TM, T)  # this lane's share of the row's sum of exp(s - m)
        a_frag = cuda.local.array(TM, T)
        b_frag = cuda.local.array(TN, T)

        heads = q.shape[1]
        lq = q.shape[2]
        lk = k.shape[2]
        depth = q.shape[3]
        depth_v = v.shape[3]
        tiles = (lq + BM - 1) // BM
        bh = cuda.blockIdx.x // tiles
        q0 = (cuda.blockIdx.x - bh * tiles) * BM
        b = bh // heads
        h = bh - b * heads
        tid = cuda.threadIdx.x
        ty = tid // TX
        tx = tid - ty * TX
        sc = T(scale)

        # the query tile, transposed: consecutive threads read consecutive d (coalesced)
        for e in range(tid, BM * depth, THREADS):
            r = e // depth
            d = e - r * depth
            value = T(0)
            if q0 + r < lq:
                value = q[b, h, q0 + r, d]
            q_s[d, r] = value
        for i in range(TM):
            m[i] = T(NEG_INF)
            l[i] = T(0)
            for c in range(TV):
                acc[i, c] = T(0)

        key_end = min(lk, q0 + BM) if causal else lk  # keys past the tile's last row: masked
        for k0 in range(0, key_end, BN):
            keys = min(BN, key_end - k0)
            cuda.syncthreads()  # the last tile's reads of kv_s and p_s are done
            for e in range(tid, keys * depth, THREADS):
                n = e // depth
                d = e - n * depth
                kv_s[d * K_ROW + n] = k[b, h, k0 + n, d]
            cuda.syncthreads()

            # S = Q K^T on the thread's rows ty + TY i and keys tx + TX j (key columns past
            # ``keys`` hold stale values: masked below, never used)
            for i in range(TM):
                for j in range(TN):
                    s[i, j] = T(0)
            for d in range(depth):
                for i in range(TM):
                    a_frag[i] = q_s[d, ty + i * TY]
                for j in range(TN):
                    b_frag[j] = kv_s[d * K_ROW + tx + j * TX]
                for i in range(TM):
                    for j in range(TN):
                        s[i, j] += a_frag[i] * b_frag[j]

            # online softmax: the row's new max over the TX lanes, rescale, P to shared
            for i in range(TM):
                row = q0 + ty + i * TY
                tile_max = T(NEG_INF)
                for j in range(TN):
                    col = k0 + tx + j * TX
                    value = T(NEG_INF)
                    if col < key_end and (not causal or col <= row):
                        value = s[i, j] * sc
                    s[i, j] = value
                    tile_max = max(tile_max, value)
                new_m = max(m[i], group_max(tile_max, TX))
                alpha = T(1)
                if new_m != NEG_INF:  # else nothing seen yet: exp(-inf - -inf) would be nan
                    alpha = math.exp(m[i] - new_m)
                partial = T(0)
                for j in range(TN):
                    p = T(0)
                    if new_m != NEG_INF:
                        p = math.exp(s[i, j] - new_m)
                    p_s[ty + i * TY, tx + j * TX] = p
                    partial += p
                l[i] = l[i] * alpha + partial
                m[i] = new_m
                for c in range(TV):
                    acc[i, c] *= alpha
            cuda.syncthreads()  # p_s is written and nobody reads k from kv_s any more

            for e in range(tid, keys * depth_v, THREADS):
                n = e // depth_v
                c = e - n * depth_v
                kv_s[n * HEAD + c] = v[b, h, k0 + n, c]
            cuda.syncthreads()

            # acc += P V on the thread's rows and columns tx + TX c (a warp reads TX
            # consecutive words of v and broadcasts p)
            for n in range(keys):
                for i in range(TM):
                    a_frag[i] = p_s[ty + i * TY, n]
                for c in range(TV):
                    col = tx + c * TX
                    if col < depth_v:
                        value = kv_s[n * HEAD + col]
                        for i in range(TM):
                            acc[i, c] += a_frag[i] * value

        for i in range(TM):
            total = group_sum(l[i], TX)  # every lane calls it: whole warps shuffle
            row = q0 + ty + i * TY
            if row < lq:
                inv = T(1) / total  # total >= 1: the max contributes exp(0)
                for c in range(TV):
                    col = tx + c * TX
                    if col < depth_v:
                        out[b, h, row, col] = acc[i, c] * inv
                if tx == 0:
                    lse[b, h, row] = m[i] + math.log(total)

    return attention_forward_kernel


@lru_cache(maxsize=None)
def _delta_kernel(dtype):
    T = numba_type(dtype)

    @cuda.jit
    def attention_delta_kernel(out, dout, delta):
        # out, dout (B, H, Lq, Dv) -> delta (B, H, Lq) = rowsum(dout * out); a warp per row
        heads = out.shape[1]
        lq = out.shape[2]
        g = cuda.blockIdx.x * DELTA_WARPS + cuda.threadIdx.x // WARP
        lane = cuda.threadIdx.x % WARP
        bh = g // lq
        i = g - bh * lq
        b = bh // heads
        h = bh - b * heads
        partial = T(0)
        if b < out.shape[0]:
            for c in range(lane, out.shape[3], WARP):
                partial += dout[b, h, i, c] * out[b, h, i, c]
        total = warp_sum(partial)  # every thread, also past the last row: whole warps
        if lane == 0 and b < out.shape[0]:
            delta[b, h, i] = total

    return attention_delta_kernel


@lru_cache(maxsize=None)
def _backward_kernels(dtype, head):
    T = numba_type(dtype)
    t = BACKWARD_TILES[(np.dtype(dtype), head)]
    HEAD, BT, TX, TN, TV, THREADS = t.head, t.bm, t.tx, t.tn, t.tv, t.threads
    ROW = BT + 1  # depth-major tiles (HEAD, BT + 1): conflict-free stores and column reads

    @cuda.jit(device=True, inline=True)
    def stage_rows(x, b, h, start, count, width, tile, tid):
        # rows start .. start + count of x[b, h] (count <= BT) -> tile[column, row]
        for e in range(tid, count * width, THREADS):
            r = e // width
            c = e - r * width
            tile[c, r] = x[b, h, start + r, c]

    @cuda.jit(device=True, inline=True)
    def probabilities(q_s, k_s, do_s, v_s, lse_s, delta_s, ty, tx, rows, row, k0, key_end,
                      depth, depth_v, sc, causal, s, dp, j_out_p, j_out_ds):
        # the thread's row ty of the query tile against keys tx + TX j of the key tile:
        # P = exp(S scale - lse), dS = P (dP - delta) -> j_out_p[j], j_out_ds[j]
        for j in range(TN):
            s[j] = T(0)
            dp[j] = T(0)
        if ty < rows:
            for d in range(depth):
                a = q_s[d, ty]
                for j in range(TN):
                    s[j] += a * k_s[d, tx + j * TX]
            for c in range(depth_v):
                a = do_s[c, ty]
                for j in range(TN):
                    dp[j] += a * v_s[c, tx + j * TX]
        for j in range(TN):
            col = k0 + tx + j * TX
            p = T(0)
            ds = T(0)
            if ty < rows and col < key_end and (not causal or col <= row):
                p = math.exp(s[j] * sc - lse_s[ty])
                ds = p * (dp[j] - delta_s[ty])
            j_out_p[j] = p
            j_out_ds[j] = ds

    @cuda.jit
    def attention_backward_dkdv_kernel(q, k, v, dout, lse, delta, scale, causal, dk, dv):
        # q, dout (B, H, Lq, D / Dv), k, v (B, H, Lk, D / Dv), lse, delta (B, H, Lq)
        #   -> dk (B, H, Lk, D), dv (B, H, Lk, Dv); block = one tile of BT keys
        k_s = cuda.shared.array((HEAD, ROW), T)
        v_s = cuda.shared.array((HEAD, ROW), T)
        q_s = cuda.shared.array((HEAD, ROW), T)
        do_s = cuda.shared.array((HEAD, ROW), T)
        p_s = cuda.shared.array((BT, ROW), T)
        ds_s = cuda.shared.array((BT, ROW), T)
        lse_s = cuda.shared.array(BT, T)
        delta_s = cuda.shared.array(BT, T)
        s = cuda.local.array(TN, T)
        dp = cuda.local.array(TN, T)
        p = cuda.local.array(TN, T)
        ds = cuda.local.array(TN, T)
        acc_k = cuda.local.array(TV, T)
        acc_v = cuda.local.array(TV, T)

        heads = q.shape[1]
        lq = q.shape[2]
        lk = k.shape[2]
        depth = q.shape[3]
        depth_v = v.shape[3]
        tiles = (lk + BT - 1) // BT
        bh = cuda.blockIdx.x // tiles
        k0 = (cuda.blockIdx.x - bh * tiles) * BT
        b = bh // heads
        h = bh - b * heads
        tid = cuda.threadIdx.x
        ty = tid // TX
        tx = tid - ty * TX
        sc = T(scale)
        keys = min(BT, lk - k0)

        stage_rows(k, b, h, k0, keys, depth, k_s, tid)
        stage_rows(v, b, h, k0, keys, depth_v, v_s, tid)
        for c in range(TV):
            acc_k[c] = T(0)
            acc_v[c] = T(0)

        # causal: query rows before k0 see none of these keys
        first = k0 if causal else 0
        for q0 in range(first, lq, BT):
            rows = min(BT, lq - q0)
            cuda.syncthreads()  # the last tile's reads of q_s, do_s, p_s, ds_s are done
            stage_rows(q, b, h, q0, rows, depth, q_s, tid)
            stage_rows(dout, b, h, q0, rows, depth_v, do_s, tid)
            for r in range(tid, rows, THREADS):
                lse_s[r] = lse[b, h, q0 + r]
                delta_s[r] = delta[b, h, q0 + r]
            cuda.syncthreads()
            probabilities(q_s, k_s, do_s, v_s, lse_s, delta_s, ty, tx, rows, q0 + ty, k0, lk,
                          depth, depth_v, sc, causal, s, dp, p, ds)
            for j in range(TN):
                p_s[ty, tx + j * TX] = p[j]
                ds_s[ty, tx + j * TX] = ds[j]
            cuda.syncthreads()
            # the thread's key ty, columns tx + TX c: dV += P^T dO, dK += dS^T Q
            for r in range(rows):
                pv = p_s[r, ty]
                dsv = ds_s[r, ty]
                for c in range(TV):
                    col = tx + c * TX
                    if col < depth_v:
                        acc_v[c] += pv * do_s[col, r]
                    if col < depth:
                        acc_k[c] += dsv * q_s[col, r]

        if ty < keys:
            for c in range(TV):
                col = tx + c * TX
                if col < depth:
                    dk[b, h, k0 + ty, col] = acc_k[c] * sc
                if col < depth_v:
                    dv[b, h, k0 + ty, col] = acc_v[c]

    @cuda.jit
    def attention_backward_dq_kernel(q, k, v, dout, lse, delta, scale, causal, dq):
        # q, dout (B, H, Lq, D / Dv), k, v (B, H, Lk, D / Dv), lse, delta (B, H, Lq)
        #   -> dq (B, H, Lq, D); block = one tile of BT queries
        k_s = cuda.shared.array((HEAD, ROW), T)
        v_s = cuda.shared.array((HEAD, ROW), T)
        q_s = cuda.shared.array((HEAD, ROW), T)
        do_s = cuda.shared.array((HEAD, ROW), T)
        ds_s = cuda.shared.array((BT, ROW), T)
        lse_s = cuda.shared.array(BT, T)
        delta_s = cuda.shared.array(BT, T)
        s = cuda.local.array(TN, T)
        dp = cuda.local.array(TN, T)
        p = cuda.local.array(TN, T)
        ds = cuda.local.array(TN, T)
        acc_q = cuda.local.array(TV, T)

        heads = q.shape[1]
        lq = q.shape[2]
        lk = k.shape[2]
        depth = q.shape[3]
        depth_v = v.shape[3]
        tiles = (lq + BT - 1) // BT
        bh = cuda.blockIdx.x // tiles
        q0 = (cuda.blockIdx.x - bh * tiles) * BT
        b = bh // heads
        h = bh - b * heads
        tid = cuda.threadIdx.x
        ty = tid // TX
        tx = tid - ty * TX
        sc = T(scale)
        rows = min(BT, lq - q0)

        stage_rows(q, b, h, q0, rows, depth, q_s, tid)
        stage_rows(dout, b, h, q0, rows, depth_v, do_s, tid)
        for r in range(tid, rows, THREADS):
            lse_s[r] = lse[b, h, q0 + r]
            delta_s[r] = delta[b, h, q0 + r]
        for c in range(TV):
            acc_q[c] = T(0)

        key_end = min(lk, q0 + BT) if causal else lk
        for k0 in range(0, key_end, BT):
            keys = min(BT, key_end - k0)
            cuda.syncthreads()  # q_s staged (first trip); the last tile's reads done
            stage_rows(k, b, h, k0, keys, depth, k_s, tid)
            stage_rows(v, b, h, k0, keys, depth_v, v_s, tid)
            cuda.syncthreads()
            probabilities(q_s, k_s, do_s, v_s, lse_s, delta_s, ty, tx, rows, q0 + ty, k0, key_end,
                          depth, depth_v, sc, causal, s, dp, p, ds)
            for j in range(TN):
                ds_s[ty, tx + j * TX] = ds[j]
            cuda.syncthreads()
            # the thread's row ty, columns tx + TX c: dQ += dS K
            for n in range(keys):
                dsv = ds_s[ty, n]
                for c in range(TV):
                    col = tx + c * TX
                    if col < depth:
                        acc_q[c] += dsv * k_s[col, n]

        if ty < rows:
            for c in range(TV):
                col = tx + c * TX
                if col < depth:
                    dq[b, h, q0 + ty, col] = acc_q[c] * sc

    return attention_backward_dkdv_kernel, attention_backward_dq_kernel


# --- the contract ---------------------------------------------------------------------


def attention_forward(q, k, v, causal, scale, precision):
    """out (B, H, Lq, Dv), lse (B, H, Lq) of softmax(q k^T scale, masked) v.

    ``precision`` is accepted for the contract; every request runs the dtype's full
    precision (float32 products and sums for float32), at least as accurate as asked.
    D and Dv up to 128 (``HEADS``); above, a ValueError.
    """
    batch, heads, lq, depth = q.shape
    lk, depth_v = k.shape[2], v.shape[3]
    head = head_for(depth, depth_v)
    on_device = any_device(q, k, v)
    d_q, d_k, d_v = to_device(q), to_device(k), to_device(v)
    dtype = np.dtype(d_q.dtype)
    tiles = FORWARD_TILES[(dtype, head)]
    out = cuda.device_array((batch, heads, lq, depth_v), dtype=dtype)
    lse = cuda.device_array((batch, heads, lq), dtype=dtype)
    blocks = batch * heads * cdiv(lq, tiles.bm)
    _forward_kernel(dtype, head)[blocks, tiles.threads](d_q, d_k, d_v, float(scale), bool(causal), out, lse)
    return finish(out, on_device), finish(lse, on_device)


def attention_backward(q, k, v, out, lse, dout, causal, scale, precision):
    """dq, dk, dv of attention, the probabilities recomputed from ``lse``: delta, then
    the dK/dV pass over key tiles, then the dQ pass over query tiles (no atomics).
    ``precision`` as in ``attention_forward``."""
    batch, heads, lq, depth = q.shape
    lk, depth_v = k.shape[2], v.shape[3]
    head = head_for(depth, depth_v)
    on_device = any_device(q, k, v, out, lse, dout)
    d_q, d_k, d_v, d_out, d_dout = (to_device(a) for a in (q, k, v, out, dout))
    d_lse = to_device_flat(lse).reshape(batch, heads, lq)  # contiguous: one signature
    dtype = np.dtype(d_q.dtype)
    tiles = BACKWARD_TILES[(dtype, head)]

    delta = cuda.device_array((batch, heads, lq), dtype=dtype)
    _delta_kernel(dtype)[cdiv(batch * heads * lq, DELTA_WARPS), DELTA_WARPS * WARP](d_out, d_dout, delta)

    dkdv_kernel, dq_kernel = _backward_kernels(dtype, head)
    dq = cuda.device_array((batch, heads, lq, depth), dtype=dtype)
    dk = cuda.device_array((batch, heads, lk, depth), dtype=dtype)
    dv = cuda.device_array((batch, heads, lk, depth_v), dtype=dtype)
    scale, causal = float(scale), bool(causal)
    dkdv_kernel[batch * heads * cdiv(lk, tiles.bn), tiles.threads](
        d_q, d_k, d_v, d_dout, d_lse, delta, scale, causal, dk, dv)
    dq_kernel[batch * heads * cdiv(lq, tiles.bm), tiles.threads](
        d_q, d_k, d_v, d_dout, d_lse, delta, scale, causal, dq)
    return finish(dq, on_device), finish(dk, on_device), finish(dv, on_device)
