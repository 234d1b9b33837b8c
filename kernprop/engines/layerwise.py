"""Layer by layer: each step calls the model's layers, the loss and the optimizer, one
kernel of the backend's table per layer (any backend, any model, any loss).

``LayerwiseEngine``: per step ``model.forward`` (each ``Linear`` with its activation
fused), ``loss.with_grad``, ``model.backward`` (skipping the first layer's input
gradient, which nothing reads), ``optimizer.step`` over every parameter array.
``PackedEngine``: the same, with the parameters, their gradients and each kind of
optimizer state in one flat buffer each for the fit, so the update is one kernel call
per step instead of one per array (elementwise, so bit-identical; the gradients are
copied into the buffer, which pays for small models only: see ``engines.choose``).

Predictions: the logits of up to ``PRED_EVERY`` consecutive steps are kept and their
argmax taken in one call.  Losses are written per step (no reduction until the epoch
ends).
"""

from __future__ import annotations

import numpy as np

from .._device import host
from .base import Engine, consecutive

PRED_EVERY = 64  # training steps whose logits are kept for one batched argmax


class LayerwiseEngine(Engine):
    """Every layer's kernel per step (see the module docstring)."""

    name = "layerwise"
    gradient_hook = None  # (grads, loss or None, step, lo, hi) -> loss: data-parallel's Allreduce

    def start(self, X, y, preds, rows):
        super().start(X, y, preds, rows)
        self.params = self.model.parameters()
        self.bounds = None  # made by the first run (the fused engine may never need them)
        self.pending = []

    def run(self, first, last, losses):
        # per step, rows lo:hi -> forward, loss and gradient, backward, (the hook,) update.
        # Bound once per call, every name the loop uses is a local: a step of a small
        # model costs the kernels plus ~5 us of Python.
        if self.bounds is None:
            self.bounds = self.rows.tolist()  # Python ints: cheaper per step than rows[s]
            self.batched_preds = consecutive(self.bounds)
        model, kernels, X, y, bounds = self.model, self.kernels, self.X, self.y, self.bounds
        forward, backward, gradients = model.forward, model.backward, model.gradients
        with_grad, update, hook, mean = self.loss.with_grad, self.update, self.gradient_hook, self.mean
        classification, batched, pending, preds = self.classification, self.batched_preds, self.pending, self.preds
        values = []  # a list append per step; stored into losses once
        append = values.append
        self.pending_lo = bounds[first][0]
        for s in range(first, last):
            lo, hi = bounds[s]
            out = loss = None
            if hi > lo:  # data-parallel: a rank may get no rows of a small batch
                out = forward(X[lo:hi])
                loss, dout = with_grad(out, y[lo:hi], kernels)
                backward(dout, need_input_grad=False)
            if hook is not None:
                loss = hook(gradients(), loss, s, lo, hi)
            update(gradients())
            append(loss if mean else np.sum(host(loss)))
            if classification and out is not None:
                if not batched:
                    host(out).argmax(axis=1, out=preds[lo:hi])
                else:
                    pending.append(out)
                    if len(pending) == PRED_EVERY:
                        self.flush_predictions()
        self.flush_predictions()
        self.store_losses(values, losses, first, last)

    def update(self, grads):
        """One optimizer step of the parameters from this step's ``grads``."""
        self.optimizer.step(self.params, grads, self.kernels)

    def store_losses(self, values, losses, first, last):
        """Write the losses of steps ``first .. last - 1`` (``values``) into ``losses``."""
        losses[first:last] = values

    def flush_predictions(self):
        """Argmax of the pending logits (consecutive rows from ``pending_lo``) into preds."""
        pending = self.pending
        if not pending:
            return
        logits = host(pending[0]) if len(pending) == 1 else np.concatenate([host(p) for p in pending])
        lo = self.pending_lo
        logits.argmax(axis=1, out=self.preds[lo:lo + logits.shape[0]])
        self.pending_lo = lo + logits.shape[0]
        pending.clear()


class PackedEngine(LayerwiseEngine):
    """Layer by layer over one flat buffer each of parameters, gradients and optimizer
    state: one optimizer kernel call per step.  While the fit runs the model's
    parameters are views into the flat buffer; ``finish`` copies the values back into
    the original arrays, which the model and optimizer hold again."""

    name = "packed"

    def start(self, X, y, preds, rows):
        model, optimizer = self.model, self.optimizer
        params = self.original = model.parameters()
        optimizer.init_state(params)  # per-array state first (refuses a mismatched one)
        self.offsets = np.cumsum([0] + [p.size for p in params])
        self.flat = np.concatenate([p.ravel() for p in params])
        self.flat_grad = np.zeros_like(self.flat)
        self.param_views = self.views(self.flat)
        self.grad_views = self.views(self.flat_grad)
        self.old_state = optimizer.state
        optimizer.set_state({
            key: [np.concatenate([a.ravel() for a in arrays])]
            for key, arrays in self.old_state.items() if len(arrays) == len(params)
        })
        model.set_parameters(self.param_views)
        super().start(X, y, preds, rows)
        self.flat_params, self.flat_grads = [self.flat], [self.flat_grad]

    def views(self, flat):
        """Views of ``flat`` shaped as each parameter, in the order of ``parameters()``."""
        return [flat[o:o + p.size].reshape(p.shape) for o, p in zip(self.offsets, self.original)]

    def training_state(self):
        # the state is one flat array per kind while the fit runs: split as the parameters
        return self.param_views, {key: self.views(flat) for key, (flat,) in self.optimizer.state.items()}

    def update(self, grads):
        """Gather ``grads`` into the flat buffer, then one optimizer call over it."""
        copyto = np.copyto
        for view, grad in zip(self.grad_views, grads):
            copyto(view, grad)
        self.optimizer.step(self.flat_params, self.flat_grads, self.kernels)

    def finish(self):
        super().finish()
        model, optimizer, params = self.model, self.optimizer, self.original
        for p, view in zip(params, self.param_views):
            p[...] = view
        model.set_parameters(params)
        state = {}
        for key, (flat_state,) in optimizer.state.items():
            old = self.old_state.get(key)
            if old is not None and len(old) == len(params):
                for a, view in zip(old, self.views(flat_state)):
                    a[...] = view
                state[key] = old
            else:
                state[key] = [view.copy() for view in self.views(flat_state)]
        optimizer.set_state(state)
