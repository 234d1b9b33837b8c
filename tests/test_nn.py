"""Layers and losses of kernprop.nn: the two worked examples through the Trainer, a
whole-model gradient check against finite differences on every backend, fusion,
initialisation and configs."""

import numpy as np
import pytest
from conftest import assert_close

from kernprop import nn, optim
from kernprop.train import Trainer


class HalfSumSquares:
    """E = sum((pred - target)**2) / 2, the loss of the worked examples, built on the
    mse kernels: its gradient is (pred - target), half that of mse(reduction="sum")."""

    name = "half_sum_squares"
    reduction = "sum"

    def forward(self, pred, target, kernels):
        return 0.5 * kernels.mse_forward(pred, target, "sum")

    def with_grad(self, pred, target, kernels):
        grad = kernels.mse_backward(pred, target, "sum")
        return 0.5 * kernels.mse_forward(pred, target, "sum"), _halved(grad)


def _halved(grad):
    if isinstance(grad, np.ndarray):
        return (0.5 * grad).astype(grad.dtype)
    from numba import cuda  # a device array (cuda backend): no arithmetic operators

    host = grad.copy_to_host()
    return cuda.to_device((0.5 * host).astype(host.dtype))


def _set(layer, weight):
    layer.weight[...] = np.asarray(weight, dtype=layer.weight.dtype)


# --- worked examples -----------------------------------------------------------------


def test_worked_example_two_two_one_linear(backend):
    # x = (1, 0.5), t = 4; h1 = x1 w1 + x2 w2, h2 = x1 w3 + x2 w4, y = h1 w5 + h2 w6,
    # E = (y - t)^2 / 2; one SGD step with lr 0.1.  Weights are (in, out), so
    # W1[i, j] links input i to hidden j: W1 = [[w1, w3], [w2, w4]], W2 = [[w5], [w6]].
    w1, w2, w3, w4, w5, w6 = 0.5, 1.5, 2.3, 3.0, 1.0, 1.0
    l1, l2 = nn.Linear(2, 2, bias=False, dtype=np.float64), nn.Linear(2, 1, bias=False, dtype=np.float64)
    _set(l1, [[w1, w3], [w2, w4]])
    _set(l2, [[w5], [w6]])
    model = nn.Sequential(l1, l2)
    trainer = Trainer(model, HalfSumSquares(), optim.SGD(0.1), backend=backend, batch_size=1)
    X, t = np.array([[1.0, 0.5]]), np.array([4.0])

    before = trainer.evaluate(X, t)["loss"]
    assert trainer.predict(X)[0, 0] == pytest.approx(5.05, abs=1e-12)
    history = trainer.fit(X, t, epochs=1, shuffle=False, verbose=0)
    y_after = trainer.predict(X)[0, 0]
    after = trainer.evaluate(X, t)["loss"]

    assert round(before, 5) == 0.55125
    assert history["loss"] == [pytest.approx(0.55125, abs=1e-12)]  # the loss of the step taken
    assert round(y_after, 4) == 3.1768
    assert round(after, 4) == 0.3388
    # The step by hand: dE/dy = y - t = 1.05, dW2 = h * 1.05, dW1 = x outer (1.05 * W2).
    assert_close(l2.weight, np.array([[w5 - 0.1 * 1.25 * 1.05], [w6 - 0.1 * 3.8 * 1.05]]))
    assert_close(l1.weight, np.array([[w1 - 0.105, w3 - 0.105], [w2 - 0.0525, w4 - 0.0525]]))


def test_worked_example_sigmoid_hidden_unit(backend):
    # x = 1, t = 0, w1 = w2 = 0.5: h = sigmoid(w1 x), y = w2 h (linear output),
    # L = (y - t)^2 / 2.  Exact values: L = 0.048432, dL/dw2 = (y - t) h = 0.193728,
    # dL/dw1 = (y - t) w2 h (1 - h) x = 0.036570, and after one SGD step with lr 0.1
    # L' = 0.044628.  The worked example quotes 0.0484, 0.1938, 0.0365, 0.0447, computed
    # from rounded intermediates (0.31125 * 0.6225 = 0.19375), so each is checked to
    # within 1e-4 of the quoted figure, and to 6 decimals against the exact value.
    hidden, out = nn.Linear(1, 1, bias=False, dtype=np.float64), nn.Linear(1, 1, bias=False, dtype=np.float64)
    _set(hidden, [[0.5]])
    _set(out, [[0.5]])
    model = nn.Sequential(hidden, nn.Sigmoid(), out)
    trainer = Trainer(model, HalfSumSquares(), optim.SGD(0.1), backend=backend, batch_size=1)
    X, t = np.array([[1.0]]), np.array([0.0])

    history = trainer.fit(X, t, epochs=1, shuffle=False, verbose=0)
    # The gradients of the step just taken, kept by the layers:
    for got, quoted, exact in (
        (history["loss"][0], 0.0484, 0.048432),
        (out.dweight[0, 0], 0.1938, 0.193728),
        (hidden.dweight[0, 0], 0.0365, 0.036570),
        (trainer.evaluate(X, t)["loss"], 0.0447, 0.044628),
    ):
        assert got == pytest.approx(quoted, abs=1e-4)
        assert got == pytest.approx(exact, abs=1e-6)


