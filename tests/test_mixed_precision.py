"""Mixed-precision training: ``Trainer(precision=...)`` computes the layers' products at
that precision and keeps everything else (weights, gradients, optimizer state, the
loss) in float32."""

import warnings

import numpy as np
import pytest

import kernprop
from kernprop import nn, optim
from kernprop.data import load_digits
from kernprop.kernels.reference.matmul import product
from kernprop.train import Trainer

from conftest import make_array

CPU_BACKENDS = [b for b in ("numpy", "numba", "cython") if b in kernprop.available_backends()]


def _model(sizes=(64, 48, 10), seed=0):
    return nn.MLP(list(sizes), activation="relu", rng=seed)


def _gradients(model, x, labels, precision, backend):
    """Every parameter's gradient of the mean cross-entropy, with the products at
    ``precision``, through the layers (as a Trainer's step runs them)."""
    kernels = nn.raw_kernels(backend, precision)
    with nn.bind_kernels(model, kernels):
        logits = model.forward(x)
        _, dlogits = kernels.cross_entropy_with_grad(logits, labels, "mean", -100, 0.0, None)
        model.backward(dlogits)
    return [g.astype(np.float64) for g in model.gradients()]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("precision,rtol", [("bf16x3", 1e-4), ("bf16", 1e-2)])
def test_gradients_of_a_model_match_the_reference_at_that_precision(rng, backend, precision, rtol):
    # Against the oracle computing the same roundings: only float32 accumulation (and the
    # bf16 rounding of an intermediate it moves across a tie) may differ.  The roundings
    # are those of the kernel the backend runs here: a CPU without a bf16 unit computes
    # bf16 in fp32, more accurate than asked (the selection says which).
    from kernprop.backends import matmul_kernel

    computed = "fp32" if (matmul_kernel(backend, precision) or precision).startswith("fp32") else precision
    x = make_array(rng, (96, 64), np.float32)
    labels = rng.integers(0, 10, 96)
    want = _gradients(_model(), x, labels, computed, "numpy")
    got = _gradients(_model(), x, labels, precision, backend)
    for g, w in zip(got, want):
        scale = np.max(np.abs(w))
        assert np.max(np.abs(g - w)) <= rtol * scale, f"{precision} on {backend}: {np.max(np.abs(g - w)) / scale}"


@pytest.mark.parametrize("precision,rtol,min_cosine", [("bf16x3", 1e-4, 1 - 1e-8), ("bf16", 0.1, 0.999)])
def test_gradients_of_a_model_close_to_fp32(rng, precision, rtol, min_cosine):
    # bf16x3 is float32 in all but name; bf16 products give gradients a few per cent off
    # element by element (each of the three products of a layer rounds its operands to
    # 8 bits) but pointing the same way.
    x = make_array(rng, (96, 64), np.float32)
    labels = rng.integers(0, 10, 96)
    exact = _gradients(_model(), x, labels, "fp32", "numpy")
    got = _gradients(_model(), x, labels, precision, "numpy")
    for g, w in zip(got, exact):
        assert np.max(np.abs(g - w)) <= rtol * np.max(np.abs(w))
        cosine = float(g.ravel() @ w.ravel() / (np.linalg.norm(g) * np.linalg.norm(w)))
        assert cosine >= min_cosine


def test_the_products_really_round_to_bf16(rng):
    # On the reference backend the forward product is exactly the bf16 product, not fp32.
    x = make_array(rng, (32, 64), np.float32)
    model = nn.Linear(64, 10, rng=0)
    with nn.bind_kernels(model, nn.raw_kernels("numpy", "bf16")):
        got = model.forward(x)
    assert np.array_equal(got, product(x, model.weight, "bf16") + model.bias)
    assert not np.array_equal(got, x @ model.weight + model.bias)


@pytest.mark.parametrize("precision", ["bf16x3", "bf16"])
def test_fit_is_deterministic_and_keeps_float32_state(precision):
    (X, y), _ = load_digits(seed=0)

    def run():
        trainer = Trainer(_model(), optimizer=optim.Adam(lr=1e-2), backend="numba", batch_size=64,
                          engine="layerwise", precision=precision)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a CPU without a fast path warns once
            history = trainer.fit(X, y, epochs=2, verbose=0)
        return trainer, history

    first, history = run()
    second, _ = run()
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    assert history["precision"] == [first.precision_choice[0]] * 2
    for state in first.optimizer.state_dict().values():
        arrays = state if isinstance(state, list) else [state]
        assert all(np.asarray(s).dtype != np.float16 for s in arrays)


def test_fused_engine_runs_fp32_and_says_why():
    (X, y), _ = load_digits(seed=0)
    trainer = Trainer(_model(), optimizer=optim.SGD(lr=0.1), backend="numba", batch_size=32, engine="fused",
                      precision="bf16")
    history = trainer.fit(X[:256], y[:256], epochs=1, verbose=0)
    assert history["precision"] == ["fp32"]
    assert "fused" in trainer.precision_choice[1]


def test_no_faster_kernel_warns_once_and_runs_fp32():
    # A precision this CPU's numba backend runs in fp32, if there is one (bf16x3 on
    # Zen 4/5, both on a CPU without AVX512_BF16 or AMX).
    from kernprop.backends import matmul_kernel

    fallback = [p for p in ("bf16x3", "bf16") if matmul_kernel("numba", p).startswith("fp32")]
    if not fallback:
        pytest.skip("every precision has its own kernel on this CPU")
    (X, y), _ = load_digits(seed=0)
    trainer = Trainer(_model(), optimizer=optim.SGD(lr=0.1), backend="numba", engine="layerwise",
                      precision=fallback[0])
    with pytest.warns(UserWarning, match="runs the fp32 kernels"):
        history = trainer.fit(X[:128], y[:128], epochs=1, verbose=0)
    assert history["precision"] == ["fp32"]


def test_checkpoint_keeps_the_precision(tmp_path):
    (X, y), _ = load_digits(seed=0)
    trainer = Trainer(_model(), optimizer=optim.SGD(lr=0.1), backend="numpy", precision="bf16")
    trainer.fit(X[:64], y[:64], epochs=1, verbose=0)
    path = trainer.save(tmp_path / "bf16.npz")
    loaded = Trainer.load(path)
    assert loaded.precision == "bf16"
    assert np.array_equal(loaded.predict(X[:50]), trainer.predict(X[:50]))


@pytest.mark.parametrize("bad", ["fp16", None, "BF16"])
def test_bad_precision_is_refused(bad):
    with pytest.raises(ValueError, match="precision"):
        Trainer(_model(), precision=bad)


def test_digits_accuracy_with_bf16_products():
    # The target: >= 0.965 test accuracy with bf16 products, within one point of
    # fp32 with the same seeds (layer by layer, so the bf16 kernels really run).
    (X, y), (X_test, y_test) = load_digits(seed=0)
    accuracy = {}
    for precision in ("fp32", "bf16"):
        trainer = Trainer(nn.MLP([64, 128, 10], rng=0), optimizer=optim.Adam(lr=1e-2), backend="numba",
                          batch_size=32, engine="layerwise", precision=precision)
        trainer.fit(X, y, epochs=20, verbose=0)
        accuracy[precision] = trainer.evaluate(X_test, y_test)["accuracy"]
    assert accuracy["bf16"] >= 0.965
    assert abs(accuracy["bf16"] - accuracy["fp32"]) <= 0.01


def test_cli_precision(tmp_path):
    from kernprop.cli import main

    assert main(["train", "--epochs", "1", "--precision", "bf16", "--engine", "layerwise"]) == 0
