"""Cython attention: loaders over ``kernprop._cy.attention`` (pyx/attention.pyx).

The kernels see each operand as (B*H, L, D), C-contiguous: a view such as the heads of a
(B, L, H, D) projection is copied once with ``np.ascontiguousarray`` (never written to).
``precision``: the products run in float32 for every precision ("bf16" and "bf16x3" get
float32, at least as accurate as asked, as the contract allows).
"""

import numpy as np

from kernprop._cy import attention as _cy


def _heads(x):
    # (B, H, L, D) -> (B*H, L, D), contiguous
    return np.ascontiguousarray(x).reshape(-1, x.shape[2], x.shape[3])


def attention_forward(q, k, v, causal, scale, precision):
    # q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) -> out (B, H, Lq, Dv), lse (B, H, Lq)
    batch, heads, lq, _ = q.shape
    out = np.empty((batch, heads, lq, v.shape[3]), dtype=q.dtype)
    lse = np.empty((batch, heads, lq), dtype=q.dtype)
    _cy.attention_forward(_heads(q), _heads(k), _heads(v), bool(causal), float(scale),
                          out.reshape(batch * heads, lq, -1), lse.reshape(batch * heads, lq))
    return out, lse


def attention_backward(q, k, v, out, lse, dout, causal, scale, precision):
    # -> dq (B, H, Lq, D), dk (B, H, Lk, D), dv (B, H, Lk, Dv)
    dq = np.empty(q.shape, dtype=q.dtype)
    dk = np.empty(k.shape, dtype=q.dtype)
    dv = np.empty(v.shape, dtype=q.dtype)
    _cy.attention_backward(_heads(q), _heads(k), _heads(v), _heads(out),
                           np.ascontiguousarray(lse).reshape(-1, lse.shape[2]), _heads(dout),
                           bool(causal), float(scale), dq.reshape(-1, q.shape[2], q.shape[3]),
                           dk.reshape(-1, k.shape[2], k.shape[3]), dv.reshape(-1, v.shape[2], v.shape[3]))
    return dq, dk, dv
