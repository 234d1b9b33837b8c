"""kernprop: high-performance kernels for training neural networks.

One API over four backends (``numpy`` reference, ``numba`` CPU, ``cython`` with OpenMP,
``cuda`` with Numba CUDA); every op takes ``backend=None`` meaning the default, which
``set_backend`` / ``use_backend`` change.  See ``kernprop.ops`` for the ops.
"""

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
    cross_entropy,
    cross_entropy_with_grad,
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

__all__ = [
    "__version__",
    "adam_step",
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
