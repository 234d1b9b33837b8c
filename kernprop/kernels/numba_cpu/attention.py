"""Numba CPU fused attention: FlashAttention-2 on the GEMM engine's micro-kernel.

    out = softmax(scale * q k^T, causal mask) v,   lse = log-sum-exp of each score row

No (Lq, Lk) score matrix is ever held.  Each task owns a block of BQ queries of one
(batch, head) and walks the key blocks of BK keys once (Dao 2023, "FlashAttention-2").
The scores are computed transposed, keys by queries, so that every step of the online
softmax is elementwise across the queries (vectorised, no horizontal reductions) and
every product reads its operands in place, with no packing inside the loop:

    S^T = k_blk (scale q_blk)^T       A: k in MR-row panels,  B: scale q^T (D, Lq)
    m' = max(m, colmax S^T);  P^T = exp(S^T - m');  l = l exp(m - m') + colsum P^T
    O^T = O^T exp(m - m') + v_blk^T P^T     A: v^T in panels,  B: P^T (BK, BQ)
    out = (O^T)^T / l,  lse = m + log l    after the last block

The products run on ``gemm.microkernels.fma_tile``, the instruction-set row's register
tile (``kernprop.isa``: 6x16 on AVX2, 12x32 on AVX-512).  Its operands are laid out
once per call, outside the loops (``_pack_panels``, ``_pad``): k, v and their
transposes as A panels, q^T and dout^T as B rows.  Beyond those copies of the inputs a
task holds a few tiles (about 100 KiB at D = 64), whatever the sequence length.

The backward (FlashAttention-2's, as PyTorch's CPU kernel parallelises it) owns one
(batch, head) per task, so dq, dk and dv are each written by one thread in one order:
the bits do not depend on the thread count.  For each key block, over the query blocks
that see it, with P recomputed from the forward's lse and delta = rowsum(dout * out):

    S^T, dP^T = v_blk dout_blk^T;  dS^T = scale P^T (dP^T - delta)
    dv_blk += P^T dout_blk;  dk_blk += dS^T q_blk    (P^T, dS^T packed into A panels)
    dq^T += k_blk^T dS^T                               (dS^T read in place)

``precision`` "bf16" and "bf16x3" run the float32 kernel (at least as accurate as asked,
as the contract allows): the bf16 panels would need their own softmax epilogue.
"""

import numpy as np
from numba import prange

from ._jit import helper, kernel
from ._math import fast_exp
from .gemm.microkernels import MR, NVEC, VECTOR_BYTES, fma_tile, tile_cols

# Queries and keys per block: about 64, rounded to whole register tiles (queries are
# the B side of every product in the loop: NR columns; keys the A side: MR rows).
_BLOCK_TARGET = 64


def _round_up(n, multiple):
    return (n + multiple - 1) // multiple * multiple


def _tile_cols(itemsize):
    return NVEC * VECTOR_BYTES // itemsize


@helper
def _block_sizes(itemsize):
    # (BQ, BK): queries per block in whole NR columns, keys in whole MR rows
    nr = tile_cols(itemsize)
    return (_BLOCK_TARGET + nr - 1) // nr * nr, (_BLOCK_TARGET + MR - 1) // MR * MR


