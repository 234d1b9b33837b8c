"""Numba CPU fused attention: FlashAttention-2 on the GEMM engine's micro-kernel.

    out = softmax(scale * q k^T, causal mask) v,   lse = log-sum-exp of each score row

No (Lq, Lk) score matrix is ever held.  Each task owns a block of BQ queries of one
(batch, head) and walks the key blocks of BK keys once (Dao 2023, "FlashAttention-2"):

    S = (scale q_blk) k_blk^T            micro-kernel: q panels x k transposed
    m' = max(m, rowmax S);  P = exp(S - m');  l = l exp(m - m') + rowsum P
    O = O exp(m - m') + P v_blk          micro-kernel: P panels x v rows
    out = O / l,  lse = m + log l        after the last block

The products run on ``gemm.microkernels.fma_tile``, the instruction-set row's register
tile (``kernprop.isa``: 6x16 on AVX2, 12x32 on AVX-512), over operands packed here into
its panels: A as MR-row panels, B as rows padded to a multiple of NR columns.  A task's
memory is a few tiles (about 100 KiB at D = 64), whatever the sequence length.

The backward (FlashAttention-2's, as PyTorch's CPU kernel parallelises it) owns one
(batch, head) per task, so dq, dk and dv are each written by one thread in one order:
the bits do not depend on the thread count.  For each key block, over the query blocks
that see it, with P recomputed from the forward's lse and delta = rowsum(dout * out):

    dv_blk += P^T dout_blk;  dP = dout_blk v_blk^T;  dS = P (dP - delta)
    dk_blk += scale dS^T q_blk;  dq_blk += scale dS k_blk

``precision`` "bf16" and "bf16x3" run the float32 kernel (at least as accurate as asked,
as the contract allows): the bf16 panels would need their own softmax epilogue.
"""

import numpy as np
from numba import prange

from ._jit import helper, kernel
from ._math import fast_exp, vector_max
from .gemm.microkernels import MR, fma_tile, tile_cols

# Queries and keys per block: about 64, rounded to whole register tiles.
_BLOCK_TARGET = 64


@helper
def _round_up(n, multiple):
    return (n + multiple - 1) // multiple * multiple


@helper
def _block_sizes(itemsize):
    # (BQ, BK): whole MR-row panels of queries, whole NR-column panels of keys
    nr = tile_cols(itemsize)
    return _round_up(_BLOCK_TARGET, MR), _round_up(_BLOCK_TARGET, nr)


