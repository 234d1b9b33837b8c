"""Optimizers: each parameter array is updated in place by one fused kernel call
(``kernprop.sgd_step`` / ``kernprop.adam_step``), never a Python loop over elements.

An optimizer holds hyperparameters and per-parameter state (velocities, moments), made
lazily on the first ``step`` to match the parameters it is given.  ``state_dict()``
returns plain NumPy arrays (saved in checkpoints), ``load_state_dict`` restores them.

Learning-rate schedule: ``lr_schedule(epoch) -> lr`` (epoch counted from 0) is applied
by ``start_epoch(epoch)``, which the Trainer calls before each epoch; ``set_lr(lr)``
changes the rate at any time.
"""

from __future__ import annotations

import numpy as np

from .nn import validated_ops

__all__ = ["Optimizer", "SGD", "Adam"]


def _number(name, value, low=None, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or (low is not None and value < low) or (
        high is not None and (value > high or (high_open and value == high))
    ):
        bounds = f"in [{low}, {high}{')' if high_open else ']'}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be finite and {bounds}, got {value}")
    return value


def _is_parameter_list(value):
    return isinstance(value, (list, tuple)) or hasattr(value, "__next__")


def _parameter_list_error(cls):
    return TypeError(
        f"kernprop optimizers take no parameter list: the Trainer passes the model's "
        f"parameters at each step, so write optim.{cls.__name__}(lr=...), not "
        f"optim.{cls.__name__}(model.parameters(), lr=...)"
    )


def _zeros_like(p):
    """Zeros of ``p``'s shape and dtype, on the GPU when ``p`` is a device array."""
    if isinstance(p, np.ndarray):
        return np.zeros_like(p)
    from numba import cuda

    return cuda.to_device(np.zeros(p.shape, dtype=p.dtype))


def _flag(name, value):
    if not isinstance(value, (bool, int, np.bool_, np.integer)) or value not in (0, 1):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _betas(value):
    try:
        beta1, beta2 = value
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {value!r}") from None
    return (_number("betas[0]", beta1, 0.0, 1.0, True), _number("betas[1]", beta2, 0.0, 1.0, True))


def _schedule(value):
    if value is not None and not callable(value):
        raise TypeError(f"lr_schedule must be callable(epoch) -> lr, got {value!r}")
    return value


