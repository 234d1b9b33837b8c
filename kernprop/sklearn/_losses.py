"""The one loss the estimators need that ``kernprop.nn`` does not have: independent
logistic outputs for multilabel classification (scikit-learn's ``binary_log_loss``).

A loss object as ``Trainer`` takes it (``forward`` / ``with_grad``); it is not one the
fused step knows, so a multilabel fit runs on the layer-by-layer engines.  Binary and
multiclass labels train with ``cross_entropy`` and regression with ``mse``, which the
fused step runs (``kernprop.engines.fused_mlp``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["LogisticLoss"]


class LogisticLoss:
    """Sigmoid cross-entropy of logits z (N, L) against 0/1 targets y (N, L), summed over
    the L labels and averaged over the rows, as scikit-learn's ``binary_log_loss`` of
    ``sigmoid(z)``:  loss = sum_j mean_i (softplus(z_ij) - y_ij z_ij),
    dloss/dz = (sigmoid(z) - y) / N  (scikit-learn's delta ``activation - y`` over N)."""

    name = "logistic"
    classification = False  # float targets (N, L); the Trainer reports no accuracy
    reduction = "mean"
    weight = None

    def forward(self, z, y, kernels=None):
        # z, y (N, L) -> the loss (0-d), in float64; softplus(z) = max(z, 0) + log1p(exp(-|z|))
        # never takes exp of a large positive number
        z64 = np.asarray(z, dtype=np.float64)
        softplus = np.maximum(z64, 0.0) + np.log1p(np.exp(-np.abs(z64)))
        return np.array((softplus - y * z64).sum() / z64.shape[0])

    def with_grad(self, z, y, kernels=None):
        # z, y (N, L) -> (loss, dz (N, L) in z's dtype); sigmoid(z) = exp(-softplus(-z))
        loss = self.forward(z, y)
        z64 = np.asarray(z, dtype=np.float64)
        prob = np.exp(-(np.maximum(-z64, 0.0) + np.log1p(np.exp(-np.abs(z64)))))
        return loss, ((prob - y) / z64.shape[0]).astype(np.asarray(z).dtype)