# --- gradient check ------------------------------------------------------------------


def _loss_of(model, loss, X, y, backend):
    kernels = nn.validated_ops(backend)
    return float(np.sum(loss.forward(model.forward(X), y, kernels)))


@pytest.mark.parametrize(
    "activation,loss_kwargs",
    [
        ("relu", {}),
        ("sigmoid", {"label_smoothing": 0.1, "weight": [1.0, 2.0, 0.5]}),
        ("tanh", {"reduction": "sum", "ignore_index": 1}),
        ("tanh", {"reduction": "none"}),
        ("relu", "mse"),
    ],
    ids=["relu-ce", "sigmoid-ce-smooth-weight", "tanh-ce-sum-ignore", "tanh-ce-none", "relu-mse"],
)
def test_whole_model_gradient_matches_finite_differences(backend, activation, loss_kwargs):
    rng = np.random.default_rng(7)
    model = nn.MLP([5, 4, 4, 3], activation=activation, rng=3, dtype=np.float64)
    model.backend = backend
    for p in model.parameters():  # non-zero biases, so they matter
        p[...] = rng.normal(0, 0.7, p.shape)
    X = rng.normal(size=(6, 5))
    if loss_kwargs == "mse":
        loss, y = nn.make_loss("mse"), rng.normal(size=(6, 3))
    else:
        loss, y = nn.make_loss("cross_entropy", **loss_kwargs), rng.integers(0, 3, 6)
    _, dout = loss.with_grad(model.forward(X), y, nn.validated_ops(backend))
    model.backward(dout)
    grads = [g.copy() for g in model.gradients()]

    h = 1e-6
    for p, g in zip(model.parameters(), grads):
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            keep = p[idx]
            p[idx] = keep + h
            up = _loss_of(model, loss, X, y, backend)
            p[idx] = keep - h
            down = _loss_of(model, loss, X, y, backend)
            p[idx] = keep
            numeric[idx] = (up - down) / (2 * h)
        assert_close(g, numeric, rtol=1e-6, name=f"gradient of {p.shape}")


def test_input_gradient_matches_finite_differences(backend):
    rng = np.random.default_rng(1)
    model = nn.MLP([3, 4, 2], activation="tanh", rng=0, dtype=np.float64)
    model.backend = backend
    X = rng.normal(size=(2, 3))
    model.forward(X)
    dx = model.backward(np.ones((2, 2)))
    numeric = np.zeros_like(X)
    for idx in np.ndindex(X.shape):
        Xp, Xm = X.copy(), X.copy()
        Xp[idx] += 1e-6
        Xm[idx] -= 1e-6
        numeric[idx] = (model.forward(Xp).sum() - model.forward(Xm).sum()) / 2e-6
    assert_close(dx, numeric, rtol=1e-6, name="dx")


def test_backward_without_input_grad_keeps_parameter_gradients(backend):
    # the Trainer's backward: no dx for the first layer, the same parameter gradients
    rng = np.random.default_rng(2)
    model = nn.MLP([5, 7, 3], activation="relu", rng=0, dtype=np.float64)
    model.backend = backend
    X, dy = rng.normal(size=(4, 5)), rng.normal(size=(4, 3))
    model.forward(X)
    dx = model.backward(dy)
    want = [g.copy() for g in model.gradients()]
    model.forward(X)
    assert model.backward(dy, need_input_grad=False) is None
    assert dx is not None and dx.shape == X.shape
    for got, expected in zip(model.gradients(), want):
        np.testing.assert_array_equal(got, expected)


# --- layers --------------------------------------------------------------------------


