"""What a PyTorch or scikit-learn user tries first (issue 18): top-level names, array-likes
and DLPack tensors, errors in the user's terms, docstrings on every public callable."""

import importlib
import subprocess
import sys

import numpy as np
import pytest

import kernprop

PUBLIC_MODULES = (
    "kernprop", "kernprop.ops", "kernprop.backends", "kernprop.precision", "kernprop.warmup",
    "kernprop.nn", "kernprop.optim", "kernprop.train", "kernprop.data", "kernprop.checkpoint",
    "kernprop.distributed", "kernprop.engines", "kernprop.cli", "kernprop.cuda_check",
)


# --- top-level names ------------------------------------------------------------------


def test_training_names_reachable_from_import_kernprop():
    from kernprop import nn, optim, train

    assert kernprop.nn is nn and kernprop.optim is optim
    assert kernprop.Trainer is train.Trainer
    assert kernprop.SGD is optim.SGD and kernprop.Adam is optim.Adam
    assert kernprop.MLP is nn.MLP
    assert callable(kernprop.load_digits)
    assert {"nn", "optim", "Trainer"} <= set(dir(kernprop))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kernprop.nope


def test_import_kernprop_stays_lazy():
    code = (
        "import sys, kernprop; "
        "print(sorted(m for m in ('kernprop.train', 'kernprop.nn', 'kernprop.engines', 'numba') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_module_has_all(name):
    module = importlib.import_module(name)
    assert isinstance(module.__all__, list)
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ lists {attr!r}, which it lacks"
    assert "np" not in module.__all__


# --- DLPack input and lists -----------------------------------------------------------


class _Foreign:
    """A DLPack producer that is not a NumPy array (stands in for a CPU tensor)."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def test_ops_read_dlpack_objects_without_a_copy():
    x = np.array([[-1.0, 2.0], [3.0, -4.0]], np.float32)
    out = kernprop.relu(_Foreign(x), backend="numpy")
    assert type(out) is np.ndarray and np.array_equal(out, np.maximum(x, 0))
    # in place through the view: the producer's memory is updated
    param, grad = np.ones(3, np.float32), np.ones(3, np.float32)
    kernprop.sgd_step(_Foreign(param), _Foreign(grad), lr=0.5, backend="numpy")
    assert np.array_equal(param, np.full(3, 0.5, np.float32))


def test_ops_read_torch_cpu_tensors():
    torch = pytest.importorskip("torch")
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(1)).t()  # a strided view
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for backend in kernprop.available_backends():
        if backend == "cuda":
            continue
        logits = kernprop.matmul(x, w, backend=backend)
        assert type(logits) is np.ndarray
        np.testing.assert_allclose(logits, (x @ w).numpy(), rtol=1e-5, atol=1e-5)
        loss = kernprop.cross_entropy(logits, labels, backend=backend)
        expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits), labels)
        np.testing.assert_allclose(loss, expected.item(), rtol=1e-5)
    with pytest.raises(TypeError, match="x .Tensor. cannot be read through DLPack: .*detach"):
        kernprop.relu(torch.ones(2, requires_grad=True), backend="numpy")


def test_ops_refuse_lists_with_the_fix():
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray, got list; call np.asarray\(x"):
        kernprop.relu([1.0, -1.0], backend="numpy")
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"got list; call np.asarray\(labels\)"):
        kernprop.cross_entropy(logits, [0, 1], backend="numpy")


def test_big_endian_input_names_the_byte_order():
    x = np.ones(3, dtype=">f4")
    with pytest.raises(TypeError, match=r"big-endian.*newbyteorder\('='\)"):
        kernprop.relu(x, backend="numpy")
