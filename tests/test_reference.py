"""The oracle itself: against finite differences, PyTorch (when installed), and the two
worked examples of the seeds."""

import numpy as np
import pytest

from kernprop.kernels.reference import activations, losses, matmul, optimizers, softmax

from conftest import assert_close


def numeric_gradient(f, x, eps=1e-6):
    """Central differences of the scalar f at x (float64)."""
    grad = np.zeros_like(x)
    flat, grad_flat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        up = f()
        flat[i] = saved - eps
        down = f()
        flat[i] = saved
        grad_flat[i] = (up - down) / (2 * eps)
    return grad


@pytest.fixture
def rng64():
    return np.random.default_rng(7)


def test_linear_backward_matches_finite_differences(rng64):
    x, w, b = rng64.normal(size=(3, 4)), rng64.normal(size=(4, 5)), rng64.normal(size=5)
    cotangent = rng64.normal(size=(3, 5))

    def f():
        return float((matmul.linear_forward(x, w, b, None) * cotangent).sum())

    dx, dw, db = matmul.linear_backward(x, w, cotangent, True)
    assert_close(dx, numeric_gradient(f, x), rtol=1e-7, name="dx")
    assert_close(dw, numeric_gradient(f, w), rtol=1e-7, name="dw")
    assert_close(db, numeric_gradient(f, b), rtol=1e-7, name="db")


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
def test_activation_backward_matches_finite_differences(rng64, name):
    x = rng64.normal(size=(4, 6))
    x[np.abs(x) < 1e-3] = 0.5  # relu has no derivative at 0
    cotangent = rng64.normal(size=x.shape)
    forward = getattr(activations, f"{name}_forward")
    backward = getattr(activations, f"{name}_backward")
    saved = x if name == "relu" else forward(x)
    got = backward(saved, cotangent)
    assert_close(got, numeric_gradient(lambda: float((forward(x) * cotangent).sum()), x), rtol=1e-7)


