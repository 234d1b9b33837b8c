"""Layers and losses for small networks, each running through kernprop's ops.

Every layer is a forward/backward pair: ``forward(x)`` computes and caches what its
backward needs, ``backward(dy)`` returns the gradient with respect to the input and
keeps the gradients of the parameters, listed by ``gradients()`` in the order of
``parameters()``.  Batches are rows; a ``Linear`` weight is ``(in_features,
out_features)``, so the layer is ``x @ w + b``, as in ``kernprop.linear``.

Layers run on their ``backend`` attribute (None: the default backend); setting it on a
``Sequential`` sets it on every layer inside.  A ``Linear`` followed by an activation in
a ``Sequential`` runs as one fused ``linear(x, w, b, activation=...)``.

Called directly, layers go through the validated public ops.  Inside
``Trainer.fit``, which validates the data once per fit, they call the backend's kernels
directly (``kernprop.backends.family``), skipping the per-call checks (see
``bind_kernels``); the arithmetic is the same.

Initialisation draws from a ``numpy.random.Generator`` (``rng``: a Generator, an int
seed, or None for fresh entropy): He uniform, ``U(-sqrt(6 / fan_in), +)``, for a
``Linear`` feeding a ReLU, Glorot uniform, ``U(-sqrt(6 / (fan_in + fan_out)), +)``,
otherwise; biases start at 0.
"""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import numpy as np

from . import ops
from .backends import family, resolve
from ._validate import check_int
from .precision import check_precision, get_matmul_precision

