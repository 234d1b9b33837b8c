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


class _OnDevice:
    """A DLPack producer that says its memory is on a CUDA device (or elsewhere)."""

    def __init__(self, device_type):
        self.device_type = device_type

    def __dlpack__(self, **kwargs):
        raise AssertionError("never read: the device is checked first")

    def __dlpack_device__(self):
        return (self.device_type, 0)


def test_device_dlpack_objects_need_the_cuda_backend():
    with pytest.raises(TypeError, match="x .*is on a CUDA device but the backend is 'numpy'; use backend='cuda'"):
        kernprop.relu(_OnDevice(2), backend="numpy")
    with pytest.raises(TypeError, match="x .*DLPack device type 14"):
        kernprop.relu(_OnDevice(14), backend="numpy")


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


# --- the Trainer, as scikit-learn and PyTorch users call it ---------------------------


def _digits_like(n=60, features=4, classes=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, features)).tolist(), [i % classes for i in range(n)]


def test_trainer_takes_array_likes_once():
    X, y = _digits_like()
    trainer = kernprop.Trainer(kernprop.nn.MLP([4, 8, 3], rng=0), backend="numpy", batch_size=16)
    history = trainer.fit(X, y, epochs=2, verbose=0)
    assert len(history["loss"]) == 2
    assert trainer.predict(X).shape == (60,)
    assert trainer.predict_proba(X).shape == (60, 3)
    assert set(trainer.evaluate(X, y)) == {"loss", "accuracy"}
    as_arrays = trainer.predict(np.asarray(X, np.float32))
    np.testing.assert_array_equal(trainer.predict(X), as_arrays)


def test_trainer_takes_torch_tensors():
    torch = pytest.importorskip("torch")
    X, y = _digits_like()
    trainer = kernprop.Trainer(kernprop.nn.MLP([4, 3], rng=0), backend="numpy")
    trainer.fit(torch.tensor(X, dtype=torch.float32), torch.tensor(y), epochs=1, verbose=0)
    assert trainer.predict_proba(torch.tensor(X)).shape == (60, 3)


@pytest.mark.parametrize("keyword, hint", [
    ("lr", "optimizer=kernprop.optim.Adam"), ("verbose", "argument of fit"), ("colour", ""),
])
def test_unknown_trainer_keywords_are_named_with_the_accepted_ones(keyword, hint):
    with pytest.raises(TypeError) as info:
        kernprop.Trainer(kernprop.nn.MLP([4, 3], rng=0), **{keyword: 0})
    message = str(info.value)
    assert f"unexpected keyword argument {keyword!r}" in message and hint in message
    assert "batch_size" in message and "label_smoothing" in message
    assert "CrossEntropyLoss" not in message


def test_feature_count_mismatch_in_the_users_terms():
    trainer = kernprop.Trainer(kernprop.nn.MLP([64, 32, 10], rng=0), backend="numpy")
    with pytest.raises(ValueError, match="X has 10 features, the model expects 64"):
        trainer.fit(np.zeros((5, 10), np.float32), np.zeros(5, np.int64), verbose=0)
    with pytest.raises(ValueError, match="X has 10 features, the model expects 64"):
        trainer.predict(np.zeros((5, 10), np.float32))


# --- optimizers, as PyTorch users call them -------------------------------------------


@pytest.mark.parametrize("make", [
    lambda optim, params: optim.Adam(params, lr=1e-3),
    lambda optim, params: optim.SGD(params, lr=0.1),
    lambda optim, params: optim.SGD(iter(params), 0.1),
    lambda optim, params: optim.Adam(params),
])
def test_a_parameter_list_is_explained(make):
    params = kernprop.nn.MLP([4, 3], rng=0).parameters()
    with pytest.raises(TypeError, match=r"kernprop optimizers take no parameter list.*optim\.(Adam|SGD)\(lr=\.\.\.\)"):
        make(kernprop.optim, params)


def test_optimizer_repr_and_messages_in_their_own_types():
    from kernprop.optim import SGD, Adam

    assert repr(SGD(0.1, momentum=0.9, nesterov=True)) == "SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0)"
    assert repr(Adam()) == "Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, decoupled=False)"
    with pytest.raises(ValueError, match=r"^lr must be finite and >= 0.0, got -1.0$"):
        SGD(-1)
    with pytest.raises(ValueError, match=r"^betas\[0\] must be finite and in \[0.0, 1.0\), got 1.0$"):
        Adam(betas=(1.0, 0.9))


# --- the command line ---------------------------------------------------------------


@pytest.mark.parametrize("command", [["kernprop"], [sys.executable, "-m", "kernprop"]])
def test_version_and_python_m(command):
    import shutil

    if command == ["kernprop"] and shutil.which("kernprop") is None:
        pytest.skip("the kernprop console script is not on PATH")
    out = subprocess.run(command + ["--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"kernprop {kernprop.__version__}"


def _unscaled_file(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(5, 8, 300)
    X = rng.standard_normal((300, 6)) * 1000 + 3000
    X[:, 0] += (y - 6) * 3000
    path = tmp_path / "data.npz"
    np.savez(path, X=X.astype(np.float32), y=y)
    return str(path)


def test_train_data_reports_labels_and_scale(tmp_path, capsys):
    from kernprop import cli

    path = _unscaled_file(tmp_path)
    args = ["train", "--data", path, "--backend", "numpy", "--epochs", "1", "--hidden", "8"]
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    assert "labels: 3 distinct values in 5..7 -> 8 classes (outputs 0..7)" in out
    assert "warning: --data" in err and "labels 5..7 are not 0..2" in err and "return_inverse" in err
    assert "features look unscaled" in err and "--standardize" in err
    assert cli.main(args + ["--standardize"]) == 0
    out, err = capsys.readouterr()
    assert "standardized" in out and "unscaled" not in err


# --- docstrings ---------------------------------------------------------------------


def _public_callables():
    import inspect

    seen = set()
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not callable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield f"{module_name}.{name}", obj
            if not inspect.isclass(obj):
                continue
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(member, property):
                    yield f"{module_name}.{name}.{attr}", member
                elif isinstance(member, (staticmethod, classmethod)) or inspect.isfunction(member):
                    # getattr: an override without a docstring inherits its base's
                    yield f"{module_name}.{name}.{attr}", getattr(obj, attr)


def test_every_public_callable_has_a_docstring():
    import inspect

    missing = [name for name, obj in _public_callables() if not inspect.getdoc(obj)]
    assert not missing, f"{len(missing)} public callables without a docstring: {', '.join(missing)}"


def test_trainer_names_the_byte_order_of_big_endian_input():
    trainer = kernprop.Trainer(kernprop.nn.MLP([4, 3], rng=0), backend="numpy")
    X = np.zeros((6, 4), dtype=">f4")
    with pytest.raises(TypeError, match=r"X has dtype >f4.*big-endian.*newbyteorder"):
        trainer.predict(X)
