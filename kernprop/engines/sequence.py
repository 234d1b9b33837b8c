"""Transformers: a step of a ``GPT`` (or any model with ``sequence_model = True``) on
(B, T) token ids and (B, T) next-token targets.

Per step, as llm.c's ``train_gpt2.c``: ``model.features(ids)`` (embeddings, blocks, final
LayerNorm: h (B*T, C)), then the head and the cross-entropy of every position fused in
``linear_cross_entropy`` (rows in chunks: never the full (B*T, V) logits; it returns the
loss, dh and the head's gradient), ``model.backward_features(dh, dhead)``, and the
optimizer's step over every parameter array.  Losses are written per step; there are no
training predictions (no logits are held), so a sequence fit reports no training
accuracy.

It runs on the CPU backends (the layers' glue, residual sums and reshapes, is NumPy).
``distributed="mpi"`` wraps it like ``layerwise`` (one gradient Allreduce per step).
"""

from __future__ import annotations

import numpy as np

from ..ops import default_chunk_size
from .layerwise import LayerwiseEngine


def takes(model, loss):
    """``None`` when the sequence engine can train ``model`` with ``loss``, else why not."""
    if not getattr(model, "sequence_model", False):
        return f"model {type(model).__name__} (it takes a GPT: token ids in, next-token targets)"
    if getattr(loss, "name", None) != "cross_entropy":
        return f"loss {type(loss).__name__} (a GPT trains with cross_entropy)"
    if loss.reduction not in ("mean", "sum"):
        return f"reduction {loss.reduction!r} (it takes 'mean' or 'sum')"
    return None


class SequenceEngine(LayerwiseEngine):
    """Features, fused head + loss, backward, update (see the module docstring)."""

    name = "sequence"

    def run(self, first, last, losses):
        # per step, sequences lo:hi -> ids (b, T) -> h (b*T, C) -> loss, dh, dhead -> grads -> update
        if self.bounds is None:
            self.bounds = self.rows.tolist()
        model, kernels, X, y, bounds, loss = self.model, self.kernels, self.X, self.y, self.bounds, self.loss
        features, backward, gradients = model.features, model.backward_features, model.gradients
        head_loss, update, hook = kernels.linear_cross_entropy, self.update, self.gradient_hook
        dtype = model.parameters()[0].dtype
        weight = loss.weight_as(dtype)
        chunk = default_chunk_size(model.vocab_size, dtype.itemsize)
        precision = kernels.precision if dtype.itemsize == 4 else "fp32"
        options = (loss.reduction, loss.ignore_index, loss.label_smoothing, weight, chunk, precision)
        values = []
        append = values.append
        for s in range(first, last):
            lo, hi = bounds[s]
            value = None
            if hi > lo:  # data-parallel: a rank may get no rows of a small batch
                h = features(X[lo:hi])
                value, dh, dhead, _ = head_loss(h, model.head_weight, None, y[lo:hi].reshape(-1), *options)
                backward(dh, dhead)
            if hook is not None:
                value = hook(gradients(), value, s, lo, hi)
            update(gradients())
            append(value)
        self.store_losses(values, losses, first, last)


def evaluate(model, loss, X, y, kernels, rows_per_pass=None):
    """``{"loss", "accuracy"}`` of ``model`` on sequences ``X`` (N, T) with targets ``y``
    (N, T): the loss as the training reports it (per token, the loss's options), the
    accuracy of the argmax over the positions not ignored.  Logits are made for a few
    sequences at a time (about ``LOGITS_CHUNK_BYTES``), never all at once."""
    n, T = X.shape
    V, dtype = model.vocab_size, model.parameters()[0].dtype
    if rows_per_pass is None:
        rows_per_pass = max(1, default_chunk_size(V, dtype.itemsize) // T)
    weight = loss.weight_as(dtype)
    total = denominator = hits = counted = 0.0
    for lo in range(0, n, rows_per_pass):
        ids, targets = X[lo:lo + rows_per_pass], y[lo:lo + rows_per_pass].reshape(-1)
        h = model.features(ids)
        logits = kernels.linear_forward(h, model.head_weight, None, None)
        per_token = kernels.cross_entropy_forward(logits, targets, "none", loss.ignore_index,
                                                  loss.label_smoothing, weight)
        keep = targets != loss.ignore_index
        total += float(np.sum(per_token, dtype=np.float64))
        if weight is not None:
            denominator += float(np.sum(weight[targets[keep]], dtype=np.float64))
        else:
            denominator += int(np.count_nonzero(keep))
        hits += int(np.count_nonzero((logits.argmax(axis=1) == targets) & keep))
        counted += int(np.count_nonzero(keep))
    mean = total / denominator if denominator else float("nan")
    return {"loss": mean if loss.reduction == "mean" else total / n,
            "accuracy": hits / counted if counted else float("nan")}


def predict_logits(model, X, kernels, rows_per_pass=None):
    """Logits (N, T, V) of sequences ``X`` (N, T), a few sequences per pass."""
    n, T = X.shape
    if rows_per_pass is None:
        rows_per_pass = max(1, default_chunk_size(model.vocab_size, model.parameters()[0].dtype.itemsize) // T)
    out = []
    for lo in range(0, n, rows_per_pass):
        ids = X[lo:lo + rows_per_pass]
        h = model.features(ids)
        out.append(kernels.linear_forward(h, model.head_weight, None, None).reshape(ids.shape[0], T, -1))
    return out[0] if len(out) == 1 else np.concatenate(out)
