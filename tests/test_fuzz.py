"""Fuzz suite (issue 16): Hypothesis draws calls of every public op and of the trainer's
entry points (dtypes, shapes with 0 and 1, strides, aliasing, labels of every integer
dtype, extreme values), and one property holds for each:

    the call raises ValueError/TypeError whose message names one of its arguments,
    or it returns what the NumPy reference backend returns for the same input;
    and the inputs are never modified (the optimizer steps update their state in
    place: exactly as the reference does, and not at all when they refuse).

The examples are derandomized and bounded (``KERNPROP_FUZZ_EXAMPLES``, default 25 per
test) so CI stays short and reproducible; raise the count locally to search harder.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import kernprop
from kernprop import nn, optim
from kernprop.backends import NAMES, status
from kernprop.train import Trainer

from conftest import assert_close

EXAMPLES = int(os.environ.get("KERNPROP_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

BACKENDS = [name for name in NAMES if name != "cuda"]

# Values: mostly ordinary, sometimes the extremes a kernel must survive.
SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e-30, 3e38, -3e38, np.inf, -np.inf, np.nan]
FLOAT_DTYPES = [np.float32, np.float64]
OTHER_DTYPES = [np.float16, np.int32, np.int64, np.bool_, np.complex64]
INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


def _available(backend):
    state = status(backend)
    if not state.available:
        pytest.skip(f"backend {backend} unavailable: {state.reason}")
    return backend


@st.composite
def arrays(draw, dtype, shape, special=True):
    """An array of ``shape`` (sometimes another shape), of ``dtype`` (sometimes
    another), contiguous, transposed or a strided view; or sometimes not an array."""
    roll = draw(st.integers(0, 99))
    if roll < 2:
        return draw(st.sampled_from([None, [[1.0]], 3.0, "x"]))
    if roll < 8:  # a shape off by one somewhere, or a dimension more or less
        shape = list(shape)
        if shape and draw(st.booleans()):
            i = draw(st.integers(0, len(shape) - 1))
            shape[i] = max(0, shape[i] + draw(st.sampled_from([-1, 1])))
        elif draw(st.booleans()):
            shape.append(1)
        elif shape:
            shape.pop()
        shape = tuple(shape)
    if draw(st.integers(0, 99)) < 4:
        dtype = draw(st.sampled_from(FLOAT_DTYPES + OTHER_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.uniform(-4, 4, shape)
    if special and values.size and draw(st.integers(0, 99)) < 10:
        flat = values.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(SPECIAL))
    with np.errstate(all="ignore"):
        base = values.astype(dtype)
    layout = draw(st.sampled_from(["contiguous", "contiguous", "transposed", "strided"]))
    if layout == "transposed" and base.ndim == 2:
        return np.ascontiguousarray(base.T).T
    if layout == "strided" and base.ndim >= 1:
        big = np.zeros(tuple(2 * s for s in base.shape), dtype=base.dtype)
        view = big[tuple(slice(None, None, 2) for _ in base.shape)]
        view[...] = base
        return view
    return base


@st.composite
def labels(draw, n, classes):
    """Integer labels of any integer dtype, sometimes out of range or at its limits."""
    dtype = draw(st.sampled_from(INT_DTYPES))
    info = np.iinfo(dtype)
    values = [draw(st.integers(0, max(classes - 1, 0))) for _ in range(n)]
    if n and draw(st.integers(0, 99)) < 25:
        values[draw(st.integers(0, n - 1))] = draw(st.sampled_from(
            [int(info.max), int(info.min), -1, -100, classes, 2**63 - 100, 2**64 - 100]))
    return np.array([min(max(v, int(info.min)), int(info.max)) for v in values], dtype=dtype)


def mostly(good, bad, share=8):
    """``good`` in ``share`` draws of 10, else ``bad``: most calls should get past the
    checks, so that the comparison with the reference is exercised too."""
    return st.integers(0, 9).flatmap(lambda roll: good if roll < share else bad)


dims = mostly(st.integers(1, 4), st.integers(0, 1))
bad_ints = st.sampled_from([-100, -3, 0, 2**31, 2**63 - 1, 2**63, 2**70, -(2**64), 1.5, True])
ints = st.one_of(st.integers(-3, 5), bad_ints)
reals = mostly(st.floats(0, 1), st.sampled_from([-1.0, 2.0, 1e300, np.inf, np.nan, True, "0.1"]))


def _named(message, names):
    return any(re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message) for name in names)


def _copies(args):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}


def _same(a, b):
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    return a is b or a == b


def check_call(op, args, backend, updated=()):
    """The property: a named ValueError/TypeError, or the reference's result; inputs
    untouched (``updated`` arrays: changed exactly as on the reference backend)."""
    names = list(args)
    before = _copies(args)
    reference_args = _copies(args)
    try:
        got = op(**args, backend=backend)
    except (ValueError, TypeError) as exc:
        event(f"{op.__name__}: refused")  # --hypothesis-show-statistics: the share of each outcome
        assert _named(str(exc), names), f"{op.__name__}: error names no argument of {names}: {exc}"
        for name in names:
            assert _same(args[name], before[name]), f"{op.__name__} refused but modified {name}"
        with pytest.raises(type(exc)):  # the originals: copies would lose layout and aliasing
            op(**args, backend="numpy")
        return
    event(f"{op.__name__}: returned")
    want = op(**reference_args, backend="numpy")
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    rtol, scale = _rtol(args), _scale(args)
    with np.errstate(all="ignore"):
        for i, (g, w) in enumerate(zip(got, want)):
            if w is None:
                assert g is None
            else:
                assert_close(g, w, name=f"{op.__name__}[{i}]", rtol=rtol, scale=max(scale, _scale({0: w})))
        for name in names:
            if name in updated:
                assert_close(args[name], reference_args[name], name=f"{op.__name__}: {name} after the step",
                             rtol=rtol, scale=max(scale, _scale({0: reference_args[name]})))
            else:
                assert _same(args[name], before[name]), f"{op.__name__} modified its input {name}"


def _scale(args):
    """The largest finite magnitude among the float arrays (at least 1): the rounding
    of a result is relative to its inputs, not to itself (a loss of 0 from logits of 1)."""
    finite = [np.abs(a[np.isfinite(a)]).max() for a in args.values()
              if isinstance(a, np.ndarray) and a.dtype.kind == "f" and np.isfinite(a).any()]
    return float(max([1.0, *finite]))


def _rtol(args):
    dtypes = {a.dtype for a in args.values() if isinstance(a, np.ndarray) and a.dtype.kind == "f"}
    return 1e-4 if np.dtype(np.float32) in dtypes else 1e-10


# --- the ops ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(data=st.data())
def test_fuzz_matmul_family(backend, data):
    _available(backend)
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    n, k, m = data.draw(dims), data.draw(dims), data.draw(dims)
    which = data.draw(st.sampled_from(["matmul", "linear", "linear_backward"]))
    if which == "matmul":
        check_call(kernprop.matmul, {"a": data.draw(arrays(dt, (n, k))), "b": data.draw(arrays(dt, (k, m)))}, backend)
    elif which == "linear":
        args = {"x": data.draw(arrays(dt, (n, k))), "w": data.draw(arrays(dt, (k, m))),
                "b": data.draw(st.one_of(st.none(), arrays(dt, (m,)))),
                "activation": data.draw(st.sampled_from([None, "relu", "sigmoid", "tanh", "gelu"]))}
        check_call(kernprop.linear, args, backend)
    else:
        args = {"x": data.draw(arrays(dt, (n, k))), "w": data.draw(arrays(dt, (k, m))), "dy": data.draw(arrays(dt, (n, m))),
                "has_bias": data.draw(st.booleans()), "need_dx": data.draw(st.booleans())}
        check_call(kernprop.linear_backward, args, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(data=st.data())
def test_fuzz_activations_and_softmax(backend, data):
    _available(backend)
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    shape = (data.draw(dims), data.draw(dims))
    which = data.draw(st.sampled_from(["relu", "sigmoid", "tanh", "log_softmax", "softmax",
                                       "relu_backward", "sigmoid_backward", "tanh_backward",
                                       "log_softmax_backward"]))
    op = getattr(kernprop, which)
    if which.endswith("_backward"):
        saved = "x" if which == "relu_backward" else "y"
        check_call(op, {saved: data.draw(arrays(dt, shape)), "dy": data.draw(arrays(dt, shape))}, backend)
    else:
        check_call(op, {"x": data.draw(arrays(dt, shape))}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(data=st.data())
def test_fuzz_losses(backend, data):
    _available(backend)
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    n, c = data.draw(dims), data.draw(st.integers(0, 5))
    options = {"ignore_index": data.draw(mostly(st.just(-100), ints)),
               "label_smoothing": data.draw(reals),
               "weight": data.draw(st.one_of(st.none(), arrays(dt, (c,), special=False)))}
    which = data.draw(st.sampled_from(["cross_entropy", "cross_entropy_with_grad", "mse", "mse_backward",
                                       "linear_cross_entropy"]))
    if which.startswith("cross_entropy"):
        args = {"logits": data.draw(arrays(dt, (n, c))), "labels": data.draw(labels(n, c)),
                "reduction": data.draw(st.sampled_from(["mean", "sum", "none", "avg"])), **options}
    elif which.startswith("mse"):
        shape = (n, c)
        args = {"pred": data.draw(arrays(dt, shape)), "target": data.draw(arrays(dt, shape)),
                "reduction": data.draw(st.sampled_from(["mean", "sum", "none", "avg"]))}
    else:
        k = data.draw(dims)
        args = {"x": data.draw(arrays(dt, (n, k))), "w": data.draw(arrays(dt, (k, c))),
                "b": data.draw(st.one_of(st.none(), arrays(dt, (c,)))), "labels": data.draw(labels(n, c)),
                "reduction": data.draw(st.sampled_from(["mean", "sum", "none"])),
                "chunk_size": data.draw(mostly(st.sampled_from([None, 1, 2, 3]), bad_ints)), **options}
    check_call(getattr(kernprop, which), args, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(data=st.data())
def test_fuzz_optimizer_steps(backend, data):
    _available(backend)
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    shape = (data.draw(dims), data.draw(dims))
    state = {name: data.draw(arrays(dt, shape, special=False)) for name in ("param", "grad", "s1", "s2")}
    alias = data.draw(st.sampled_from([None, None, None, "same", "overlap"]))
    if alias is not None and isinstance(state["param"], np.ndarray) and state["param"].size > 1:
        # two arguments on one memory: the same array, or overlapping views of one buffer
        first, second = data.draw(st.permutations(["param", "grad", "s1", "s2"]))[:2]
        if alias == "same":
            state[second] = state[first]
        else:
            flat = np.zeros(state["param"].size + 1, state["param"].dtype)
            state[first], state[second] = (flat[:-1].reshape(state["param"].shape),
                                           flat[1:].reshape(state["param"].shape))
    if data.draw(st.booleans()):
        args = {"param": state["param"], "grad": state["grad"], "velocity": state["s1"],
                "lr": data.draw(reals), "momentum": data.draw(reals), "nesterov": data.draw(st.booleans()),
                "weight_decay": data.draw(mostly(st.just(0.0), reals))}
        check_call(kernprop.sgd_step, args, backend, updated=("param", "velocity"))
    else:
        args = {"param": state["param"], "grad": state["grad"], "exp_avg": state["s1"], "exp_avg_sq": state["s2"],
                "step": data.draw(mostly(st.integers(1, 5), bad_ints)), "lr": data.draw(reals),
                "betas": data.draw(mostly(st.sampled_from([(0.9, 0.999), (0.0, 0.5)]),
                                          st.sampled_from([(1.0, 0.9), (0.9,), "x"]))),
                "eps": data.draw(mostly(st.just(1e-8), reals)), "weight_decay": data.draw(mostly(st.just(0.0), reals)),
                "decoupled": data.draw(st.booleans())}
        check_call(kernprop.adam_step, args, backend, updated=("param", "exp_avg", "exp_avg_sq"))


# --- the trainer ------------------------------------------------------------------------


TRAINER_NAMES = ["X", "y", "weight", "ignore_index", "label_smoothing", "batch_size", "epochs",
                 "validation_data", "model", "loss", "reduction"]


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(data=st.data())
def test_fuzz_trainer_entry_points(backend, data):
    """Trainer construction, fit, evaluate and predict: a named error, or the same
    result as the reference backend; X and y never modified."""
    _available(backend)
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    f, c = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    n = data.draw(mostly(st.integers(1, 9), st.just(0), 9))
    loss = data.draw(st.sampled_from(["cross_entropy", "cross_entropy", "mse"]))
    kwargs = {}
    if loss == "cross_entropy":
        kwargs = {"ignore_index": data.draw(mostly(st.just(-100), ints, 9)),
                  "label_smoothing": data.draw(mostly(st.just(0.0), reals, 9)),
                  "weight": data.draw(st.one_of(st.none(), arrays(dt, (c,), special=False)))}
    X = data.draw(arrays(dt, (n, f)))
    y = data.draw(labels(n, c)) if loss == "cross_entropy" else data.draw(arrays(dt, (n, c)))
    batch_size = data.draw(mostly(st.integers(1, 4), bad_ints, 9))
    epochs = data.draw(mostly(st.integers(0, 2), st.sampled_from([-1, 1.5]), 9))
    X_before, y_before = _copies({"X": X, "y": y}).values()

    def run(on):
        model = nn.MLP([f, c], rng=0, dtype=np.float64)
        trainer = Trainer(model, loss, optim.SGD(0.1), backend=on, batch_size=batch_size, seed=0,
                          engine="layerwise", **kwargs)
        history = trainer.fit(X, y, epochs, verbose=0)
        return history["loss"], trainer.evaluate(X, y), trainer.predict(X)

    try:
        got = run(backend)
    except (ValueError, TypeError) as exc:
        event("trainer: refused")
        assert _named(str(exc), TRAINER_NAMES), f"error names no argument: {exc}"
        with pytest.raises(type(exc)):
            run("numpy")
    else:
        event("trainer: returned")
        want = run("numpy")
        # float64 model: backends differ by rounding only (a loss of 0 may come out as 1e-17)
        close = {"rtol": 1e-9, "atol": 1e-12}
        np.testing.assert_allclose(got[0], want[0], err_msg="fit losses", **close)
        for key in want[1]:
            np.testing.assert_allclose(got[1][key], want[1][key], err_msg=f"evaluate {key}", **close)
        np.testing.assert_allclose(got[2], want[2], err_msg="predict", **close)
    assert _same(X, X_before) and _same(y, y_before), "the trainer modified its data"


_CHECKPOINT = {}


def _checkpoint_bytes(tmp_dir):
    """One small checkpoint (Adam state, class weights), made once per session."""
    if "bytes" not in _CHECKPOINT:
        trainer = Trainer(nn.MLP([3, 4, 2], rng=0), optimizer=optim.Adam(), backend="numpy", weight=np.ones(2))
        trainer.fit(np.ones((4, 3), np.float32), np.array([0, 1, 0, 1]), verbose=0)
        path = trainer.save(os.path.join(tmp_dir, "fuzz_base.npz"))
        with open(path, "rb") as f:
            _CHECKPOINT["bytes"] = f.read()
    return _CHECKPOINT["bytes"]


@FUZZ
@given(data=st.data())
def test_fuzz_checkpoint_bytes(tmp_path_factory, data):
    """Damaged checkpoints (bytes flipped, cut or inserted): ``Trainer.load`` raises a
    ValueError naming the file, or loads a trainer; never anything else."""
    tmp = tmp_path_factory.getbasetemp()
    raw = bytearray(_checkpoint_bytes(str(tmp)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip":
            raw[at] ^= data.draw(st.integers(1, 255))
        elif how == "cut":
            del raw[at:at + data.draw(st.integers(1, 64))]
        else:
            raw[at:at] = bytes(data.draw(st.integers(0, 255)) for _ in range(data.draw(st.integers(1, 8))))
        if not raw:
            break
    path = tmp / "fuzz_damaged.npz"
    path.write_bytes(bytes(raw))
    try:
        Trainer.load(path)
    except ValueError as exc:
        assert "fuzz_damaged.npz" in str(exc), exc