def test_log_softmax_backward_matches_finite_differences(rng64):
    x = rng64.normal(size=(3, 7)) * 3
    cotangent = rng64.normal(size=x.shape)
    got = softmax.log_softmax_backward(softmax.log_softmax_forward(x), cotangent)
    want = numeric_gradient(lambda: float((softmax.log_softmax_forward(x) * cotangent).sum()), x)
    assert_close(got, want, rtol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_gradient_matches_finite_differences(rng64, reduction, smoothing, weighted):
    logits = rng64.normal(size=(5, 4)) * 2
    labels = np.array([0, 3, -100, 1, 3])
    weight = rng64.uniform(0.2, 2, 4) if weighted else None

    def f():
        loss, _ = losses.cross_entropy_with_grad(logits, labels, reduction, -100, smoothing, weight)
        return float(np.sum(loss))

    _, grad = losses.cross_entropy_with_grad(logits, labels, reduction, -100, smoothing, weight)
    assert_close(grad, numeric_gradient(f, logits), rtol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_backward_matches_finite_differences(rng64, reduction):
    pred, target = rng64.normal(size=(3, 4)), rng64.normal(size=(3, 4))
    got = losses.mse_backward(pred, target, reduction)
    want = numeric_gradient(lambda: float(np.sum(losses.mse_forward(pred, target, reduction))), pred)
    assert_close(got, want, rtol=1e-7)


def test_linear_cross_entropy_matches_finite_differences(rng64):
    x, w, b = rng64.normal(size=(4, 3)), rng64.normal(size=(3, 5)), rng64.normal(size=5)
    labels = np.array([4, 0, 2, 2])
    weight = rng64.uniform(0.5, 1.5, 5)

    def f():
        return float(losses.linear_cross_entropy(x, w, b, labels, "mean", -100, 0.1, weight, 2)[0])

    _, dx, dw, db = losses.linear_cross_entropy(x, w, b, labels, "mean", -100, 0.1, weight, 2)
    for name, got, array in (("dx", dx, x), ("dw", dw, w), ("db", db, b)):
        assert_close(got, numeric_gradient(f, array), rtol=1e-7, name=name)


# --- PyTorch as a second opinion on the oracle -----------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_matches_torch(rng64, reduction, smoothing, weighted, ignore_index):
    torch = pytest.importorskip("torch")
    logits = rng64.normal(size=(6, 5)) * 3
    logits[0, 4] = -np.inf
    labels = np.array([0, 2, -100, 4, 2, 1])
    labels[labels == -100] = ignore_index
    weight = rng64.uniform(0.2, 2, 5) if weighted else None
    t_logits = torch.tensor(logits, requires_grad=True)
    t_loss = torch.nn.functional.cross_entropy(
        t_logits, torch.tensor(labels), reduction=reduction, ignore_index=ignore_index,
        label_smoothing=smoothing, weight=None if weight is None else torch.tensor(weight),
    )
    t_loss.sum().backward()
    loss, grad = losses.cross_entropy_with_grad(logits, labels, reduction, ignore_index, smoothing, weight)
    assert_close(loss, t_loss.detach().numpy(), rtol=1e-12, name="loss")
    assert_close(grad, t_logits.grad.numpy(), rtol=1e-12, name="dlogits")


def test_all_ignored_matches_torch():
    torch = pytest.importorskip("torch")
    logits = np.ones((2, 3))
    labels = np.array([-100, -100])
    t_logits = torch.tensor(logits, requires_grad=True)
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.tensor(labels))
    t_loss.backward()
    loss, grad = losses.cross_entropy_with_grad(logits, labels, "mean", -100, 0.0, None)
    assert np.isnan(loss) and np.isnan(t_loss.item())
    assert_close(grad, t_logits.grad.numpy(), rtol=1e-12)


def test_softmax_family_and_activations_match_torch(rng64):
    torch = pytest.importorskip("torch")
    x = rng64.normal(size=(4, 7)) * 5
    x[1, 2] = -np.inf
    t = torch.tensor(x)
    assert_close(softmax.log_softmax_forward(x), torch.log_softmax(t, -1).numpy(), rtol=1e-12)
    assert_close(softmax.softmax_forward(x), torch.softmax(t, -1).numpy(), rtol=1e-12)
    finite = np.nan_to_num(x, neginf=-30)
    tf = torch.tensor(finite)
    assert_close(activations.sigmoid_forward(finite), torch.sigmoid(tf).numpy(), rtol=1e-12)
    assert_close(activations.tanh_forward(finite), torch.tanh(tf).numpy(), rtol=1e-12)
    assert_close(activations.relu_forward(finite), torch.relu(tf).numpy(), rtol=1e-12)


def test_mse_matches_torch(rng64):
    torch = pytest.importorskip("torch")
    pred, target = rng64.normal(size=(3, 4)), rng64.normal(size=(3, 4))
    for reduction in ("mean", "sum", "none"):
        t_pred = torch.tensor(pred, requires_grad=True)
        t_loss = torch.nn.functional.mse_loss(t_pred, torch.tensor(target), reduction=reduction)
        t_loss.sum().backward()
        assert_close(losses.mse_forward(pred, target, reduction), t_loss.detach().numpy(), rtol=1e-12)
        assert_close(losses.mse_backward(pred, target, reduction), t_pred.grad.numpy(), rtol=1e-12)


# --- the two worked examples of the seeds ---------------------------------------------


def test_worked_example_two_two_one_linear_network():
    # h1 = w1 x1 + w2 x2, h2 = w3 x1 + w4 x2, y = w5 h1 + w6 h2, E = (y - t)^2 / 2
    x = np.array([[1.0, 0.5]])
    target = np.array([[4.0]])
    w_hidden = np.array([[0.5, 2.3], [1.5, 3.0]])  # columns: (w1, w2), (w3, w4)
    w_out = np.array([[1.0], [1.0]])  # (w5, w6)

    def forward():
        hidden = matmul.linear_forward(x, w_hidden, None, None)
        return hidden, matmul.linear_forward(hidden, w_out, None, None)

    hidden, y = forward()
    assert losses.mse_forward(y, target, "sum") / 2 == pytest.approx(0.55125, abs=1e-12)
    dy = losses.mse_backward(y, target, "sum") / 2
    dhidden, dw_out, _ = matmul.linear_backward(hidden, w_out, dy, False)
    _, dw_hidden, _ = matmul.linear_backward(x, w_hidden, dhidden, False)
    optimizers.sgd_step(w_hidden, dw_hidden, None, 0.1, 0.0, False, 0.0)
    optimizers.sgd_step(w_out, dw_out, None, 0.1, 0.0, False, 0.0)
    _, y = forward()
    assert y[0, 0] == pytest.approx(3.1768, abs=5e-5)
    assert losses.mse_forward(y, target, "sum") / 2 == pytest.approx(0.3388, abs=5e-5)


def test_worked_example_one_one_one_sigmoid_network():
    # h = sigmoid(w1 x), y = w2 h, L = (y - t)^2 / 2.  The seed's figures were worked by
    # hand with rounded intermediates (exact: dL/dw2 = 0.19373, L' = 0.04463), hence 1e-4.
    x = np.array([[1.0]])
    target = np.array([[0.0]])
    w1, w2 = np.array([[0.5]]), np.array([[0.5]])

    def forward():
        h = activations.sigmoid_forward(matmul.linear_forward(x, w1, None, None))
        return h, matmul.linear_forward(h, w2, None, None)

    h, y = forward()
    assert losses.mse_forward(y, target, "sum") / 2 == pytest.approx(0.0484, abs=1e-4)
    dy = losses.mse_backward(y, target, "sum") / 2
    dh, dw2, _ = matmul.linear_backward(h, w2, dy, False)
    _, dw1, _ = matmul.linear_backward(x, w1, activations.sigmoid_backward(h, dh), False)
    assert dw2[0, 0] == pytest.approx(0.1938, abs=1e-4)
    assert dw1[0, 0] == pytest.approx(0.0365, abs=1e-4)
    optimizers.sgd_step(w1, dw1, None, 0.1, 0.0, False, 0.0)
    optimizers.sgd_step(w2, dw2, None, 0.1, 0.0, False, 0.0)
    _, y = forward()
    assert losses.mse_forward(y, target, "sum") / 2 == pytest.approx(0.0447, abs=1e-4)
