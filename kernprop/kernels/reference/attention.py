"""Reference scaled dot-product attention: the whole (Lq, Lk) score matrix per head,
plainly, as ``torch.nn.functional.scaled_dot_product_attention``'s documented math.

The fast backends never hold that matrix (online softmax over blocks of keys,
FlashAttention-2); they must agree with this one.  ``causal`` masks key ``j > i`` for
query ``i`` (the top-left aligned mask PyTorch uses, also when Lq != Lk), so every
query sees key 0 and no row is ever fully masked.
"""

import numpy as np


def _probabilities(q, k, causal, scale):
    # scores (B, H, Lq, Lk) scaled and masked; lse (B, H, Lq) their log-sum-exp
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * q.dtype.type(scale)
    if causal:
        lq, lk = scores.shape[-2:]
        scores = np.where(np.tri(lq, lk, dtype=bool), scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        weights = np.exp(scores - row_max)
    total = weights.sum(axis=-1, keepdims=True)
    lse = (row_max + np.log(total))[..., 0]
    return weights / total, lse


def attention_forward(q, k, v, causal, scale, precision):
    # q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) -> out (B, H, Lq, Dv), lse (B, H, Lq)
    # precision: products are exact in the dtype here (the oracle of every precision)
    probabilities, lse = _probabilities(q, k, causal, scale)
    return np.matmul(probabilities, v), lse.astype(q.dtype, copy=False)


def attention_backward(q, k, v, out, lse, dout, causal, scale, precision):
    # P = softmax(S); dv = P^T dout; dP = dout v^T; dS = P * (dP - rowsum(dout * out));
    # dq = scale dS k; dk = scale dS^T q.  (lse is recomputed here, not trusted: the
    # oracle must not inherit a backend's mistake.)
    probabilities, _ = _probabilities(q, k, causal, scale)
    dv = np.matmul(np.swapaxes(probabilities, -1, -2), dout)
    dprobabilities = np.matmul(dout, np.swapaxes(v, -1, -2))
    delta = (dout * out).sum(axis=-1, keepdims=True)
    dscores = probabilities * (dprobabilities - delta) * q.dtype.type(scale)
    dq = np.matmul(dscores, k)
    dk = np.matmul(np.swapaxes(dscores, -1, -2), q)
    return dq, dk, dv