@kernel
def _pack_panels(src, factor, dst):
    # src (BH, R, S), any strides -> dst (BH, ceil(R/MR) * S * MR): the rows in A panels,
    # dst[h, (rp*S + s)*MR + r] = factor * src[h, rp*MR + r, s], rows past R zero
    heads, rows, steps = src.shape
    zero = dst.dtype.type(0)
    for h in prange(heads):
        x, out = src[h], dst[h]
        for rp in range((rows + MR - 1) // MR):
            for s in range(steps):
                base = (rp * steps + s) * MR
                for r in range(MR):
                    row = rp * MR + r
                    out[base + r] = factor * x[row, s] if row < rows else zero


@kernel
def _pad(src, factor, dst):
    # src (BH, R, C), any strides -> dst (BH, >= R, >= C) = factor * src, the rest zero
    heads, rows, cols = src.shape
    zero = dst.dtype.type(0)
    for h in prange(heads):
        x, out = src[h], dst[h]
        for r in range(dst.shape[1]):
            line = out[r]
            if r < rows:
                for c in range(cols):
                    line[c] = factor * x[r, c]
                for c in range(cols, dst.shape[2]):
                    line[c] = zero
            else:
                for c in range(dst.shape[2]):
                    line[c] = zero


@helper
def _panel_product(a, a_off, a_panel_stride, rows, steps, b, b_off, b_stride, width, c, c_off, ldc, beta):
    # C (+)= A @ B on flat arrays: A ``rows`` rows in MR-row panels from a[a_off],
    # ``a_panel_stride`` apart, ``steps`` steps; B ``steps`` rows of ``width`` (whole NR
    # tiles) from b[b_off], ``b_stride`` apart; C from c[c_off], rows ``ldc`` apart
    nr = tile_cols(c.itemsize)
    for ip in range((rows + MR - 1) // MR):
        for jp in range(width // nr):
            fma_tile(a, a_off + ip * a_panel_stride, b, b_off + jp * nr, b_stride, steps,
                     c, c_off + ip * MR * ldc + jp * nr, ldc, beta)


@helper
def _pack_block(src, rows, steps, dst):
    # src (>= rows, >= steps) row-major -> dst: its first ``rows`` rows in A panels of
    # ``steps`` steps, rows past ``rows`` zero
    zero = dst.dtype.type(0)
    for rp in range((rows + MR - 1) // MR):
        for r in range(MR):
            row = rp * MR + r
            if row < rows:
                line = src[row]
                for s in range(steps):
                    dst[(rp * steps + s) * MR + r] = line[s]
            else:
                for s in range(steps):
                    dst[(rp * steps + s) * MR + r] = zero


@helper
def _first_visible(causal, key, i0):
    # the first column (query i0 + i) of a key's row that sees the key: i0 + i >= key
    return max(0, key - i0) if causal else 0


@kernel
def _attention_forward(k_panels, vt_panels, qt, keys, depth, depth_v, causal, out, lse):
    # k_panels (BH, keys in A panels of D steps), vt_panels (BH, Dv in A panels of
    # ``keys`` steps), qt (BH, D, Lq_pad) = scale q^T -> out (BH, Lq, Dv), lse (BH, Lq)
    heads, queries = lse.shape
    lq_pad = qt.shape[2]
    dtype = out.dtype
    bq, bk = _block_sizes(out.itemsize)
    dv_rows = (depth_v + MR - 1) // MR * MR
    query_blocks = lq_pad // bq
    minus_inf = dtype.type(-np.inf)
    for task in prange(heads * query_blocks):
        h, i0 = task // query_blocks, task % query_blocks * bq
        rows = min(bq, queries - i0)
        scores = np.empty((bk, bq), dtype)
        acc = np.zeros((dv_rows, bq), dtype)
        row_max = np.full(bq, minus_inf, dtype)
        row_sum = np.zeros(bq, dtype)
        block_max = np.empty(bq, dtype)
        alpha = np.empty(bq, dtype)
        kp, vp, qh, flat_scores, flat_acc = k_panels[h], vt_panels[h], qt[h].reshape(-1), scores.reshape(-1), acc.reshape(-1)
        last_key = min(keys, i0 + rows) if causal else keys
        for j0 in range(0, last_key, bk):
            count = min(bk, last_key - j0)
            _panel_product(kp, j0 * depth, depth * MR, count, depth, qh, i0, lq_pad, bq,
                           flat_scores, 0, bq, False)
            # Every loop over queries starts at 0 on a slice: a loop from a variable start
            # gets Numba's negative-index wraparound per element, and is not vectorised.
            block_max[:] = minus_inf
            for j in range(count):
                first = _first_visible(causal, j0 + j, i0)
                line, top = scores[j, first:], block_max[first:]
                for i in range(line.shape[0]):
                    top[i] = line[i] if line[i] > top[i] else top[i]
            for i in range(bq):
                m_new = max(row_max[i], block_max[i])
                alpha[i] = fast_exp(row_max[i] - m_new)
                row_max[i] = m_new
                row_sum[i] *= alpha[i]
            for j in range(count):
                first = min(_first_visible(causal, j0 + j, i0), bq)
                scores[j, :first] = dtype.type(0)
                line, top, total = scores[j, first:], row_max[first:], row_sum[first:]
                for i in range(line.shape[0]):
                    e = fast_exp(line[i] - top[i])
                    line[i] = e
                    total[i] += e
            for d in range(depth_v):
                line = acc[d]
                for i in range(bq):
                    line[i] *= alpha[i]
            _panel_product(vp, j0 * MR, keys * MR, depth_v, count, flat_scores, 0, bq, bq,
                           flat_acc, 0, bq, True)
        o = out[h]
        for i in range(rows):
            inverse = dtype.type(1) / row_sum[i]
            line = o[i0 + i]
            for d in range(depth_v):
                line[d] = acc[d, i] * inverse
            lse[h, i0 + i] = row_max[i] + np.log(row_sum[i])


@kernel
def _attention_backward(k_panels, v_panels, kt_panels, qt, dot, q_rows, do_rows, lse, delta,
                        keys, depth, depth_v, causal, scale, dq, dk, dv):
    # A panels: k_panels, v_panels (keys; D or Dv steps), kt_panels (D; ``keys`` steps);
    # B rows: qt (BH, D, Lq_pad) = scale q^T, dot (BH, Dv, Lq_pad) = dout^T, q_rows
    # (BH, Lq_pad, D_pad), do_rows (BH, Lq_pad, Dv_pad); lse, delta (BH, Lq)
    # -> dq (BH, Lq, D), dk (BH, Lk, D), dv (BH, Lk, Dv).  One task per (batch, head).
    heads, queries = lse.shape
    lq_pad, d_pad, dv_pad = qt.shape[2], q_rows.shape[2], do_rows.shape[2]
    dtype = dq.dtype
    bq, bk = _block_sizes(dq.itemsize)
    zero = dtype.type(0)
    scale_value = dtype.type(scale)
    for h in prange(heads):
        scores = np.empty((bk, bq), dtype)
        dscores = np.empty((bk, bq), dtype)
        panels = np.empty(bk * bq, dtype)
        dk_acc = np.zeros(((keys + bk - 1) // bk * bk, d_pad), dtype)
        dv_acc = np.zeros(((keys + bk - 1) // bk * bk, dv_pad), dtype)
        dqt_acc = np.zeros(((depth + MR - 1) // MR * MR, lq_pad), dtype)
        kp, vp, ktp = k_panels[h], v_panels[h], kt_panels[h]
        qh, doh = qt[h].reshape(-1), dot[h].reshape(-1)
        qr, dor = q_rows[h].reshape(-1), do_rows[h].reshape(-1)
        flat_scores, flat_dscores = scores.reshape(-1), dscores.reshape(-1)
        flat_dk, flat_dv, flat_dqt = dk_acc.reshape(-1), dv_acc.reshape(-1), dqt_acc.reshape(-1)
        for j0 in range(0, keys, bk):
            count = min(bk, keys - j0)
            for i0 in range(j0 // bq * bq if causal else 0, queries, bq):
                rows = min(bq, queries - i0)
                _panel_product(kp, j0 * depth, depth * MR, count, depth, qh, i0, lq_pad, bq,
                               flat_scores, 0, bq, False)
                _panel_product(vp, j0 * depth_v, depth_v * MR, count, depth_v, doh, i0, lq_pad, bq,
                               flat_dscores, 0, bq, False)
                for j in range(count):
                    first = min(_first_visible(causal, j0 + j, i0), rows)
                    scores[j, :first] = zero
                    dscores[j, :first] = zero
                    scores[j, rows:] = zero
                    dscores[j, rows:] = zero
                    # loops from 0 on slices (see the forward)
                    p_line, ds_line = scores[j, first:rows], dscores[j, first:rows]
                    m, d = lse[h, i0 + first:i0 + rows], delta[h, i0 + first:i0 + rows]
                    for i in range(p_line.shape[0]):
                        p = fast_exp(p_line[i] - m[i])
                        p_line[i] = p
                        ds_line[i] = scale_value * p * (ds_line[i] - d[i])
                _pack_block(scores, count, rows, panels)
                _panel_product(panels, 0, rows * MR, count, rows, dor, i0 * dv_pad, dv_pad, dv_pad,
                               flat_dv, j0 * dv_pad, dv_pad, True)
                _pack_block(dscores, count, rows, panels)
                _panel_product(panels, 0, rows * MR, count, rows, qr, i0 * d_pad, d_pad, d_pad,
                               flat_dk, j0 * d_pad, d_pad, True)
                _panel_product(ktp, j0 * MR, keys * MR, depth, count, flat_dscores, 0, bq, bq,
                               flat_dqt, i0, lq_pad, True)
        for j in range(keys):
            dk[h, j, :] = dk_acc[j, :depth]
            dv[h, j, :] = dv_acc[j, :depth_v]
        for i in range(queries):
            line = dq[h, i]
            for d in range(depth):
                line[d] = dqt_acc[d, i]


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
    # (B, H, L, D) -> (B*H, L, D), a view where the strides allow it
    return x.reshape(-1, x.shape[2], x.shape[3])


def _panels(x, factor=1.0):
    """x (BH, R, S) -> its rows in A panels: (BH, ceil(R/MR) * S * MR)."""
    heads, rows, steps = x.shape
    dst = np.empty((heads, _round_up(rows, MR) * steps), x.dtype)
    _pack_panels(x, factor, dst)
    return dst


def _padded(x, rows, cols, factor=1.0):
    """x (BH, R, C) -> (BH, rows, cols) = factor * x, zero beyond."""
    dst = np.empty((x.shape[0], rows, cols), x.dtype)
    _pad(x, factor, dst)
    return dst


def attention_forward(q, k, v, causal, scale, precision):
    batch, heads, queries, depth = q.shape
    keys, depth_v = k.shape[2], v.shape[3]
    q3, k3, v3 = _heads(q), _heads(k), _heads(v)
    bq, _ = _block_sizes(q.itemsize)
    qt = _padded(q3.transpose(0, 2, 1), depth, _round_up(queries, bq), scale)
    out = np.empty((batch * heads, queries, depth_v), q.dtype)
    lse = np.empty((batch * heads, queries), q.dtype)
    _attention_forward(_panels(k3), _panels(v3.transpose(0, 2, 1)), qt, keys, depth, depth_v,
                       bool(causal), out, lse)
    return out.reshape(batch, heads, queries, depth_v), lse.reshape(batch, heads, queries)


def attention_backward(q, k, v, out, lse, dout, causal, scale, precision):
    batch, heads, queries, depth = q.shape
    keys, depth_v = k.shape[2], v.shape[3]
    q3, k3, v3, dout3 = _heads(q), _heads(k), _heads(v), _heads(dout)
    bq, _ = _block_sizes(q.itemsize)
    nr = _tile_cols(q.itemsize)
    lq_pad = _round_up(queries, bq)
    delta = np.empty(batch * heads * queries, q.dtype)
    _row_dots(np.ascontiguousarray(out).reshape(-1, depth_v), np.ascontiguousarray(dout).reshape(-1, depth_v), delta)
    dq, dk, dv = (np.empty((batch * heads, x.shape[2], x.shape[3]), q.dtype) for x in (q, k, v))
    _attention_backward(
        _panels(k3), _panels(v3), _panels(k3.transpose(0, 2, 1)),
        _padded(q3.transpose(0, 2, 1), depth, lq_pad, scale), _padded(dout3.transpose(0, 2, 1), depth_v, lq_pad),
        _padded(q3, lq_pad, _round_up(depth, nr)), _padded(dout3, lq_pad, _round_up(depth_v, nr)),
        np.ascontiguousarray(lse).reshape(-1, queries), delta.reshape(-1, queries),
        keys, depth, depth_v, bool(causal), float(scale), dq, dk, dv)
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)
