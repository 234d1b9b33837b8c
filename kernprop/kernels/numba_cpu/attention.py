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
the bits do not depend on the thread count.  Its scores are queries by keys, so that
the two products that read P and dS take them in place as B.  For each key block, over
the query blocks that see it, with P recomputed from the forward's lse and delta =
rowsum(dout * out):

    S = (scale q) k^T,  dP = dout v^T;  P = exp(S - lse);  dS = scale P (dP - delta)
    dv^T += dout^T P;  dk^T += q^T dS         (A: dout^T, q^T panels; B: P, dS in place)
    dq += dS k                                 (dS packed: the one pack in the loop)

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


@helper
def _backward_blocks(itemsize):
    # (BQ, BK) of the backward: queries are the A side (MR rows), keys the B side (NR)
    nr = tile_cols(itemsize)
    return (_BLOCK_TARGET + MR - 1) // MR * MR, (_BLOCK_TARGET + nr - 1) // nr * nr


@kernel
def _attention_backward(q_panels, do_panels, qt_panels, dot_panels, kt_rows, vt_rows, k_rows,
                        lse, delta, depth, depth_v, causal, scale, dq, dk, dv):
    # A panels: q_panels = scale q, do_panels = dout (queries; D or Dv steps), qt_panels,
    # dot_panels (D or Dv; Lq steps).  B rows: kt_rows (BH, D, Lk_pad) = k^T, vt_rows
    # (BH, Dv, Lk_pad) = v^T, k_rows (BH, Lk_pad, D_pad).  lse, delta (BH, Lq)
    # -> dq (BH, Lq, D), dk (BH, Lk, D), dv (BH, Lk, Dv).  One task per (batch, head).
    heads, queries = lse.shape
    keys = dk.shape[1]
    lk_pad, d_pad = kt_rows.shape[2], k_rows.shape[2]
    dtype = dq.dtype
    bq, bk = _backward_blocks(dq.itemsize)
    zero = dtype.type(0)
    scale_value = dtype.type(scale)
    d_rows, dv_rows = (depth + MR - 1) // MR * MR, (depth_v + MR - 1) // MR * MR
    for h in prange(heads):
        scores = np.empty((bq, bk), dtype)
        dscores = np.empty((bq, bk), dtype)
        panels = np.empty(bq * bk, dtype)
        dkt_acc = np.zeros((d_rows, lk_pad), dtype)
        dvt_acc = np.zeros((dv_rows, lk_pad), dtype)
        dq_acc = np.zeros(((queries + MR - 1) // MR * MR, d_pad), dtype)
        qp, dop, qtp, dotp = q_panels[h], do_panels[h], qt_panels[h], dot_panels[h]
        ktr, vtr, kr = kt_rows[h].reshape(-1), vt_rows[h].reshape(-1), k_rows[h].reshape(-1)
        flat_scores, flat_dscores = scores.reshape(-1), dscores.reshape(-1)
        flat_dkt, flat_dvt, flat_dq = dkt_acc.reshape(-1), dvt_acc.reshape(-1), dq_acc.reshape(-1)
        for j0 in range(0, keys, bk):
            count = min(bk, keys - j0)
            for i0 in range(j0 // bq * bq if causal else 0, queries, bq):
                rows = min(bq, queries - i0)
                # S = (scale q) k^T and dP = dout v^T, queries by keys
                _panel_product(qp, i0 * depth, depth * MR, rows, depth, ktr, j0, lk_pad, bk,
                               flat_scores, 0, bk, False)
                _panel_product(dop, i0 * depth_v, depth_v * MR, rows, depth_v, vtr, j0, lk_pad, bk,
                               flat_dscores, 0, bk, False)
                for i in range(rows):
                    visible = min(count, i0 + i - j0 + 1) if causal else count
                    visible = max(visible, 0)
                    p_line, ds_line = scores[i, :visible], dscores[i, :visible]
                    m, d = lse[h, i0 + i], delta[h, i0 + i]
                    for j in range(p_line.shape[0]):
                        p = fast_exp(p_line[j] - m)
                        p_line[j] = p
                        ds_line[j] = scale_value * p * (ds_line[j] - d)
                    scores[i, visible:] = zero
                    dscores[i, visible:] = zero
                # dv^T += dout^T P and dk^T += q^T dS: both read P, dS in place
                _panel_product(dotp, i0 * MR, queries * MR, depth_v, rows, flat_scores, 0, bk, bk,
                               flat_dvt, j0, lk_pad, True)
                _panel_product(qtp, i0 * MR, queries * MR, depth, rows, flat_dscores, 0, bk, bk,
                               flat_dkt, j0, lk_pad, True)
                # dq += dS k: dS packed into A panels, the one pack of the loop
                _pack_block(dscores, rows, count, panels)
                _panel_product(panels, 0, count * MR, rows, count, kr, j0 * d_pad, d_pad, d_pad,
                               flat_dq, i0 * d_pad, d_pad, True)
        for j in range(keys):
            line_k, line_v = dk[h, j], dv[h, j]
            for d in range(depth):
                line_k[d] = dkt_acc[d, j]
            for d in range(depth_v):
                line_v[d] = dvt_acc[d, j]
        for i in range(queries):
            dq[h, i, :] = dq_acc[i, :depth]


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
    _, bk = _backward_blocks(q.itemsize)
    lk_pad = _round_up(keys, bk)
    delta = np.empty(batch * heads * queries, q.dtype)
    _row_dots(np.ascontiguousarray(out).reshape(-1, depth_v), np.ascontiguousarray(dout).reshape(-1, depth_v), delta)
    dq, dk, dv = (np.empty((batch * heads, x.shape[2], x.shape[3]), q.dtype) for x in (q, k, v))
    _attention_backward(
        _panels(q3, scale), _panels(dout3), _panels(q3.transpose(0, 2, 1)), _panels(dout3.transpose(0, 2, 1)),
        _padded(k3.transpose(0, 2, 1), depth, lk_pad), _padded(v3.transpose(0, 2, 1), depth_v, lk_pad),
        _padded(k3, lk_pad, _round_up(depth, _tile_cols(q.itemsize))),
        np.ascontiguousarray(lse).reshape(-1, queries), delta.reshape(-1, queries),
        depth, depth_v, bool(causal), float(scale), dq, dk, dv)
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)
