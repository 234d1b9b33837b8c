"""A small MLP's whole step as one compiled call on numba: forward, loss, backward and
update for every step of an epoch (or of a progress-bar update) in one call of
``engines/mlp_step.py``, over the flat buffers of ``PackedEngine``.

It takes a model of ``Linear`` layers, each optionally followed by ReLU / Sigmoid /
Tanh; cross_entropy or mse with reduction "mean" or "sum"; SGD or Adam (``plan`` says
whether a model fits, and why not).  The kernel reads the learning rate every step; the
other hyperparameters are fixed when the fit starts, and should a callback change them
the fit goes on layer by layer (``PackedEngine``), as that path would have run it.
Results agree with the layer-by-layer engines to float rounding (sums may round in
another order), and do not depend on the thread count (a product split over two threads
gives the bits of one thread: ``mlp_step``'s docstring).
"""

from __future__ import annotations

from .. import nn
from ..optim import SGD, Adam
from .layerwise import PackedEngine

ACTIVATIONS = (None, "relu", "sigmoid", "tanh")


def plan(model, loss, optimizer):
    """``(layers, None)`` where the fused step can train this model, else ``(None, why)``.
    layers: ``[(Linear, activation name or None)]`` in order."""
    if type(optimizer) not in (SGD, Adam):
        return None, f"optimizer {type(optimizer).__name__} (it takes SGD or Adam)"
    if type(loss) not in (nn.CrossEntropyLoss, nn.MSELoss):
        return None, f"loss {type(loss).__name__} (it takes cross_entropy or mse)"
    if loss.reduction not in ("mean", "sum"):
        return None, f"reduction {loss.reduction!r} (it takes 'mean' or 'sum')"
    if type(model) is nn.Linear:
        layers = [(model, None)]
    elif type(model) in (nn.Sequential, nn.MLP):
        layers = model.plan
    else:
        return None, f"model {type(model).__name__} (it takes Linear, Sequential or MLP)"
    width = None
    for layer, activation in layers:
        if type(layer) is not nn.Linear or activation not in ACTIVATIONS:
            return None, f"layer {type(layer).__name__} (it takes Linear layers, each with an optional activation)"
        if width is not None and layer.in_features != width:
            return None, "layer widths that do not chain"
        width = layer.out_features
    return layers, None


def multiply_adds(model, batch_size):
    """Multiply-adds of one training step (forward and backward: 3 x batch x weights)."""
    return sum(3 * batch_size * p.size for p in model.parameters() if p.ndim == 2)


class FusedMLPEngine(PackedEngine):
    """One ``mlp_step`` call per epoch (per bar update when a bar shows)."""

    name = "fused"

    def __init__(self, model, loss, optimizer, kernels, batch_size):
        super().__init__(model, loss, optimizer, kernels)
        self.batch_size = batch_size  # bounds the step's workspace (with the fit's rows)
        self.layers, why = plan(model, loss, optimizer)
        if self.layers is None:
            raise ValueError(f"engine 'fused' does not take {why}")

    def start(self, X, y, preds, rows):
        from .mlp_step import MLPStep

        super().start(X, y, preds, rows)
        table, offset = [], 0
        for layer, activation in self.layers:
            n_in, n_out = layer.in_features, layer.out_features
            bias_offset = offset + n_in * n_out if layer.bias is not None else -1
            table.append((n_in, n_out, offset, bias_offset, activation))
            offset += n_in * n_out + (n_out if layer.bias is not None else 0)
        self.linears = [layer for layer, _ in self.layers]
        optimizer, loss, dtype = self.optimizer, self.loss, self.flat.dtype
        if isinstance(optimizer, SGD):
            velocity = optimizer.state["velocity"][0] if optimizer.momentum else None
            opt = dict(optimizer="sgd", momentum=optimizer.momentum, nesterov=optimizer.nesterov,
                       weight_decay=optimizer.weight_decay)
            state = (velocity, None)
        else:
            opt = dict(optimizer="adam", betas=optimizer.betas, eps=optimizer.eps,
                       weight_decay=optimizer.weight_decay, decoupled=optimizer.decoupled)
            state = (optimizer.state["exp_avg"][0], optimizer.state["exp_avg_sq"][0])
        if isinstance(loss, nn.CrossEntropyLoss):
            loss_opts = dict(loss="cross_entropy", ignore_index=loss.ignore_index,
                             label_smoothing=loss.label_smoothing, weight=loss.weight_as(dtype))
        else:
            loss_opts = dict(loss="mse")
        # the workspace holds the largest step this fit runs: min(batch_size, rows), not
        # batch_size (a batch_size of 10**9 on 1,000 rows would ask for terabytes)
        largest = int((rows[:, 1] - rows[:, 0]).max()) if len(rows) else 1
        step = MLPStep(table, max(1, min(self.batch_size, largest)), dtype, self.flat, self.flat_grad, *state,
                       reduction=loss.reduction, **loss_opts, **opt)
        # bound once: the shuffled X, y are refilled in place every epoch
        self.steps = step.bind_steps(X, y, preds)
        self.hyper = self._hyper()
        self.fused = True
        self.steps_at_start = optimizer.steps

    def _hyper(self):
        return {k: v for k, v in self.optimizer.hyperparameters().items() if k != "lr"}

    def begin_epoch(self):
        # hyperparameters changed mid-fit (other than lr): on layer by layer
        self.fused = self.fused and self._hyper() == self.hyper
        if not self.fused:
            self.name = "packed"  # recorded as such in the history

    def run(self, first, last, losses):
        if not self.fused:
            return super().run(first, last, losses)
        optimizer = self.optimizer
        # forward, loss, backward, update and the argmax into preds of steps first..last-1
        self.steps(self.rows[first:last], optimizer.lr, optimizer.steps + 1, losses[first:last])
        optimizer.steps += last - first

    def finish(self):
        if self.fused and self.optimizer.steps != self.steps_at_start:
            # the layer-by-layer engines leave the last step's gradients on the layers
            views = iter(self.grad_views)
            for layer in self.linears:
                layer.set_gradients([next(views).copy() for _ in layer.parameters()])
        super().finish()
