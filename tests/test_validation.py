"""Bad input raises a clear error naming the argument, before any kernel runs."""

import numpy as np
import pytest

import kernprop

F32 = np.ones((4, 3), np.float32)
F64 = np.ones((4, 3), np.float64)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: kernprop.matmul(F64, F64), ValueError, r"b must have shape \(3, N\)"),
        (lambda: kernprop.matmul(F64, F64.T.astype(np.int64)), TypeError, "b must have dtype float32 or float64, got int64"),
        (lambda: kernprop.matmul(F32, F64.T), TypeError, "a is float32, b is float64"),
        (lambda: kernprop.matmul(F64[0], F64.T), ValueError, r"a must be 2-D, got shape \(3,\)"),
        (lambda: kernprop.matmul([[1.0]], F64), TypeError, "a must be a numpy.ndarray, got list"),
        (lambda: kernprop.matmul(F64[:0], F64.T), ValueError, r"a must not be empty, got shape \(0, 3\)"),
        (lambda: kernprop.linear(F64, F64.T, np.ones(3)), ValueError, r"b must have shape \(4,\)"),
        (lambda: kernprop.linear(F64, F64.T, activation="gelu"), ValueError, "activation must be one of"),
        (lambda: kernprop.linear_backward(F64, F64.T, F64), ValueError, r"dy must have shape \(4, 4\)"),
        (lambda: kernprop.relu(np.ones(3, np.float16)), TypeError, "x must have dtype float32 or float64, got float16"),
        (lambda: kernprop.relu_backward(F64, F64.T), ValueError, r"dy must have shape \(4, 3\)"),
        (lambda: kernprop.sigmoid_backward(F64, F32), TypeError, "y is float64, dy is float32"),
        (lambda: kernprop.log_softmax(np.ones(3)), ValueError, "x must be 2-D"),
        (lambda: kernprop.log_softmax_backward(F64, F64[:2]), ValueError, r"dy must have shape \(4, 3\)"),
        (lambda: kernprop.cross_entropy(F64, np.array([0, 1, 2])), ValueError, r"labels must have shape \(4,\)"),
        (lambda: kernprop.cross_entropy(F64, np.array([0, 1, 2, 3])), ValueError, r"labels\[3\] = 3 is out of range"),
        (lambda: kernprop.cross_entropy(F64, np.array([0, -1, 2, 2])), ValueError, r"labels\[1\] = -1 is out of range"),
        (lambda: kernprop.cross_entropy(F64, np.zeros(4)), TypeError, "labels must have an integer dtype, got float64"),
        (lambda: kernprop.cross_entropy(F64, np.zeros(4, int), reduction="avg"), ValueError, "reduction must be one of"),
        (lambda: kernprop.cross_entropy(F64, np.zeros(4, int), label_smoothing=1.5), ValueError, "label_smoothing must be <= 1.0"),
        (lambda: kernprop.cross_entropy(F64, np.zeros(4, int), weight=np.ones(2)), ValueError, r"weight must have shape \(3,\)"),
        (lambda: kernprop.cross_entropy(F64, np.zeros(4, int), weight=np.ones(3, np.float32)), TypeError, "weight must have the dtype of the logits"),
        (lambda: kernprop.cross_entropy(F64, np.zeros(4, int), ignore_index=1.5), TypeError, "ignore_index must be an int"),
        (lambda: kernprop.mse(F64, F64[:3]), ValueError, r"target must have shape \(4, 3\)"),
        (lambda: kernprop.linear_cross_entropy(F64, np.ones((2, 5)), None, np.zeros(4, int)), ValueError, r"w must have shape \(3, C\)"),
        (lambda: kernprop.linear_cross_entropy(F64, np.ones((3, 5)), None, np.zeros(4, int), chunk_size=0), ValueError, "chunk_size must be a positive int"),
        (lambda: kernprop.linear_cross_entropy(F64, np.ones((3, 5)), None, np.zeros(4, int), reduction="none"), ValueError, "reduction must be one of"),
        (lambda: kernprop.sgd_step(F64.copy(), F64, lr=-1), ValueError, "lr must be >= 0.0"),
        (lambda: kernprop.sgd_step(F64.copy(), F64, lr=0.1, momentum=0.9), ValueError, "velocity is required"),
        (lambda: kernprop.sgd_step(F64.copy(), F64[:2], lr=0.1), ValueError, r"grad must have shape \(4, 3\)"),
        (lambda: kernprop.sgd_step(F64.T.copy().T, F64, lr=0.1), ValueError, "param must be C-contiguous"),
        (lambda: kernprop.adam_step(F64.copy(), F64, F64.copy(), F64.copy(), 0), ValueError, "step must be an int >= 1"),
        (lambda: kernprop.adam_step(F64.copy(), F64, F64.copy(), F64.copy(), 1, betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be < 1.0"),
        (lambda: kernprop.matmul(F64, F64.T, backend="tpu"), ValueError, "unknown backend 'tpu'; known backends: numpy, numba, cython, cuda"),
    ],
)
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_bad_input_is_rejected_with_a_clear_error(backend, call, error, message):
    with kernprop.use_backend(backend):
        with pytest.raises(error, match=message):
            call()


def test_validation_runs_before_the_kernel(monkeypatch):
    from kernprop.kernels.reference import losses

    def must_not_run(*args):
        raise AssertionError("kernel ran on bad input")

    monkeypatch.setattr(losses, "cross_entropy_with_grad", must_not_run)
    with pytest.raises(ValueError, match="out of range"):
        kernprop.cross_entropy_with_grad(F64, np.array([0, 1, 9, 0]), backend="numpy")


def test_device_array_on_a_cpu_backend_is_a_type_error():
    class FakeDeviceArray:
        __cuda_array_interface__ = {"shape": (4, 3), "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match="x is a CUDA device array but the backend is 'numba'"):
        kernprop.relu(FakeDeviceArray(), backend="numba")


def test_unavailable_backend_says_why():
    state = kernprop.backends()["cuda"]
    if state.available:
        pytest.skip("cuda is available here")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available: "):
        kernprop.relu(F64, backend="cuda")