@helper
def _pack_rows(src, r0, rows, k0, steps, factor, dst):
    # A panels from rows of src: dst[(ip*steps + p)*MR + i] = factor * src[r0 + ip*MR + i, k0 + p],
    # rows past ``rows`` zero (their products are computed and never read)
    zero = dst.dtype.type(0)
    for ip in range((rows + MR - 1) // MR):
        base = ip * steps * MR
        for i in range(MR):
            r = ip * MR + i
            if r < rows:
                line = src[r0 + r]
                for p in range(steps):
                    dst[base + p * MR + i] = factor * line[k0 + p]
            else:
                for p in range(steps):
                    dst[base + p * MR + i] = zero


@helper
def _pack_columns(src, c0, rows, steps, factor, dst):
    # A panels from columns of src (A = src^T): dst[(ip*steps + p)*MR + i] = factor * src[p, c0 + ip*MR + i]
    zero = dst.dtype.type(0)
    for ip in range((rows + MR - 1) // MR):
        base = ip * steps * MR
        for p in range(steps):
            line = src[p]
            for i in range(MR):
                r = ip * MR + i
                dst[base + p * MR + i] = factor * line[c0 + r] if r < rows else zero


@helper
def _copy_rows(src, r0, rows, dst):
    # B rows: dst[r, :cols] = src[r0 + r], the padding columns zero (dst (>= rows, cols_p))
    zero = dst.dtype.type(0)
    cols = src.shape[1]
    for r in range(rows):
        line, out = src[r0 + r], dst[r]
        for c in range(cols):
            out[c] = line[c]
        for c in range(cols, dst.shape[1]):
            out[c] = zero


@helper
def _transpose_rows(src, r0, rows, dst):
    # B from rows of src transposed: dst[c, r] = src[r0 + r, c], padding columns zero
    zero = dst.dtype.type(0)
    for c in range(src.shape[1]):
        out = dst[c]
        for r in range(rows):
            out[r] = src[r0 + r, c]
        for r in range(rows, dst.shape[1]):
            out[r] = zero


@helper
def _panel_product(apack, rows, steps, b, c, c_row, beta):
    # c[c_row:c_row + rows_p, :] (+)= A @ b: A the packed panels of ``rows`` rows (rows_p
    # rounded up to MR) and ``steps`` steps, b (>= steps, NR * k) read in place, c
    # (>= c_row + rows_p, b's width) row-major
    nr = tile_cols(c.itemsize)
    width, ldc = b.shape[1], c.shape[1]
    bflat, cflat = b.reshape(-1), c.reshape(-1)
    for ip in range((rows + MR - 1) // MR):
        for jp in range(width // nr):
            fma_tile(apack, ip * steps * MR, bflat, jp * nr, width, steps,
                     cflat, (c_row + ip * MR) * ldc + jp * nr, ldc, beta)


@helper
def _visible_keys(causal, query, j0, count):
    # keys of the block [j0, j0 + count) that query ``query`` sees
    if not causal:
        return count
    return max(0, min(count, query - j0 + 1))


@kernel
def _attention_forward(q, k, v, causal, scale, out, lse):
    # q (BH, Lq, D), k (BH, Lk, D), v (BH, Lk, Dv) contiguous -> out (BH, Lq, Dv), lse (BH, Lq)
    heads, queries, depth = q.shape
    keys, depth_v = k.shape[1], v.shape[2]
    dtype = q.dtype
    bq, bk = _block_sizes(q.itemsize)
    nr = tile_cols(q.itemsize)
    dvp = _round_up(depth_v, nr)
    query_blocks = (queries + bq - 1) // bq
    for task in prange(heads * query_blocks):
        head, i0 = task // query_blocks, task % query_blocks * bq
        rows = min(bq, queries - i0)
        qh, kh, vh = q[head], k[head], v[head]
        qpack = np.empty(bq * depth, dtype)
        kt = np.empty((depth, bk), dtype)
        scores = np.empty((bq, bk), dtype)
        ppack = np.empty(bq * bk, dtype)
        vrows = np.empty((bk, dvp), dtype)
        acc = np.zeros((bq, dvp), dtype)
        row_max = np.full(bq, -np.inf, dtype)
        row_sum = np.zeros(bq, dtype)
        _pack_rows(qh, i0, rows, 0, depth, dtype.type(scale), qpack)
        last_key = keys if not causal else min(keys, i0 + rows)
        for j0 in range(0, last_key, bk):
            count = min(bk, last_key - j0)
            _transpose_rows(kh, j0, count, kt)
            _panel_product(qpack, rows, depth, kt, scores, 0, False)
            for i in range(rows):
                visible = _visible_keys(causal, i0 + i, j0, count)
                s = scores[i]
                if visible == 0:
                    for j in range(count):
                        s[j] = dtype.type(0)
                    continue
                m_new = max(row_max[i], vector_max(s[:visible]))
                for j in range(visible // (64 // q.itemsize) * (64 // q.itemsize), visible):
                    m_new = max(m_new, s[j])
                alpha = fast_exp(row_max[i] - m_new)
                total = dtype.type(0)
                for j in range(visible):
                    e = fast_exp(s[j] - m_new)
                    s[j] = e
                    total += e
                for j in range(visible, count):
                    s[j] = dtype.type(0)
                row_sum[i] = row_sum[i] * alpha + total
                row_max[i] = m_new
                a = acc[i]
                for c in range(depth_v):
                    a[c] *= alpha
            _pack_rows(scores, 0, rows, 0, count, dtype.type(1), ppack)
            _copy_rows(vh, j0, count, vrows)
            _panel_product(ppack, rows, count, vrows, acc, 0, True)
        o = out[head]
        for i in range(rows):
            inverse = dtype.type(1) / row_sum[i]
            line, a = o[i0 + i], acc[i]
            for c in range(depth_v):
                line[c] = a[c] * inverse
            lse[head, i0 + i] = row_max[i] + np.log(row_sum[i])


@kernel
def _attention_backward(q, k, v, dout, lse, delta, causal, scale, dq, dk, dv):
    # q, dq (BH, Lq, D); k, dk (BH, Lk, D); v, dv (BH, Lk, Dv); dout (BH, Lq, Dv);
    # lse, delta (BH, Lq); all contiguous.  One task per (batch, head).
    heads, queries, depth = q.shape
    keys, depth_v = k.shape[1], v.shape[2]
    dtype = q.dtype
    bq, bk = _block_sizes(q.itemsize)
    nr = tile_cols(q.itemsize)
    dp, dvp = _round_up(depth, nr), _round_up(depth_v, nr)
    one, zero = dtype.type(1), dtype.type(0)
    for head in prange(heads):
        qh, kh, vh, doh = q[head], k[head], v[head], dout[head]
        qpack = np.empty(bq * depth, dtype)            # scale q, A panels (S)
        dopack = np.empty(bq * depth_v, dtype)         # dout, A panels (dP)
        qrows = np.empty((bq, dp), dtype)              # q rows, B (dk)
        dorows = np.empty((bq, dvp), dtype)            # dout rows, B (dv)
        kt = np.empty((depth, bk), dtype)              # k^T, B (S)
        vt = np.empty((depth_v, bk), dtype)            # v^T, B (dP)
        krows = np.empty((bk, dp), dtype)              # k rows, B (dq)
        probs = np.empty((bq, bk), dtype)
        dprobs = np.empty((bq, bk), dtype)
        key_rows = _round_up(bk, MR)                   # a key block in whole A panels
        tpack = np.empty(key_rows * bq, dtype)         # P^T or dS^T or dS, A panels
        dk_acc = np.empty((key_rows, dp), dtype)
        dv_acc = np.empty((key_rows, dvp), dtype)
        dq_acc = np.zeros((_round_up(queries, MR), dp), dtype)
        for j0 in range(0, keys, bk):
            count = min(bk, keys - j0)
            _transpose_rows(kh, j0, count, kt)
            _transpose_rows(vh, j0, count, vt)
            _copy_rows(kh, j0, count, krows)
            dk_acc[:] = zero
            dv_acc[:] = zero
            first_query = j0 // bq * bq if causal else 0
            for i0 in range(first_query, queries, bq):
                rows = min(bq, queries - i0)
                _pack_rows(qh, i0, rows, 0, depth, dtype.type(scale), qpack)
                _panel_product(qpack, rows, depth, kt, probs, 0, False)
                _pack_rows(doh, i0, rows, 0, depth_v, one, dopack)
                _panel_product(dopack, rows, depth_v, vt, dprobs, 0, False)
                for i in range(rows):
                    visible = _visible_keys(causal, i0 + i, j0, count)
                    p, dpr = probs[i], dprobs[i]
                    m, d = lse[head, i0 + i], delta[head, i0 + i]
                    for j in range(visible):
                        e = fast_exp(p[j] - m)
                        p[j] = e
                        dpr[j] = e * (dpr[j] - d)   # dS, unscaled
                    for j in range(visible, count):
                        p[j] = zero
                        dpr[j] = zero
                # dv += P^T dout
                _copy_rows(doh, i0, rows, dorows)
                _pack_columns(probs, 0, count, rows, one, tpack)
                _panel_product(tpack, count, rows, dorows, dv_acc, 0, True)
                # dk += scale dS^T q
                _copy_rows(qh, i0, rows, qrows)
                _pack_columns(dprobs, 0, count, rows, dtype.type(scale), tpack)
                _panel_product(tpack, count, rows, qrows, dk_acc, 0, True)
                # dq += scale dS k
                _pack_rows(dprobs, 0, rows, 0, count, dtype.type(scale), tpack)
                _panel_product(tpack, rows, count, krows, dq_acc, i0, True)
            for j in range(count):
                dk[head, j0 + j, :] = dk_acc[j, :depth]
                dv[head, j0 + j, :] = dv_acc[j, :depth_v]
        for i in range(queries):
            dq[head, i, :] = dq_acc[i, :depth]


@kernel
def _row_dots(a, b, out):
    # a, b (R, C) contiguous -> out (R,) = rowsum(a * b)
    for r in prange(a.shape[0]):
        total = a.dtype.type(0)
        x, y = a[r], b[r]
        for c in range(a.shape[1]):
            total += x[c] * y[c]
        out[r] = total


def _heads(x):
    # (B, H, L, D) -> contiguous (B*H, L, D)
    return np.ascontiguousarray(x).reshape(-1, x.shape[2], x.shape[3])


def attention_forward(q, k, v, causal, scale, precision):
    batch, heads, queries = q.shape[:3]
    out = np.empty((batch * heads, queries, v.shape[3]), q.dtype)
    lse = np.empty((batch * heads, queries), q.dtype)
    _attention_forward(_heads(q), _heads(k), _heads(v), bool(causal), float(scale), out, lse)
    return out.reshape(batch, heads, queries, v.shape[3]), lse.reshape(batch, heads, queries)


def attention_backward(q, k, v, out, lse, dout, causal, scale, precision):
    batch, heads, queries, depth_v = out.shape
    q3, k3, v3, dout3 = _heads(q), _heads(k), _heads(v), _heads(dout)
    delta = np.empty((batch * heads * queries,), q.dtype)
    _row_dots(_heads(out).reshape(-1, depth_v), dout3.reshape(-1, depth_v), delta)
    dq, dk, dv = np.empty_like(q3), np.empty_like(k3), np.empty_like(v3)
    _attention_backward(q3, k3, v3, dout3, np.ascontiguousarray(lse).reshape(-1, queries),
                        delta.reshape(-1, queries), bool(causal), float(scale), dq, dk, dv)
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)