class Optimizer:
    """Base: hyperparameters, lazily made state, schedule and state_dict.

    Every hyperparameter is checked when it is set, by the constructor or later
    (``optimizer.lr = ...`` in a callback): ``_checks`` maps each name to the check
    the constructor uses, so an engine only ever reads valid values."""

    kind = ""
    _state_names: tuple = ()
    _checks = {"lr": lambda v: _number("lr", v, 0.0), "lr_schedule": _schedule}

    def __setattr__(self, name, value):
        check = type(self)._checks.get(name)
        if check is not None:
            value = check(value)
        super().__setattr__(name, value)

    def __new__(cls, *args, **kwargs):
        # Runs before __init__ binds its arguments, so optim.Adam(params, lr=...) gets
        # this message rather than "got multiple values for argument 'lr'".
        if args and _is_parameter_list(args[0]):
            raise _parameter_list_error(cls)
        return super().__new__(cls)

    def __init__(self, lr, lr_schedule=None):
        self.lr = lr  # checked by __setattr__, as every hyperparameter
        self.lr_schedule = lr_schedule
        self.state: dict[str, list[np.ndarray]] = {}
        self.steps = 0
        self._checked = None  # the parameter list the state was last checked against

    def set_lr(self, lr):
        """Set the learning rate (a finite number >= 0) for the following steps."""
        self.lr = lr

    def start_epoch(self, epoch):
        """Apply the schedule (if any) for ``epoch`` (0-based)."""
        if self.lr_schedule is not None:
            self.set_lr(self.lr_schedule(epoch))

    def init_state(self, params):
        """Make the state for ``params`` (zeros) unless the state already fits them;
        refuses a state of other shapes once steps were taken.  The Trainer passes the
        same list every step: it is checked once, not per step."""
        if params is self._checked:
            return
        first = self._state_names[0] if self._state_names else None
        if first is None:
            self._checked = params
            return
        self._checked = None
        state = self.state.get(first)
        if state is not None and len(state) == len(params) and all(
            s.shape == p.shape and s.dtype == p.dtype for s, p in zip(state, params)
        ):
            self._checked = params
            return
        if state is not None and self.steps:
            raise ValueError(
                "the optimizer state does not match these parameters "
                f"({len(state)} state arrays for {len(params)} parameters)"
            )
        for name in self._state_names:
            self.state[name] = [_zeros_like(p) for p in params]
        self._checked = params

    def set_state(self, state):
        """Replace the state (``{name: [arrays]}``, e.g. flat or device copies while a
        Trainer runs); it is checked against the parameters at the next step."""
        self.state = state
        self._checked = None

    def step(self, params, grads, kernels=None):
        """Update every array of ``params`` in place from ``grads`` (same order).

        ``kernels``: a kernel namespace from ``kernprop.nn`` (the Trainer passes the
        backend's raw kernels); default the validated public ops on the default backend.
        """
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        """The hyperparameters by name, as the floats a checkpoint stores (flags as 0.0
        or 1.0; ``repr`` shows them in the constructor's types)."""
        return {"lr": self.lr}

    def state_dict(self, state=None) -> dict[str, np.ndarray]:
        """Hyperparameters, step count and state as NumPy arrays, keyed by name.

        ``state``: the state to save instead of ``self.state`` (``{name: [arrays]}``, one
        per parameter: a Trainer mid-fit passes its engine's ``training_state``)."""
        state = self.state if state is None else state
        out = {"kind": np.array(self.kind), "steps": np.array(self.steps, dtype=np.int64)}
        for key, value in self.hyperparameters().items():
            out[key] = np.array(value, dtype=np.float64)
        for name in self._state_names:
            for i, array in enumerate(state.get(name, [])):
                out[f"{name}.{i}"] = np.array(array, copy=True)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (state arrays are copied in)."""
        try:
            kind = str(state["kind"])
            if kind != self.kind:
                raise ValueError(f"optimizer state is for {kind!r}, not {self.kind!r}")
            steps = int(state["steps"])
            hyper = {key: float(state[key]) for key in self.hyperparameters()}
        except KeyError as exc:
            raise ValueError(f"optimizer state has no entry {exc.args[0]!r}") from None
        self._set_hyperparameters(hyper)  # first: it decides which state arrays exist
        arrays = {}
        for name in self._state_names:
            indices = sorted(int(k.split(".", 1)[1]) for k in state if k.startswith(name + "."))
            if indices != list(range(len(indices))):
                raise ValueError(f"optimizer state {name!r} arrays are not numbered 0..n-1")
            arrays[name] = [np.array(state[f"{name}.{i}"], copy=True, order="C") for i in indices]
        counts = {len(v) for v in arrays.values()}
        if len(counts) > 1:
            raise ValueError(f"optimizer state arrays disagree in count: {counts}")
        for name, group in arrays.items():
            for i, array in enumerate(group):
                if array.dtype not in (np.float32, np.float64):
                    raise ValueError(f"optimizer state {name}.{i} must be float32 or float64, got {array.dtype}")
        self.steps = steps
        self.state = {k: v for k, v in arrays.items() if v}
        self._checked = None

    def _set_hyperparameters(self, hyper):
        self.lr = hyper["lr"]

    def _init_args(self) -> dict:
        # the constructor's arguments in their own types (hyperparameters() holds them
        # as the floats a checkpoint stores)
        return {"lr": self.lr}

    def __repr__(self):
        args = {**self._init_args(), **({"lr_schedule": self.lr_schedule} if self.lr_schedule else {})}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


class SGD(Optimizer):
    """``torch.optim.SGD`` (dampening 0): ``g = grad + weight_decay * p``; with momentum
    ``v = momentum * v + g`` and the step ``v`` (``g + momentum * v`` with nesterov);
    ``p -= lr * step``."""

    kind = "sgd"
    _checks = {**Optimizer._checks,
               "momentum": lambda v: _number("momentum", v, 0.0, 1.0),
               "weight_decay": lambda v: _number("weight_decay", v, 0.0),
               "nesterov": lambda v: _flag("nesterov", v)}

    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0, lr_schedule=None):
        super().__init__(lr, lr_schedule)
        object.__setattr__(self, "nesterov", False)  # momentum is checked against it
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = nesterov

    def __setattr__(self, name, value):
        if name in ("momentum", "nesterov"):
            # nesterov needs momentum (checked as the constructor does), and momentum
            # decides which state exists
            value = self._checks[name](value)
            momentum = value if name == "momentum" else self.momentum
            if momentum == 0 and (value if name == "nesterov" else self.nesterov):
                raise ValueError("nesterov requires momentum > 0")
            if name == "momentum":
                super().__setattr__("_state_names", ("velocity",) if value else ())
                super().__setattr__("_checked", None)
        super().__setattr__(name, value)

    def step(self, params, grads, kernels=None):
        k = kernels or validated_ops(None)
        self.init_state(params)
        velocities = self.state["velocity"] if self.momentum else [None] * len(params)
        lr, momentum, nesterov, wd = self.lr, self.momentum, self.nesterov, self.weight_decay
        sgd_step = k.sgd_step
        for p, g, v in zip(params, grads, velocities):
            sgd_step(p, g, v, lr, momentum, nesterov, wd)
        self.steps += 1

    def hyperparameters(self):
        return {
            "lr": self.lr, "momentum": self.momentum, "nesterov": float(self.nesterov),
            "weight_decay": self.weight_decay,
        }

    def _init_args(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def _set_hyperparameters(self, hyper):
        self.lr = hyper["lr"]
        object.__setattr__(self, "nesterov", False)  # momentum is checked against it
        self.momentum = hyper["momentum"]
        self.nesterov = bool(hyper["nesterov"])  # as the constructor: a saved state is checked alike
        self.weight_decay = hyper["weight_decay"]


class Adam(Optimizer):
    """``torch.optim.Adam``; ``decoupled=True`` is ``torch.optim.AdamW`` (the decay
    shrinks the weights instead of joining the gradient)."""

    kind = "adam"
    _state_names = ("exp_avg", "exp_avg_sq")
    _checks = {**Optimizer._checks, "betas": _betas,
               "eps": lambda v: _number("eps", v, 0.0),
               "weight_decay": lambda v: _number("weight_decay", v, 0.0),
               "decoupled": lambda v: _flag("decoupled", v)}

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False,
                 lr_schedule=None):
        super().__init__(lr, lr_schedule)
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.decoupled = decoupled

    def step(self, params, grads, kernels=None):
        k = kernels or validated_ops(None)
        self.init_state(params)
        self.steps += 1
        step, lr, (b1, b2), eps = self.steps, self.lr, self.betas, self.eps
        wd, dec = self.weight_decay, self.decoupled
        adam_step = k.adam_step
        for p, g, m, v in zip(params, grads, self.state["exp_avg"], self.state["exp_avg_sq"]):
            adam_step(p, g, m, v, step, lr, b1, b2, eps, wd, dec)

    def hyperparameters(self):
        return {
            "lr": self.lr, "beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps,
            "weight_decay": self.weight_decay, "decoupled": float(self.decoupled),
        }

    def _init_args(self):
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                "decoupled": self.decoupled}

    def _set_hyperparameters(self, hyper):
        self.lr = hyper["lr"]
        self.betas = (hyper["beta1"], hyper["beta2"])
        self.eps = hyper["eps"]
        self.weight_decay = hyper["weight_decay"]
        self.decoupled = bool(hyper["decoupled"])


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