def test_fused_linear_activation_matches_separate_layers(backend):
    rng = np.random.default_rng(0)
    for act_cls in (nn.ReLU, nn.Sigmoid, nn.Tanh):
        linear = nn.Linear(6, 5, rng=1, dtype=np.float64)
        linear.bias[...] = rng.normal(size=5)
        fused = nn.Sequential(linear, act_cls())
        fused.backend = backend
        X, dy = rng.normal(size=(4, 6)), rng.normal(size=(4, 5))
        y_fused = fused.forward(X)
        dx_fused = fused.backward(dy)
        grads_fused = [g.copy() for g in fused.gradients()]

        act = act_cls()
        act.backend = linear.backend
        y_sep = act.forward(linear.forward(X))
        dx_sep = linear.backward(act.backward(dy))
        assert_close(y_fused, y_sep, name=f"{act_cls.__name__} forward")
        assert_close(dx_fused, dx_sep, name=f"{act_cls.__name__} dx")
        for a, b in zip(grads_fused, linear.gradients()):
            assert_close(a, b, name=f"{act_cls.__name__} parameter gradient")


def test_linear_matches_reference_formula(backend):
    rng = np.random.default_rng(2)
    layer = nn.Linear(3, 2, rng=0)
    layer.backend = backend
    layer.bias[...] = [0.5, -1.0]
    X = rng.normal(size=(5, 3)).astype(np.float32)
    assert_close(layer(X), X @ layer.weight + layer.bias)
    dy = rng.normal(size=(5, 2)).astype(np.float32)
    dx = layer.backward(dy)
    assert_close(dx, dy @ layer.weight.T)
    assert_close(layer.dweight, X.T @ dy)
    assert_close(layer.dbias, dy.sum(0))


def test_initialisation_he_for_relu_glorot_otherwise():
    relu = nn.MLP([100, 50, 10], activation="relu", rng=0)
    tanh = nn.MLP([100, 50, 10], activation="tanh", rng=0)
    he, glorot_out = np.sqrt(6 / 100), np.sqrt(6 / 60)
    assert relu[0].init == "he" and np.abs(relu[0].weight).max() <= he
    assert np.abs(relu[0].weight).max() > 0.9 * he  # fills its range
    assert relu[2].init == "glorot" and np.abs(relu[2].weight).max() <= glorot_out
    assert tanh[0].init == "glorot" and np.abs(tanh[0].weight).max() <= np.sqrt(6 / 150)
    assert all(np.all(layer.bias == 0) for layer in relu if isinstance(layer, nn.Linear))
    assert relu[0].weight.dtype == np.float32


def test_seed_fixes_initialisation():
    a, b, c = nn.MLP([8, 4, 2], rng=5), nn.MLP([8, 4, 2], rng=5), nn.MLP([8, 4, 2], rng=6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert np.array_equal(pa, pb)
    assert not np.array_equal(a[0].weight, c[0].weight)
    gen = nn.MLP([8, 4, 2], rng=np.random.default_rng(5))
    assert np.array_equal(gen[0].weight, a[0].weight)


def test_parameters_and_gradients_match():
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.ReLU(), nn.Linear(3, 2, bias=False, rng=0))
    params, grads = model.parameters(), model.gradients()
    assert [p.shape for p in params] == [g.shape for g in grads] == [(4, 3), (3,), (3, 2)]


def test_config_round_trip():
    model = nn.Sequential(nn.Linear(4, 3, rng=0, init="he"), nn.Tanh(), nn.Linear(3, 2, bias=False, dtype=np.float64))
    rebuilt = nn.from_config(model.config())
    assert rebuilt.config() == model.config()
    with pytest.raises(ValueError, match="unknown layer"):
        nn.from_config({"type": "Evil", "x": 1})


def test_backend_attribute_propagates_and_checks_names():
    model = nn.MLP([3, 2, 2], rng=0)
    model.backend = "numpy"
    assert all(m.backend == "numpy" for m in model.modules())
    with pytest.raises(ValueError, match="unknown backend"):
        model.backend = "nope"


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(2, 2, rng=0).backward(np.zeros((1, 2), np.float32))


def test_layers_called_directly_validate_their_inputs():
    layer = nn.Linear(3, 2, rng=0)
    with pytest.raises(ValueError, match="w must have shape"):
        layer(np.zeros((4, 5), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        layer(np.zeros((4, 3), np.float64))


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 2)
    with pytest.raises(ValueError, match="activation"):
        nn.MLP([2, 2], activation="gelu")
    with pytest.raises(TypeError, match="layers\\[1\\]"):
        nn.Sequential(nn.ReLU(), "relu")
    with pytest.raises(ValueError, match="loss must be one of"):
        nn.make_loss("hinge")
    with pytest.raises(TypeError, match="bad option"):
        nn.make_loss("mse", label_smoothing=0.1)
