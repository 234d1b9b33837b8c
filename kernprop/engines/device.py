"""On the GPU (the ``cuda`` backend): layer by layer, with the parameters, the
optimizer state and each epoch's rows on the device for the whole fit.

``start`` copies the parameters and the optimizer state to the device (the model and
optimizer hold the device copies during the fit); ``begin_epoch`` uploads the epoch's
shuffled rows once, so each batch is a device slice; ``finish`` copies the values back
into the host arrays, which the model and optimizer hold again (so checkpoints and the
CPU backends see the trained values), the last gradients too.  Losses and logits come
back to the host once per ``run``, not per step.
"""

from __future__ import annotations

from .._device import host, to_device
from .layerwise import LayerwiseEngine


class DeviceEngine(LayerwiseEngine):
    """Layer by layer on device-resident parameters (see the module docstring)."""

    name = "device"

    def start(self, X, y, preds, rows):
        model, optimizer = self.model, self.optimizer
        self.host_params = model.parameters()
        self.host_state = optimizer.state
        self.device_params = [to_device(p) for p in self.host_params]
        model.set_parameters(self.device_params)
        optimizer.set_state({k: [to_device(a) for a in v] for k, v in self.host_state.items()})
        super().start(X, y, preds, rows)
        self.host_X = X

    def begin_epoch(self):
        self.X = to_device(self.host_X)  # one upload per epoch; each batch is then a device slice

    def training_state(self):
        # one copy to the host of each array (a checkpoint written during the fit)
        return ([host(p) for p in self.model.parameters()],
                {key: [host(a) for a in arrays] for key, arrays in self.optimizer.state.items()})

    def store_losses(self, values, losses, first, last):
        losses[first:last] = [host(v) for v in values]  # device scalars: one copy each, once per run

    def finish(self):
        super().finish()
        model, optimizer = self.model, self.optimizer
        for h, d in zip(self.host_params, self.device_params):
            d.copy_to_host(h)
        model.set_parameters(self.host_params)
        state = {}
        for key, arrays in optimizer.state.items():
            old = self.host_state.get(key, [])
            state[key] = []
            for i, a in enumerate(arrays):
                if i < len(old) and old[i].shape == a.shape and old[i].dtype == a.dtype:
                    a.copy_to_host(old[i])  # the host arrays a caller may hold stay current
                    state[key].append(old[i])
                else:
                    state[key].append(host(a))
        optimizer.set_state(state)
        model.set_gradients([host(g) for g in model.gradients()])