__all__ = [
    "Module",
    "Linear",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "Sequential",
    "MLP",
    "Embedding",
    "LayerNorm",
    "GELU",
    "CausalSelfAttention",
    "TransformerBlock",
    "GPT",
    "CrossEntropyLoss",
    "MSELoss",
    "make_loss",
    "bind_kernels",
    "kernel_table",
    "raw_kernels",
    "validated_ops",
    "to_config",
    "from_config",
    "parameter_shapes",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --- the functions a layer calls -----------------------------------------------------
#
# One table per backend, with the kernel contract's signatures (see kernprop.kernels):
# the backend's kernel functions themselves (``raw_kernels``: unchecked, for the Trainer,
# which checks its data once per fit) or the public ops bound to the backend
# (``validated_ops``: checked, what a layer called directly uses).  Both are made from
# the one declaration below; layers only ever call ``self._kernels().<name>(...)``, the
# table ``bind_kernels`` passed them or the checked one of their ``backend``.

# name -> (its family, the checked public op with the kernel's signature, for backend b)
_FUNCTIONS = {
    "linear_forward": ("matmul", lambda b: lambda x, w, bias, act: ops.linear(x, w, bias, activation=act, backend=b)),
    "linear_backward": ("matmul", lambda b: lambda x, w, dy, has_bias, need_dx=True: ops.linear_backward(
        x, w, dy, has_bias, need_dx=need_dx, backend=b)),
    "relu_forward": ("activations", lambda b: lambda x: ops.relu(x, backend=b)),
    "relu_backward": ("activations", lambda b: lambda x, dy: ops.relu_backward(x, dy, backend=b)),
    "sigmoid_forward": ("activations", lambda b: lambda x: ops.sigmoid(x, backend=b)),
    "sigmoid_backward": ("activations", lambda b: lambda y, dy: ops.sigmoid_backward(y, dy, backend=b)),
    "tanh_forward": ("activations", lambda b: lambda x: ops.tanh(x, backend=b)),
    "tanh_backward": ("activations", lambda b: lambda y, dy: ops.tanh_backward(y, dy, backend=b)),
    "softmax_forward": ("softmax", lambda b: lambda x: ops.softmax(x, backend=b)),
    "cross_entropy_forward": ("losses", lambda b: lambda z, t, r, ii, ls, w: ops.cross_entropy(
        z, t, r, ii, ls, w, backend=b)),
    "cross_entropy_with_grad": ("losses", lambda b: lambda z, t, r, ii, ls, w: ops.cross_entropy_with_grad(
        z, t, r, ii, ls, w, backend=b)),
    "mse_forward": ("losses", lambda b: lambda p, t, r: ops.mse(p, t, r, backend=b)),
    "mse_backward": ("losses", lambda b: lambda p, t, r: ops.mse_backward(p, t, r, backend=b)),
    "sgd_step": ("optimizers", lambda b: lambda p, g, v, lr, m, nest, wd: ops.sgd_step(
        p, g, v, lr=lr, momentum=m, nesterov=nest, weight_decay=wd, backend=b)),
    "adam_step": ("optimizers", lambda b: lambda p, g, m, v, step, lr, b1, b2, eps, wd, dec: ops.adam_step(
        p, g, m, v, step, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, decoupled=dec, backend=b)),
    # the transformer's ops; the products among them take the precision as an argument
    # (the layers pass their table's, see _product_precision)
    "gelu_forward": ("activations", lambda b: lambda x, approximate: ops.gelu(x, approximate, backend=b)),
    "gelu_backward": ("activations", lambda b: lambda x, dy, approximate: ops.gelu_backward(
        x, dy, approximate, backend=b)),
    "layer_norm_forward": ("normalization", lambda b: lambda x, w, bias, eps: ops.layer_norm(
        x, w, bias, eps=eps, backend=b)),
    "layer_norm_backward": ("normalization", lambda b: lambda x, w, mean, rstd, dy, has_bias: ops.layer_norm_backward(
        x, w, mean, rstd, dy, has_bias, backend=b)),
    "attention_forward": ("attention", lambda b: lambda q, k, v, causal, scale, p: ops.attention(
        q, k, v, causal=causal, scale=scale, precision=p, backend=b)),
    "attention_backward": ("attention", lambda b: lambda q, k, v, out, lse, dout, causal, scale, p: ops.attention_backward(
        q, k, v, out, lse, dout, causal=causal, scale=scale, precision=p, backend=b)),
    "embedding_forward": ("embedding", lambda b: lambda ids, table: ops.embedding(ids, table, backend=b)),
    "embedding_backward": ("embedding", lambda b: lambda ids, dy, n: ops.embedding_backward(ids, dy, n, backend=b)),
    "linear_cross_entropy": ("losses", lambda b: lambda x, w, bias, t, r, ii, ls, wt, cs, p: ops.linear_cross_entropy(
        x, w, bias, t, r, ii, ls, wt, cs, precision=p, backend=b)),
}

_TABLES: dict = {}  # (backend name or None, checked, precision) -> table


def _with_precision(functions, precision, checked, backend):
    # The products (linear forward and backward) at ``precision``; everything else
    # (activations, softmax, the loss, the optimizer) stays in the dtype's precision.
    if checked:
        functions["linear_forward"] = lambda x, w, bias, act: ops.linear(
            x, w, bias, activation=act, precision=precision, backend=backend)
        functions["linear_backward"] = lambda x, w, dy, has_bias, need_dx=True: ops.linear_backward(
            x, w, dy, has_bias, need_dx=need_dx, precision=precision, backend=backend)
        return
    forward, backward = functions["linear_forward"], functions["linear_backward"]
    # the kernels' contract: float64 always computes in float64
    functions["linear_forward"] = lambda x, w, bias, act: forward(
        x, w, bias, act, precision if x.dtype.itemsize == 4 else "fp32")
    functions["linear_backward"] = lambda x, w, dy, has_bias, need_dx=True: backward(
        x, w, dy, has_bias, need_dx, precision if x.dtype.itemsize == 4 else "fp32")


def kernel_table(backend, checked=False, precision=None):
    """The table of functions layers, losses and optimizers call, for ``backend``:
    its kernels (``checked=False``; the name resolved now, inputs must already satisfy
    the contract in ``kernprop.kernels``) or the public ops bound to it (``checked=True``;
    None: the default backend at each call).  ``precision`` ("fp32", "bf16x3", "bf16",
    see ``kernprop.precision``) is that of the linear layers' products (None: the
    global default of ``kernprop.set_matmul_precision``, read at each call for a checked
    table and now for a kernel table).  Made once per backend and precision and kept."""
    if precision is not None:
        check_precision(precision)
    elif not checked:
        precision = get_matmul_precision()
    key = (backend if checked else resolve(backend), checked, precision)
    table = _TABLES.get(key)
    if table is None:
        if checked:
            functions = {name: checked_op(backend) for name, (_, checked_op) in _FUNCTIONS.items()}
        else:
            functions = {name: getattr(family(key[0], family_name), name)
                         for name, (family_name, _) in _FUNCTIONS.items()}
        if precision is not None and (checked or precision != "fp32"):
            _with_precision(functions, precision, checked, backend)
        table = _TABLES[key] = SimpleNamespace(trusted=not checked, name=key[0], precision=precision,
                                               **functions)
    return table


def validated_ops(backend, precision=None):
    """The public ops bound to ``backend`` (None: the default at each call), their
    products at ``precision`` (None: the global default at each call)."""
    return kernel_table(backend, checked=True, precision=precision)


def raw_kernels(backend, precision=None):
    """The kernel functions of ``backend`` (resolved now), unvalidated: inputs must
    already satisfy the contract in ``kernprop.kernels``; products at ``precision``
    (None: the global default now)."""
    return kernel_table(backend, precision=precision)


@contextlib.contextmanager
def bind_kernels(module, kernels):
    """Inside the block, ``module`` (and every layer in it) calls the kernel table
    ``kernels``: a namespace from ``raw_kernels`` (a backend's kernels, unchecked: for
    callers that have validated their inputs once, as ``Trainer.fit``) or from
    ``validated_ops``; a backend name means ``raw_kernels(name)``.  Yields the table and
    restores what each layer called before."""
    if isinstance(kernels, str):
        kernels = raw_kernels(kernels)
    layers = list(module.modules())
    saved = [layer._bound for layer in layers]
    for layer in layers:
        layer._bound = kernels
    try:
        yield kernels
    finally:
        for layer, old in zip(layers, saved):
            layer._bound = old


# --- layers --------------------------------------------------------------------------


def _as_rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {rng!r}")


class Module:
    """Base of every layer: a backend, parameters and their gradients."""

    def __init__(self):
        self._backend = None
        self._bound = None  # kernel namespace set by bind_kernels, else None

    # backend --------------------------------------------------------------------------
    @property
    def backend(self):
        """The backend name this module's layers run on (None: the default backend);
        setting it checks the name and sets every layer inside."""
        return self._backend

    @backend.setter
    def backend(self, name):
        if name is not None:
            resolve(name)  # unknown names fail here, not at the first step
        self._backend = name
        for child in self.children():
            child.backend = name

    def _kernels(self):
        return self._bound or validated_ops(self._backend)

    # structure ------------------------------------------------------------------------
    def children(self):
        """The modules directly inside this one, in order (none for a layer)."""
        return []

    def modules(self):
        """This module and every module inside it, depth first."""
        yield self
        for child in self.children():
            yield from child.modules()

    def parameters(self):
        """The parameter arrays, in a fixed order (for a ``Linear``: weight, then bias);
        the Trainer and the optimizers update them in place.  Unlike PyTorch, an
        optimizer does not take this list: the Trainer passes it at each step."""
        return []

    def gradients(self):
        """The gradient arrays of the last ``backward``, in the order of ``parameters()``."""
        return []

    def set_parameters(self, arrays):
        """Rebind the parameters to ``arrays`` (same order and shapes as ``parameters()``,
        e.g. their device copies while a Trainer runs on the GPU, or views into one flat
        buffer)."""
        if len(arrays):
            raise ValueError(f"{type(self).__name__} has no parameters")

    def set_gradients(self, arrays):
        """Rebind the gradients to ``arrays`` (same order and shapes as ``gradients()``)."""
        if len(arrays):
            raise ValueError(f"{type(self).__name__} has no gradients")

    def config(self) -> dict:
        """The architecture of this module as JSON-able data (see ``from_config``)."""
        return {"type": type(self).__name__}

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        """The output for input ``x``, keeping what ``backward`` needs."""
        raise NotImplementedError

    def backward(self, dy, need_input_grad=True):
        """Gradient of the input from ``dy``, the gradient of the last ``forward``'s
        output; fills ``gradients()``.  ``need_input_grad=False`` lets a module skip the
        input gradient where nothing reads it (the Trainer passes it for the whole
        model) and return None."""
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Linear(Module):
    """``y = x @ weight + bias``: x (N, in_features) -> y (N, out_features).

    ``init`` is "glorot" (default) or "he"; ``nn.MLP`` picks "he" before a ReLU.
    """

    def __init__(self, in_features, out_features, bias=True, rng=None, *, init="glorot",
                 dtype=np.float32):
        super().__init__()
        for arg, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if init not in ("glorot", "he"):
            raise ValueError(f"init must be 'glorot' or 'he', got {init!r}")
        dtype = np.dtype(dtype)
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        if self.in_features * self.out_features * 8 > np.iinfo(np.intp).max:  # drawn in float64
            raise ValueError(f"in_features x out_features = {self.in_features} x {self.out_features} "
                             "weights are more than one array can hold")
        self.init = init
        fan_in, fan_out = self.in_features, self.out_features
        limit = math.sqrt(6.0 / fan_in) if init == "he" else math.sqrt(6.0 / (fan_in + fan_out))
        # Draw in float64 then round, so float32 and float64 models start from the same numbers.
        self.weight = _as_rng(rng).uniform(-limit, limit, (fan_in, fan_out)).astype(dtype)
        self.bias = np.zeros(fan_out, dtype=dtype) if bias else None
        self.dweight = np.zeros_like(self.weight)
        self.dbias = np.zeros_like(self.bias) if bias else None
        self._x = self._y = self._activation = None

    @property
    def dtype(self):
        """The parameters' dtype (float32 or float64)."""
        return self.weight.dtype

    def forward(self, x, activation=None):
        # x (N, IN) -> y = activation(x @ w + b) (N, OUT); keeps x (and y when fused)
        y = self._kernels().linear_forward(x, self.weight, self.bias, activation)
        self._x, self._activation = x, activation
        self._y = y if activation is not None else None
        return y

    def backward(self, dy, need_input_grad=True):
        # dy (N, OUT) -> dx (N, IN); dweight = x.T @ dz, dbias = sum of dz over rows,
        # dz = dy * activation'(pre-activation), computed from the cached output y.
        if self._x is None:
            raise RuntimeError("Linear.backward called before forward")
        k = self._kernels()
        if self._activation == "relu":
            dy = k.relu_backward(self._y, dy)  # y > 0 exactly where x @ w + b > 0
        elif self._activation == "sigmoid":
            dy = k.sigmoid_backward(self._y, dy)
        elif self._activation == "tanh":
            dy = k.tanh_backward(self._y, dy)
        dx, self.dweight, self.dbias = k.linear_backward(self._x, self.weight, dy, self.bias is not None,
                                                          need_input_grad)
        return dx

    def parameters(self):
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def set_parameters(self, arrays):
        if len(arrays) != len(self.parameters()):
            raise ValueError(f"Linear takes {len(self.parameters())} parameter arrays, got {len(arrays)}")
        self.weight = arrays[0]
        if self.bias is not None:
            self.bias = arrays[1]

    def set_gradients(self, arrays):
        if len(arrays) != len(self.parameters()):
            raise ValueError(f"Linear takes {len(self.parameters())} gradient arrays, got {len(arrays)}")
        self.dweight = arrays[0]
        self.dbias = arrays[1] if self.bias is not None else None

    def gradients(self):
        return [self.dweight] if self.bias is None else [self.dweight, self.dbias]

    def config(self):
        return {
            "type": "Linear",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "init": self.init,
            "dtype": self.weight.dtype.name,
        }


class _Activation(Module):
    name = ""
    saves_output = True  # backward takes the forward output (sigmoid, tanh) or input (relu)

    def forward(self, x):
        k = self._kernels()
        y = getattr(k, f"{self.name}_forward")(x)
        self._saved = y if self.saves_output else x
        return y

    def backward(self, dy, need_input_grad=True):
        if getattr(self, "_saved", None) is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return getattr(self._kernels(), f"{self.name}_backward")(self._saved, dy)


class ReLU(_Activation):
    """``max(x, 0)``; gradient ``dy`` where ``x > 0``."""

    name = "relu"
    saves_output = False


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``; gradient ``dy * y * (1 - y)``."""

    name = "sigmoid"


class Tanh(_Activation):
    """``tanh(x)``; gradient ``dy * (1 - y**2)``."""

    name = "tanh"


class Sequential(Module):
    """Layers applied in order; a ``Linear`` followed by an activation runs fused."""

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}] must be a kernprop.nn.Module, got {type(layer).__name__}")
        self.layers = list(layers)
        # The plan: (layer, fused activation name or None); a fused activation layer is
        # skipped, its work done inside the Linear's kernel.
        plan, i = [], 0
        while i < len(self.layers):
            layer = self.layers[i]
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            if isinstance(layer, Linear) and isinstance(nxt, _Activation):
                plan.append((layer, nxt.name))
                i += 2
            else:
                plan.append((layer, None))
                i += 1
        self.plan = plan  # public: the fused training engine reads the layer table from it
        self._plan_reversed = plan[::-1]

    def children(self):
        return list(self.layers)

    def forward(self, x):
        for layer, activation in self.plan:
            x = layer.forward(x, activation) if activation is not None else layer.forward(x)
        return x

    def backward(self, dy, need_input_grad=True):
        first = self.plan[0][0]
        for layer, _ in self._plan_reversed:
            dy = layer.backward(dy, need_input_grad or layer is not first)
        return dy

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def set_parameters(self, arrays):
        self._split(arrays, "set_parameters", "parameter")

    def set_gradients(self, arrays):
        self._split(arrays, "set_gradients", "gradient")

    def _split(self, arrays, method, what):
        start = 0
        for layer in self.layers:
            count = len(layer.parameters())
            getattr(layer, method)(arrays[start:start + count])
            start += count
        if start != len(arrays):
            raise ValueError(f"Sequential takes {start} {what} arrays, got {len(arrays)}")

    def gradients(self):
        return [g for layer in self.layers for g in layer.gradients()]

    def config(self):
        return {"type": "Sequential", "layers": [layer.config() for layer in self.layers]}

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"{type(self).__name__}(\n  {inner}\n)"


_ACTIVATION_LAYERS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}


class MLP(Sequential):
    """``sizes = (in, hidden..., out)``: Linear + activation between every pair, the
    last Linear without activation (its outputs are logits or regression values)."""

    def __init__(self, sizes, activation="relu", rng=None, *, bias=True, dtype=np.float32):
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least the input and output sizes, got {sizes}")
        if not isinstance(activation, str) or activation not in _ACTIVATION_LAYERS:
            # a str first: an unhashable value (an array, a list) would fail the lookup
            # with "unhashable type" instead of naming the argument
            raise ValueError(f"activation must be one of {tuple(_ACTIVATION_LAYERS)}, got {activation!r}")
        rng = _as_rng(rng)
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            hidden = i < len(sizes) - 2
            init = "he" if hidden and activation == "relu" else "glorot"
            layers.append(Linear(fan_in, fan_out, bias, rng, init=init, dtype=dtype))
            if hidden:
                layers.append(_ACTIVATION_LAYERS[activation]())
        super().__init__(*layers)
        self.sizes, self.activation = sizes, activation


def to_config(module) -> dict:
    """The architecture of ``module`` as JSON-able data; ``from_config`` rebuilds it."""
    return module.config()


def parameter_shapes(config) -> list:
    """The shapes of ``parameters()`` of the module ``config`` describes, without
    building it (so a checkpoint can be checked before anything is allocated).  Raises
    ValueError for a config ``from_config`` would refuse."""
    if not isinstance(config, dict) or not isinstance(config.get("type"), str):
        raise ValueError(f"a layer config must be a dict with a 'type', got {config!r}")
    kind = config["type"]
    if kind == "Sequential":
        layers = config.get("layers")
        if not isinstance(layers, list):
            raise ValueError("a Sequential config needs a 'layers' list")
        return [shape for c in layers for shape in parameter_shapes(c)]
    if kind == "Linear":
        fan_in, fan_out = config.get("in_features"), config.get("out_features")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (fan_in, fan_out)):
            raise ValueError(f"a Linear config needs positive int sizes, got {config!r}")
        return [(fan_in, fan_out), (fan_out,)] if config.get("bias") else [(fan_in, fan_out)]
    shapes = _transformer_shapes(kind, config)
    return [] if shapes is None else shapes


def from_config(config) -> Module:
    """Rebuild a module (with freshly initialised parameters) from ``Module.config()``."""
    if not isinstance(config, dict) or not isinstance(config.get("type"), str):
        raise ValueError(f"a layer config must be a dict with a 'type', got {config!r}")
    kind = config["type"]
    if kind == "Sequential":
        layers = config.get("layers")
        if not isinstance(layers, list):
            raise ValueError("a Sequential config needs a 'layers' list")
        return Sequential(*[from_config(c) for c in layers])
    if kind == "Linear":
        try:
            return Linear(
                config["in_features"], config["out_features"], bool(config["bias"]), 0,
                init=config.get("init", "glorot"), dtype=config.get("dtype", "float32"),
            )
        except KeyError as exc:
            raise ValueError(f"a Linear config needs {exc.args[0]!r}") from None
    layer = _transformer_from_config(kind, config)
    if layer is not None:
        return layer
    classes = {"ReLU": ReLU, "Sigmoid": Sigmoid, "Tanh": Tanh}
    if kind in classes and set(config) == {"type"}:
        return classes[kind]()
    raise ValueError(f"unknown layer config {config!r}")


# --- transformer layers --------------------------------------------------------------
#
# GPT-2's layers (llm.c's train_gpt2.c, nanoGPT's model.py), each a forward/backward
# pair on the kernel table.  Activations are (B, T, C) arrays; a layer reshapes them to
# the (B*T, C) rows the ops take (a view: they are contiguous).  Linear weights are
# (in, out), as everywhere in kernprop: a PyTorch twin's weights are their transposes.


def _product_precision(kernels, dtype):
    # the precision of a product the layer calls itself (attention, the fused head):
    # the table's (None: the global default, for the checked ops), fp32 for float64
    return kernels.precision if dtype.itemsize == 4 else "fp32"


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _normal(rng, std, shape, dtype):
    # drawn in float64 then rounded: float32 and float64 models start from the same numbers
    return (rng.standard_normal(shape) * std).astype(dtype)


class _Container(Module):
    """A module made of child modules: parameters and gradients are the children's, in order."""

    def parameters(self):
        return [p for child in self.children() for p in child.parameters()]

    def gradients(self):
        return [g for child in self.children() for g in child.gradients()]

    def set_parameters(self, arrays):
        self._split(arrays, "set_parameters", "parameter")

    def set_gradients(self, arrays):
        self._split(arrays, "set_gradients", "gradient")

    def _split(self, arrays, method, what):
        start = 0
        for child in self.children():
            count = len(child.parameters())
            getattr(child, method)(arrays[start:start + count])
            start += count
        if start != len(arrays):
            raise ValueError(f"{type(self).__name__} takes {start} {what} arrays, got {len(arrays)}")


class Embedding(Module):
    """Rows of ``weight`` (num_embeddings, embedding_dim) at integer ``ids`` (any shape)
    -> ``ids.shape + (embedding_dim,)``; the backward sums ``dy`` into the rows of the
    ids (``kernprop.embedding_backward``).  Initialised N(0, 0.02), as GPT-2."""

    def __init__(self, num_embeddings, embedding_dim, rng=None, *, std=0.02, dtype=np.float32):
        super().__init__()
        self.num_embeddings = _positive("num_embeddings", num_embeddings)
        self.embedding_dim = _positive("embedding_dim", embedding_dim)
        self.weight = _normal(_as_rng(rng), std, (self.num_embeddings, self.embedding_dim), _float_dtype(dtype))
        self.dweight = np.zeros_like(self.weight)
        self._ids = None

    def forward(self, ids):
        # ids (...) int64 -> (..., C)
        self._ids = ids
        return self._kernels().embedding_forward(ids, self.weight)

    def backward(self, dy, need_input_grad=False):
        # dy (..., C) -> dweight (V, C); ids have no gradient: returns None
        if self._ids is None:
            raise RuntimeError("Embedding.backward called before forward")
        self.dweight = self._kernels().embedding_backward(self._ids, dy, self.num_embeddings)
        return None

    def parameters(self):
        return [self.weight]

    def gradients(self):
        return [self.dweight]

    def set_parameters(self, arrays):
        (self.weight,) = arrays

    def set_gradients(self, arrays):
        (self.dweight,) = arrays

    def config(self):
        return {"type": "Embedding", "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim, "dtype": self.weight.dtype.name}


class LayerNorm(Module):
    """Normalises the last axis of ``x`` (..., C): ``(x - mean) * rstd * weight + bias``
    (``kernprop.layer_norm``); weight starts at 1, bias at 0."""

    def __init__(self, normalized_shape, eps=1e-5, bias=True, *, dtype=np.float32):
        super().__init__()
        self.normalized_shape = _positive("normalized_shape", normalized_shape)
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not eps >= 0:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.eps = float(eps)
        dtype = _float_dtype(dtype)
        self.weight = np.ones(self.normalized_shape, dtype)
        self.bias = np.zeros(self.normalized_shape, dtype) if bias else None
        self.dweight = np.zeros_like(self.weight)
        self.dbias = np.zeros_like(self.bias) if bias else None
        self._x = None

    def forward(self, x):
        # x (..., C) -> y (..., C); keeps x (N, C), mean (N,), rstd (N,)
        x2 = x.reshape(-1, self.normalized_shape)
        y, self._mean, self._rstd = self._kernels().layer_norm_forward(x2, self.weight, self.bias, self.eps)
        self._x = x2
        return y.reshape(x.shape)

    def backward(self, dy, need_input_grad=True):
        # dy (..., C) -> dx (..., C); dweight, dbias (C,)
        if self._x is None:
            raise RuntimeError("LayerNorm.backward called before forward")
        dx, self.dweight, self.dbias = self._kernels().layer_norm_backward(
            self._x, self.weight, self._mean, self._rstd, dy.reshape(self._x.shape), self.bias is not None)
        return dx.reshape(dy.shape)

    def parameters(self):
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def gradients(self):
        return [self.dweight] if self.bias is None else [self.dweight, self.dbias]

    def set_parameters(self, arrays):
        self.weight = arrays[0]
        if self.bias is not None:
            self.bias = arrays[1]

    def set_gradients(self, arrays):
        self.dweight = arrays[0]
        self.dbias = arrays[1] if self.bias is not None else None

    def config(self):
        return {"type": "LayerNorm", "normalized_shape": self.normalized_shape, "eps": self.eps,
                "bias": self.bias is not None, "dtype": self.weight.dtype.name}


class GELU(Module):
    """``x * Phi(x)`` (``approximate="none"``, through erf) or GPT-2's tanh form
    (``"tanh"``), as ``torch.nn.GELU``; the backward takes the saved input."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ops.GELU_APPROXIMATIONS:
            raise ValueError(f"approximate must be one of {ops.GELU_APPROXIMATIONS}, got {approximate!r}")
        self.approximate = approximate
        self._x = None

    def forward(self, x):
        self._x = x
        return self._kernels().gelu_forward(x, self.approximate)

    def backward(self, dy, need_input_grad=True):
        if self._x is None:
            raise RuntimeError("GELU.backward called before forward")
        return self._kernels().gelu_backward(self._x, dy, self.approximate)

    def config(self):
        return {"type": "GELU", "approximate": self.approximate}


class CausalSelfAttention(_Container):
    """x (B, T, C) -> (B, T, C): a qkv projection ``Linear(C, 3C)``, causal attention
    over ``n_head`` heads of ``C / n_head`` (the fused op, on strided views of the
    projection: no copies of q, k, v), an output projection ``Linear(C, C)``.

    ``forward(x, cache=(k, v), pos=p)`` (generation) also writes the keys and values of
    x's positions ``p..p+T-1`` into the cache arrays (B, H, block_size, D) and attends
    over every cached position before them: a prompt at ``p = 0`` (causal), or one new
    token at ``p > 0``."""

    def __init__(self, n_embd, n_head, rng=None, *, proj_std=0.02, dtype=np.float32):
        super().__init__()
        self.n_embd, self.n_head = _positive("n_embd", n_embd), _positive("n_head", n_head)
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        rng = _as_rng(rng)
        self.c_attn = Linear(n_embd, 3 * n_embd, True, rng, dtype=dtype)
        self.c_proj = Linear(n_embd, n_embd, True, rng, dtype=dtype)
        self.c_attn.weight[...] = _normal(rng, 0.02, self.c_attn.weight.shape, np.float64)
        self.c_proj.weight[...] = _normal(rng, proj_std, self.c_proj.weight.shape, np.float64)
        self._saved = None

    def children(self):
        return [self.c_attn, self.c_proj]

    def forward(self, x, cache=None, pos=0):
        # x (B, T, C) -> qkv (B, T, 3, H, D) -> q, k, v (B, H, T, D) views -> out (B, H, T, D)
        # -> (B, T, H, D) rows -> c_proj -> (B, T, C)
        B, T, C = x.shape
        H = self.n_head
        D = C // H
        k = self._kernels()
        qkv = self.c_attn.forward(x.reshape(B * T, C)).reshape(B, T, 3, H, D)
        q, key, value = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        causal = True
        if cache is not None:
            k_cache, v_cache = cache
            if pos and T != 1:
                raise ValueError("a cached forward takes a prompt at position 0 or one token after it")
            k_cache[:, :, pos:pos + T] = key
            v_cache[:, :, pos:pos + T] = value
            key, value = k_cache[:, :, :pos + T], v_cache[:, :, :pos + T]
            causal = pos == 0  # one new token sees every cached key
        scale = 1.0 / math.sqrt(D)
        out, lse = k.attention_forward(q, key, value, causal, scale, _product_precision(k, x.dtype))
        self._saved = (q, key, value, out, lse, causal, scale)
        y = np.ascontiguousarray(out.transpose(0, 2, 1, 3)).reshape(B * T, C)
        return self.c_proj.forward(y).reshape(B, T, C)

    def backward(self, dy, need_input_grad=True):
        # dy (B, T, C) -> dx (B, T, C): c_proj, then attention on the (B, H, T, D) view of
        # its input gradient, then dq, dk, dv interleaved back as (B, T, 3, H, D) -> c_attn
        if self._saved is None:
            raise RuntimeError("CausalSelfAttention.backward called before forward")
        q, key, value, out, lse, causal, scale = self._saved
        B, T, C = dy.shape
        H = self.n_head
        D = C // H
        k = self._kernels()
        dy_attn = self.c_proj.backward(dy.reshape(B * T, C))
        dout = dy_attn.reshape(B, T, H, D).transpose(0, 2, 1, 3)
        grads = k.attention_backward(q, key, value, out, lse, dout, causal, scale, _product_precision(k, dy.dtype))
        dqkv = np.empty((B, T, 3, H, D), dy.dtype)
        for i, g in enumerate(grads):
            dqkv[:, :, i] = g.transpose(0, 2, 1, 3)
        dx = self.c_attn.backward(dqkv.reshape(B * T, 3 * C), need_input_grad)
        return None if dx is None else dx.reshape(B, T, C)

    def config(self):
        return {"type": "CausalSelfAttention", "n_embd": self.n_embd, "n_head": self.n_head,
                "dtype": self.c_attn.weight.dtype.name}


class TransformerBlock(_Container):
    """GPT-2's block, pre-LN with residuals: ``x + attn(ln_1(x))``, then
    ``x + mlp(ln_2(x))`` with the MLP ``Linear(C, 4C)``, tanh-GELU, ``Linear(4C, C)``."""

    def __init__(self, n_embd, n_head, rng=None, *, proj_std=0.02, dtype=np.float32):
        super().__init__()
        rng = _as_rng(rng)
        self.n_embd, self.n_head = _positive("n_embd", n_embd), _positive("n_head", n_head)
        self.ln_1 = LayerNorm(n_embd, dtype=dtype)
        self.attn = CausalSelfAttention(n_embd, n_head, rng, proj_std=proj_std, dtype=dtype)
        self.ln_2 = LayerNorm(n_embd, dtype=dtype)
        self.c_fc = Linear(n_embd, 4 * n_embd, True, rng, dtype=dtype)
        self.gelu = GELU("tanh")
        self.c_proj = Linear(4 * n_embd, n_embd, True, rng, dtype=dtype)
        self.c_fc.weight[...] = _normal(rng, 0.02, self.c_fc.weight.shape, np.float64)
        self.c_proj.weight[...] = _normal(rng, proj_std, self.c_proj.weight.shape, np.float64)

    def children(self):
        return [self.ln_1, self.attn, self.ln_2, self.c_fc, self.gelu, self.c_proj]

    def forward(self, x, cache=None, pos=0):
        # x (B, T, C) -> (B, T, C)
        B, T, C = x.shape
        x = x + self.attn.forward(self.ln_1.forward(x), cache, pos)
        h = self.ln_2.forward(x).reshape(B * T, C)
        return x + self.c_proj.forward(self.gelu.forward(self.c_fc.forward(h))).reshape(B, T, C)

    def backward(self, dy, need_input_grad=True):
        # dy (B, T, C) -> dx (B, T, C): each residual adds its branch's input gradient
        B, T, C = dy.shape
        dh = self.c_fc.backward(self.gelu.backward(self.c_proj.backward(dy.reshape(B * T, C))))
        dy = dy + self.ln_2.backward(dh.reshape(B, T, C))
        return dy + self.ln_1.backward(self.attn.backward(dy))

    def config(self):
        return {"type": "TransformerBlock", "n_embd": self.n_embd, "n_head": self.n_head,
                "dtype": self.ln_1.weight.dtype.name}


class GPT(_Container):
    """GPT-2 (nanoGPT's ``GPT``): token and position embeddings, ``n_layer``
    ``TransformerBlock``s, a final LayerNorm and a linear head without bias.

    ``forward(ids)``: ids (B, T) int, T <= block_size -> logits (B, T, vocab_size).
    ``features(ids)`` -> the final LayerNorm's output h (B*T, C); the Trainer computes
    the loss from it with ``linear_cross_entropy`` on ``head_weight`` (C, V), never
    holding all logits, and hands ``backward_features(dh, dhead)`` the gradients.
    ``tie_weights=True`` makes the head the token embedding's transpose (one parameter).

    Initialisation as GPT-2: weights N(0, 0.02), the projections into the residual
    stream N(0, 0.02 / sqrt(2 n_layer)), biases 0, LayerNorms 1 and 0.
    """

    sequence_model = True  # the Trainer trains it on (N, T) token ids

    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, tie_weights=False, rng=None, *,
                 dtype=np.float32):
        super().__init__()
        self.vocab_size = _positive("vocab_size", vocab_size)
        self.block_size = _positive("block_size", block_size)
        self.n_layer = _positive("n_layer", n_layer)
        self.n_head, self.n_embd = _positive("n_head", n_head), _positive("n_embd", n_embd)
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.tie_weights = bool(tie_weights)
        rng = _as_rng(rng)
        dtype = _float_dtype(dtype)
        proj_std = 0.02 / math.sqrt(2 * self.n_layer)
        self.wte = Embedding(self.vocab_size, n_embd, rng, dtype=dtype)
        self.wpe = Embedding(self.block_size, n_embd, rng, dtype=dtype)
        self.blocks = [TransformerBlock(n_embd, n_head, rng, proj_std=proj_std, dtype=dtype)
                       for _ in range(self.n_layer)]
        self.ln_f = LayerNorm(n_embd, dtype=dtype)
        self.head = None
        if not self.tie_weights:
            self.head = Linear(n_embd, self.vocab_size, False, rng, dtype=dtype)
            self.head.weight[...] = _normal(rng, 0.02, self.head.weight.shape, np.float64)
        self._shape = None

    @property
    def dtype(self):
        """The parameters' dtype (float32 or float64)."""
        return self.wte.weight.dtype

    @property
    def head_weight(self):
        """The head's weight (C, V): its own, or the token embedding's transpose (a view) when tied."""
        return self.wte.weight.T if self.head is None else self.head.weight

    def children(self):
        return [self.wte, self.wpe, *self.blocks, self.ln_f] + ([self.head] if self.head is not None else [])

    def features(self, ids, caches=None, pos=0):
        """The final LayerNorm's output h (B*T, C) for ids (B, T) int64 at positions
        ``pos``...; with ``caches`` (one per block) keys and values are appended to
        them (generation).  The head is applied by the caller (``linear_cross_entropy``
        in training, a product in ``generate``)."""
        B, T = ids.shape
        positions = np.arange(pos, pos + T, dtype=np.int64)
        x = self.wte.forward(ids) + self.wpe.forward(positions)
        for i, block in enumerate(self.blocks):
            x = block.forward(x, None if caches is None else caches[i], pos)
        self._shape = (B, T)
        return self.ln_f.forward(x.reshape(B * T, self.n_embd))

    def backward_features(self, dh, dhead):
        """Every parameter's gradient from dh (B*T, C), the gradient of ``features``'
        output, and dhead (C, V), the head's (added to the token table when tied);
        ids have none."""
        B, T = self._shape
        dx = self.ln_f.backward(dh).reshape(B, T, self.n_embd)
        for block in reversed(self.blocks):
            dx = block.backward(dx)
        self.wpe.backward(dx.sum(axis=0))
        self.wte.backward(dx)
        if self.head is None:
            self.wte.dweight = self.wte.dweight + dhead.T
        else:
            self.head.dweight = dhead
        return None

    def forward(self, ids):
        # ids (B, T) -> logits (B, T, V)
        B, T = ids.shape
        h = self.features(ids)
        self._h = h
        return self._kernels().linear_forward(h, self.head_weight, None, None).reshape(B, T, self.vocab_size)

    def backward(self, dlogits, need_input_grad=False):
        # dlogits (B, T, V) -> every parameter's gradient (ids have none: returns None)
        B, T, V = dlogits.shape
        dh, dhead, _ = self._kernels().linear_backward(self._h, self.head_weight, dlogits.reshape(B * T, V), False)
        return self.backward_features(dh, dhead)

    def generate(self, ids, max_new_tokens, *, temperature=1.0, top_k=None, rng=None):
        """``ids`` (T0,) or (B, T0) followed by ``max_new_tokens`` sampled tokens, as nanoGPT's
        ``generate``: each token from the softmax of the last logits divided by
        ``temperature`` (0: the most likely token), restricted to the ``top_k`` most likely
        (None: all); ``rng`` a Generator or seed (the same seed, the same tokens).

        Keys and values are cached per layer (B, H, block_size, D): the prompt runs once,
        then each new token runs alone against the cache.  Past ``block_size`` tokens the
        model sees the last ``block_size`` (nanoGPT's crop), which recomputes that window
        once per token."""
        ids = np.asarray(ids) if isinstance(ids, (list, tuple)) else ids
        if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "iu" or ids.ndim not in (1, 2) or ids.size == 0:
            raise ValueError(f"ids must be a non-empty (T,) or (B, T) integer array, got {ids!r}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"ids must be in [0, {self.vocab_size}), got values in [{ids.min()}, {ids.max()}]")
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, 0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) \
                or not temperature >= 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        if top_k is not None:
            top_k = min(check_int("top_k", top_k, 1), self.vocab_size)
        rng = _as_rng(rng)
        single = ids.ndim == 1
        ids = np.ascontiguousarray(ids.reshape(1, -1) if single else ids, dtype=np.int64)
        B, T0 = ids.shape
        out = np.empty((B, T0 + max_new_tokens), np.int64)
        out[:, :T0] = ids
        if max_new_tokens:
            kernels = self._bound or raw_kernels(self._backend)  # ids checked above
            with bind_kernels(self, kernels):
                self._sample_into(out, T0, float(temperature), top_k, rng, kernels)
        return out[0] if single else out

    def _sample_into(self, out, length, temperature, top_k, rng, kernels):
        B, block, H = out.shape[0], self.block_size, self.n_head
        D = self.n_embd // H
        caches = [(np.empty((B, H, block, D), self.dtype), np.empty((B, H, block, D), self.dtype))
                  for _ in self.blocks]
        pos = 0  # positions held in the caches
        for t in range(length, out.shape[1]):
            if pos == 0 or pos == block:  # the prompt, or a full window: (re)compute the last block tokens
                window = out[:, max(0, t - block):t]
                h, pos = self.features(np.ascontiguousarray(window), caches, 0), window.shape[1]
            else:  # one token, attending over the cache
                h, pos = self.features(out[:, t - 1:t].copy(), caches, pos), pos + 1
            last = np.ascontiguousarray(h.reshape(B, -1, self.n_embd)[:, -1])
            logits = kernels.linear_forward(last, self.head_weight, None, None).astype(np.float64)
            out[:, t] = _sample(logits, temperature, top_k, rng)

    def config(self):
        return {"type": "GPT", "vocab_size": self.vocab_size, "block_size": self.block_size,
                "n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd,
                "tie_weights": self.tie_weights, "dtype": self.dtype.name}


def _sample(logits, temperature, top_k, rng):
    # logits (B, V) float64 -> (B,) token ids; one uniform draw per row (inverse CDF)
    if temperature == 0:
        return logits.argmax(axis=1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[1]:
        kth = np.partition(logits, -top_k, axis=1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    u = rng.random(logits.shape[0]) * cdf[:, -1]
    return np.minimum((cdf <= u[:, None]).sum(axis=1), logits.shape[1] - 1)


def _gpt_shapes(config):
    V, T, L, C = (config.get(k) for k in ("vocab_size", "block_size", "n_layer", "n_embd"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (V, T, L, C)):
        raise ValueError(f"a GPT config needs positive int sizes, got {config!r}")
    block = [(C,), (C,), (C, 3 * C), (3 * C,), (C, C), (C,), (C,), (C,), (C, 4 * C), (4 * C,), (4 * C, C), (C,)]
    return [(V, C), (T, C)] + block * L + [(C,), (C,)] + ([] if config.get("tie_weights") else [(C, V)])


def _transformer_from_config(kind, config):
    """The transformer layers from their ``config()`` (fresh parameters), or None for another kind."""
    try:
        if kind == "GPT":
            _gpt_shapes(config)
            return GPT(config["vocab_size"], config["block_size"], config["n_layer"], config["n_head"],
                       config["n_embd"], bool(config.get("tie_weights", False)), 0,
                       dtype=config.get("dtype", "float32"))
        if kind == "Embedding":
            return Embedding(config["num_embeddings"], config["embedding_dim"], 0, dtype=config.get("dtype", "float32"))
        if kind == "LayerNorm":
            return LayerNorm(config["normalized_shape"], config.get("eps", 1e-5), bool(config.get("bias", True)),
                             dtype=config.get("dtype", "float32"))
        if kind == "GELU":
            return GELU(config.get("approximate", "none"))
        if kind in ("CausalSelfAttention", "TransformerBlock"):
            cls = CausalSelfAttention if kind == "CausalSelfAttention" else TransformerBlock
            return cls(config["n_embd"], config["n_head"], 0, dtype=config.get("dtype", "float32"))
    except KeyError as exc:
        raise ValueError(f"a {kind} config needs {exc.args[0]!r}") from None
    return None


def _transformer_shapes(kind, config):
    """``parameter_shapes`` of the transformer layers' configs, or None for another kind."""
    if kind == "GPT":
        return _gpt_shapes(config)
    sizes = {k: config.get(k) for k in ("num_embeddings", "embedding_dim", "normalized_shape", "n_embd")
             if k in config}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes.values()):
        raise ValueError(f"a {kind} config needs positive int sizes, got {config!r}")
    C = sizes.get("n_embd")
    try:
        if kind == "Embedding":
            return [(sizes["num_embeddings"], sizes["embedding_dim"])]
        if kind == "LayerNorm":
            c = sizes["normalized_shape"]
            return [(c,), (c,)] if config.get("bias", True) else [(c,)]
        if kind == "GELU":
            return []
        if kind == "CausalSelfAttention":
            return [(C, 3 * C), (3 * C,), (C, C), (C,)]
        if kind == "TransformerBlock":
            return _gpt_shapes({"vocab_size": 1, "block_size": 1, "n_layer": 1, "n_embd": C})[2:-3]
    except (KeyError, TypeError):
        raise ValueError(f"a {kind} config needs its sizes, got {config!r}") from None
    return None


# --- losses --------------------------------------------------------------------------


class CrossEntropyLoss:
    """Softmax cross-entropy of logits (N, C) against integer labels (N,), loss and
    gradient from one fused pass (``kernprop.cross_entropy_with_grad``); every option of
    the op: ``reduction``, ``ignore_index``, ``label_smoothing``, ``weight`` (C,)."""

    name = "cross_entropy"
    classification = True

    def __init__(self, reduction="mean", ignore_index=-100, label_smoothing=0.0, weight=None):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")
        # the kernels take ignore_index as int64: a larger int is refused here, not there
        ignore_index = check_int("ignore_index", ignore_index)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.floating)) \
                or not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
        if weight is not None:
            weight = np.asarray(weight)
            if weight.ndim != 1 or weight.dtype.kind not in "fiu" or weight.size == 0:
                raise ValueError(f"weight must be a non-empty 1-D array of class weights, got {weight!r}")
            if not np.isfinite(weight).all():
                raise ValueError("weight must be finite (it holds NaN or inf)")
            # A copy: the Trainer checks its length against the model once, so later
            # changes to the caller's array must not reach the kernels.
            weight = np.array(weight, dtype=np.float64)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.weight = weight
        self._weight_cast = None

    def weight_as(self, dtype):
        """The class weights (C,) in ``dtype`` (cast once and kept), or None."""
        if self.weight is None:
            return None
        if self._weight_cast is None or self._weight_cast.dtype != dtype:
            self._weight_cast = np.ascontiguousarray(self.weight, dtype=dtype)
        return self._weight_cast

    def forward(self, logits, labels, kernels):
        """The loss of ``logits`` (N, C) against ``labels`` (N,) through ``kernels`` (a
        table from ``kernel_table``): a 0-d array, or (N,) for reduction "none"."""
        return kernels.cross_entropy_forward(
            logits, labels, self.reduction, self.ignore_index, self.label_smoothing,
            self.weight_as(logits.dtype),
        )

    def with_grad(self, logits, labels, kernels):
        """``(loss, dlogits)`` from one fused pass, as ``kernprop.cross_entropy_with_grad``."""
        return kernels.cross_entropy_with_grad(
            logits, labels, self.reduction, self.ignore_index, self.label_smoothing,
            self.weight_as(logits.dtype),
        )

    def kwargs(self):
        """The options that rebuild this loss by name (the checkpoint stores them)."""
        return {
            "reduction": self.reduction,
            "ignore_index": self.ignore_index,
            "label_smoothing": self.label_smoothing,
        }


class MSELoss:
    """Mean squared error ``mean((pred - target)**2)`` (``reduction`` "mean", "sum" or
    "none"), through ``kernprop.mse`` and ``kernprop.mse_backward``."""

    name = "mse"
    classification = False
    weight = None

    def __init__(self, reduction="mean"):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")
        self.reduction = reduction

    def forward(self, pred, target, kernels):
        """The loss of ``pred`` against ``target`` (same shape) through ``kernels``."""
        return kernels.mse_forward(pred, target, self.reduction)

    def with_grad(self, pred, target, kernels):
        """``(loss, dpred)``, as ``kernprop.mse`` and ``kernprop.mse_backward``."""
        return (
            kernels.mse_forward(pred, target, self.reduction),
            kernels.mse_backward(pred, target, self.reduction),
        )

    def kwargs(self):
        """The options that rebuild this loss by name (the checkpoint stores them)."""
        return {"reduction": self.reduction}


LOSSES = {"cross_entropy": CrossEntropyLoss, "mse": MSELoss}


def make_loss(loss, **kwargs):
    """A loss object from a name ("cross_entropy", "mse") and its options, or ``loss``
    itself when it already is one."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}")
        try:
            return LOSSES[loss](**kwargs)
        except TypeError as exc:
            raise TypeError(f"bad option for loss {loss!r}: {exc}") from None
    if kwargs:
        raise TypeError("loss options are only accepted with a loss name")
    if not (hasattr(loss, "with_grad") and hasattr(loss, "forward")):
        raise TypeError(f"loss must be a name in {tuple(LOSSES)} or a loss object, got {loss!r}")
    return loss
