"""kernprop: high-performance kernels for training neural networks.

One API over four backends (``numpy`` reference, ``numba`` CPU, ``cython`` with OpenMP,
``cuda`` with Numba CUDA); every op takes ``backend=None`` meaning the default, which
``set_backend`` / ``use_backend`` change.  See ``kernprop.ops`` for the ops.

Training, as PyTorch and scikit-learn users reach for it: ``kernprop.nn`` (layers,
losses), ``kernprop.optim`` (``SGD``, ``Adam``), ``kernprop.Trainer``, ``kernprop.data``.
These are imported on first use (module ``__getattr__``, PEP 562), so ``import
kernprop`` stays fast.
"""

import importlib as _importlib

from .backends import (
    available_backends,
    backends,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
    use_backend,
)
from .ops import (
    adam_step,
    attention,
    attention_backward,
    cross_entropy,
    cross_entropy_with_grad,
    embedding,
    embedding_backward,
    gelu,
    gelu_backward,
    layer_norm,
    layer_norm_backward,
    linear,
    linear_backward,
    linear_cross_entropy,
    log_softmax,
    log_softmax_backward,
    matmul,
    mse,
    mse_backward,
    relu,
    relu_backward,
    sgd_step,
    sigmoid,
    sigmoid_backward,
    softmax,
    tanh,
    tanh_backward,
)
from .precision import get_matmul_precision, matmul_precision, set_matmul_precision
from .warmup import warmup

__version__ = "0.1.0"

# Submodules and names imported on first attribute access: the trainer pulls in the
# engines, checkpoints and MPI glue, which an op-only user should not pay for.
_LAZY_MODULES = ("nn", "optim", "train", "data", "engines", "checkpoint", "distributed")
_LAZY_NAMES = {
    "Trainer": "train",
    "SGD": "optim",
    "Adam": "optim",
    "MLP": "nn",
    "load_digits": "data",
    "load_npz": "data",
    "train_test_split": "data",
}


def __getattr__(name):
    if name in _LAZY_MODULES:
        module = _importlib.import_module(f".{name}", __name__)
    elif name in _LAZY_NAMES:
        module = getattr(_importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'kernprop' has no attribute {name!r}")
    globals()[name] = module  # later accesses skip this function
    return module


def __dir__():
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_LAZY_NAMES))

__all__ = [
    "__version__",
    "Adam",
    "MLP",
    "SGD",
    "Trainer",
    "data",
    "load_digits",
    "load_npz",
    "nn",
    "optim",
    "train_test_split",
    "adam_step",
    "attention",
    "attention_backward",
    "embedding",
    "embedding_backward",
    "gelu",
    "gelu_backward",
    "layer_norm",
    "layer_norm_backward",
    "available_backends",
    "backends",
    "cross_entropy",
    "cross_entropy_with_grad",
    "get_backend",
    "get_matmul_precision",
    "get_num_threads",
    "linear",
    "linear_backward",
    "linear_cross_entropy",
    "log_softmax",
    "log_softmax_backward",
    "matmul",
    "matmul_precision",
    "mse",
    "mse_backward",
    "relu",
    "relu_backward",
    "set_backend",
    "set_matmul_precision",
    "set_num_threads",
    "sgd_step",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "tanh",
    "tanh_backward",
    "use_backend",
    "warmup",
]
