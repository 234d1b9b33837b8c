"""The fused engine (``engines/fused_mlp.py`` over ``engines.mlp_step``) that
``Trainer.fit`` takes for small MLPs on numba: the same weights, optimizer state,
history and gradients as the packed layer-by-layer engine on numba and numpy, for every
optimizer and loss option it takes; deterministic; not chosen where it does not apply.
Engines are picked by name (``Trainer(..., engine=...)``)."""

import numpy as np
import pytest

import kernprop
from kernprop import engines, nn, optim, train
from kernprop.train import Trainer

pytestmark = pytest.mark.skipif(
    "numba" not in kernprop.available_backends(), reason="the numba backend is not available"
)

# (rtol, atol) on weights after a few epochs: float32 sums round in another order
TOL = {np.float32: (2e-3, 2e-4), np.float64: (1e-9, 1e-10)}

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(0.1),
    "sgd-wd": lambda: optim.SGD(0.1, weight_decay=1e-2),
    "momentum": lambda: optim.SGD(0.05, momentum=0.9),
    "nesterov-wd": lambda: optim.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: optim.Adam(1e-2),
    "adam-wd": lambda: optim.Adam(1e-2, weight_decay=1e-2),
    "adamw": lambda: optim.Adam(1e-2, weight_decay=0.1, decoupled=True),
}

LOSSES = {
    "ce": {},
    "ce-sum": {"reduction": "sum"},
    "ce-smoothing": {"label_smoothing": 0.1},
    "ce-weight": {"weight": np.array([0.5, 2.0, 1.0])},
    "ce-ignore": {"ignore_index": 1},
    "ce-all": {"label_smoothing": 0.2, "weight": np.array([1.5, 0.5, 1.0]), "ignore_index": 2,
               "reduction": "sum"},
}


def _blobs(n=100, features=6, classes=3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, features))
    y = rng.integers(0, classes, n)
    X = (centers[y] + rng.normal(size=(n, features))).astype(dtype)
    return X, y


@pytest.fixture
def spy():
    """Records, per fit, whether its engine was the fused one (from the history)."""
    return []


def _engine(fused):
    return "fused" if fused else "packed"


def _fit(backend, fused, seen, optimizer="adam", dtype=np.float32, loss="cross_entropy",
         model=None, epochs=3, data=None, batch_size=16, verbose=0, **loss_kwargs):
    """Trains on ``backend`` with the fused engine or the packed layer-by-layer one;
    returns the trainer and history and appends to ``seen`` whether it ran fused."""
    X, y = data if data is not None else _blobs(dtype=dtype)
    model = model() if model is not None else nn.MLP([6, 8, 3], rng=0, dtype=dtype)
    opt = OPTIMIZERS[optimizer]()
    trainer = Trainer(model, loss=loss, optimizer=opt, backend=backend, batch_size=batch_size,
                      seed=0, engine=_engine(fused), **loss_kwargs)
    history = trainer.fit(X, y, epochs=epochs, verbose=verbose)
    seen.append(set(history["engine"]) == {"fused"})
    return trainer, history


def _assert_close(actual, expected, dtype, what):
    rtol, atol = TOL[dtype]
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = np.abs(actual - expected) - rtol * np.abs(expected)
    worst = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
    assert np.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True), (
        f"{what}: worst element {worst}: {actual[worst] if err.size else actual} vs "
        f"{expected[worst] if err.size else expected} (rtol {rtol}, atol {atol})"
    )


def _compare(runs, dtype):
    """The fused run's weights, optimizer state, history and gradients against the others."""
    (fused, h_fused), *others = runs
    for trainer, history in others:
        for i, (a, b) in enumerate(zip(fused.model.parameters(), trainer.model.parameters())):
            _assert_close(a, b, dtype, f"param {i}")
        for key, value in trainer.optimizer.state_dict().items():
            if value.dtype.kind == "U":
                assert fused.optimizer.state_dict()[key] == value
                continue
            _assert_close(fused.optimizer.state_dict()[key], value, dtype, f"optimizer {key}")
        for key in history:
            if key not in ("samples_per_s", "engine", "precision"):
                _assert_close(h_fused[key], history[key], dtype, f"history {key}")
        for i, (a, b) in enumerate(zip(fused.model.gradients(), trainer.model.gradients())):
            _assert_close(a, b, dtype, f"gradient {i}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizers_match_unfused_and_numpy(opt, dtype, spy):
    runs = [_fit(b, f, spy, opt, dtype) for b, f in (("numba", True), ("numba", False),
                                                            ("numpy", False))]
    assert spy == [True, False, False]
    _compare(runs, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_cross_entropy_options_match(loss, dtype, spy):
    kwargs = LOSSES[loss]
    runs = [_fit(b, f, spy, "momentum", dtype, **kwargs)
            for b, f in (("numba", True), ("numba", False), ("numpy", False))]
    assert spy == [True, False, False]
    _compare(runs, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_matches(reduction, dtype, spy):
    X, _ = _blobs(dtype=dtype)
    Y = np.stack([X[:, 0] - X[:, 1], 0.5 * X[:, 2]], axis=1)
    model = lambda: nn.MLP([6, 8, 2], activation="tanh", rng=0, dtype=dtype)  # noqa: E731
    runs = [_fit(b, f, spy, "adam", dtype, loss="mse", model=model, data=(X, Y),
                 reduction=reduction) for b, f in (("numba", True), ("numba", False), ("numpy", False))]
    assert spy == [True, False, False]
    _compare(runs, dtype)


MODELS = {
    "sigmoid-3-layers": lambda dtype: nn.MLP([6, 9, 7, 3], activation="sigmoid", rng=1, dtype=dtype),
    "tanh": lambda dtype: nn.MLP([6, 5, 3], activation="tanh", rng=2, dtype=dtype),
    "no-bias": lambda dtype: nn.Sequential(nn.Linear(6, 8, bias=False, rng=3, dtype=dtype), nn.ReLU(),
                                           nn.Linear(8, 3, rng=4, dtype=dtype)),
    "single-linear": lambda dtype: nn.Linear(6, 3, rng=5, dtype=dtype),
    "wide": lambda dtype: nn.MLP([6, 40, 3], rng=6, dtype=dtype),  # wider than the batch
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("arch", list(MODELS))
def test_architectures_match(arch, dtype, spy):
    runs = [_fit(b, f, spy, "nesterov-wd", dtype, model=lambda: MODELS[arch](dtype))
            for b, f in (("numba", True), ("numba", False), ("numpy", False))]
    assert spy == [True, False, False]
    _compare(runs, dtype)


# Layers of at most drivers.THIN (10) outputs run their forward and weight gradient in
# the GEMM engine's ``thin_*`` products, wider ones below a register tile ``narrow``.
THIN_MODELS = {
    # 3 logits after sigmoid layers, and a first layer only 3 deep
    "3-inputs": ([3, 12, 9, 3], "sigmoid", "cross_entropy"),
    # a hidden layer 4 wide: its forward with bias and tanh after the product
    "4-wide-hidden": ([6, 4, 9, 2], "tanh", "cross_entropy"),
    # one output: a regressor's
    "1-output": ([6, 8, 1], "relu", "mse"),
    # 10 logits (thin), then 12 (narrow, on the rows whose tile is wider than 12)
    "10-logits": ([6, 8, 10], "relu", "cross_entropy"),
    "12-logits": ([6, 8, 12], "relu", "cross_entropy"),
    # batches of 9 rows, every layer 9 wide: the thin products' scratch (81 + 81) is then
    # larger than the pack buffers' (a panel 16 wide, 9 deep)
    "9-wide-batch-9": ([9, 9, 9], "relu", "cross_entropy"),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("arch", list(THIN_MODELS))
def test_thin_layers_match(arch, dtype, spy):
    sizes, activation, loss = THIN_MODELS[arch]
    X, y = _blobs(features=sizes[0], classes=max(sizes[-1], 2), dtype=dtype)
    if loss == "mse":
        y = (X[:, :1] - 0.5 * X[:, 1:2]).astype(dtype)
    model = lambda: nn.MLP(sizes, activation=activation, rng=7, dtype=dtype)  # noqa: E731
    batch_size = 9 if arch.endswith("batch-9") else 16
    runs = [_fit(b, f, spy, "adam", dtype, loss=loss, model=model, data=(X, y), batch_size=batch_size)
            for b, f in (("numba", True), ("numba", False), ("numpy", False))]
    assert spy == [True, False, False]
    _compare(runs, dtype)


def test_last_batch_smaller_and_batch_of_one(spy):
    for batch in (1, 7, 33):  # 100 rows: a short last batch each time
        runs = [_fit("numba", f, spy, "adam", batch_size=batch) for f in (True, False)]
        _compare(runs, np.float32)
    assert spy == [True, False] * 3


def test_deterministic():
    runs = [_fit("numba", True, [], "adamw", epochs=4) for _ in range(2)]
    for a, b in zip(runs[0][0].model.parameters(), runs[1][0].model.parameters()):
        assert np.array_equal(a, b)
    assert runs[0][1]["loss"] == runs[1][1]["loss"]


def test_does_not_depend_on_thread_count():
    old = kernprop.get_num_threads() if hasattr(kernprop, "get_num_threads") else None
    results = []
    try:
        for threads in (1, 2):
            kernprop.set_num_threads(threads)
            results.append(_fit("numba", True, [], "adam")[0].model.parameters())
    finally:
        if old is not None:
            kernprop.set_num_threads(old)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["ce-adam", "mse-adam", "ce-tanh-momentum"])
def test_products_split_over_two_threads_give_the_serial_bits(case, dtype, monkeypatch):
    """Above ``SPLIT_MIN_MACS`` multiply-adds a product runs on two threads (the forward
    by row halves, a layer's dw and dx side by side).  Every split (threshold 0) against
    none, at 1 and 2 threads: the same bits, for odd batches (7 rows, then a last batch
    of 3; 1 row), narrow logits and layers wider than a tile."""
    from kernprop.engines import mlp_step

    loss, *rest = case.split("-")
    optimizer = rest[-1]
    activation = "tanh" if "tanh" in rest else "relu"
    X, y = _blobs(n=59, features=23, dtype=dtype)
    if loss == "mse":
        y = (0.1 * X[:, :5] + np.random.default_rng(1).standard_normal((59, 5))).astype(dtype)
    width = 3 if loss == "ce" else 5

    def fit(split_macs, threads, batch_size):
        monkeypatch.setattr(mlp_step, "SPLIT_MIN_MACS", split_macs)
        old = kernprop.get_num_threads()
        kernprop.set_num_threads(threads)
        try:
            model = nn.MLP([23, 37, 20, width], activation=activation, rng=0, dtype=dtype)
            trainer = Trainer(model, loss="cross_entropy" if loss == "ce" else "mse",
                              optimizer=OPTIMIZERS[optimizer](), backend="numba", batch_size=batch_size, seed=0,
                              engine="fused")
            history = trainer.fit(X, y, epochs=2, verbose=0)
        finally:
            kernprop.set_num_threads(old)
        assert set(history["engine"]) == {"fused"}
        return model.parameters() + [np.array(history["loss"])]

    for batch_size in (7, 1, 59):
        serial = fit(1 << 62, 1, batch_size)
        assert all(np.isfinite(a).all() for a in serial)
        for threads in (1, 2):
            for i, (a, b) in enumerate(zip(fit(0, threads, batch_size), serial)):
                assert np.array_equal(a, b), (batch_size, threads, i)


def test_all_rows_ignored_gives_nan_loss_and_no_update(spy):
    X, _ = _blobs(n=32)
    y = np.full(32, 2)
    runs = [_fit(b, f, spy, "sgd", data=(X, y), ignore_index=2, epochs=1)
            for b, f in (("numba", True), ("numpy", False))]
    assert spy == [True, False]
    assert np.isnan(runs[0][1]["loss"][0]) and np.isnan(runs[1][1]["loss"][0])
    for a, b in zip(runs[0][0].model.parameters(), runs[1][0].model.parameters()):
        assert np.array_equal(a, b)


def test_validation_callbacks_and_checkpoints_unchanged(tmp_path):
    X, y = _blobs()
    out = {}
    for fused in (True, False):
        seen = []
        trainer = Trainer(nn.MLP([6, 8, 3], rng=0), optimizer=optim.Adam(1e-2), backend="numba",
                          batch_size=16, engine=_engine(fused))
        history = trainer.fit(X, y, epochs=2, validation_data=(X[:40], y[:40]), verbose=0,
                              callbacks=[lambda epoch, logs: seen.append((epoch, sorted(logs)))])
        path = trainer.save(tmp_path / f"{fused}.npz")
        resumed = Trainer.load(path, engine=_engine(fused))
        resumed.fit(X, y, epochs=1, verbose=0)
        trainer.fit(X, y, epochs=1, verbose=0)
        out[fused] = (history, seen, trainer, resumed)
    (h1, seen1, t1, r1), (h0, seen0, t0, _) = out[True], out[False]
    assert seen1 == seen0 and list(h1) == list(h0)
    assert h1["engine"] == ["fused", "fused"] and h0["engine"] == ["packed", "packed"]
    assert t1.optimizer.steps == t0.optimizer.steps == r1.optimizer.steps
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        _assert_close(h1[key], h0[key], np.float32, key)
    for a, b, c in zip(t1.model.parameters(), r1.model.parameters(), t0.model.parameters()):
        assert np.array_equal(a, b)  # resuming from a checkpoint continues the same run
        _assert_close(a, c, np.float32, "param")


def test_lr_schedule_applies(spy):
    runs = []
    for backend, fused in (("numba", True), ("numpy", False)):
        X, y = _blobs()
        trainer = Trainer(nn.MLP([6, 8, 3], rng=0), backend=backend, batch_size=16, engine=_engine(fused),
                          optimizer=optim.SGD(0.1, lr_schedule=lambda epoch: 0.1 / (1 + epoch)))
        runs.append((trainer, trainer.fit(X, y, epochs=3, verbose=0)))
    assert [set(h["engine"]) == {"fused"} for _, h in runs] == [True, False]
    _compare(runs, np.float32)


class _Loss(nn.CrossEntropyLoss):
    pass


@pytest.mark.parametrize("case", ["reduction-none", "custom-loss", "numpy-backend", "leading-activation"])
def test_auto_does_not_fuse_where_the_fused_step_does_not_apply(case):
    X, y = _blobs()
    model = nn.MLP([6, 8, 3], rng=0)
    loss = "cross_entropy"
    kwargs = {}
    backend = "numba"
    if case == "reduction-none":
        kwargs = {"reduction": "none"}
    elif case == "custom-loss":
        loss = _Loss()
    elif case == "numpy-backend":
        backend = "numpy"
    else:
        model = nn.Sequential(nn.Tanh(), nn.Linear(6, 3, rng=0))
    history = Trainer(model, loss=loss, backend=backend, batch_size=16, **kwargs).fit(X, y, epochs=1, verbose=0)
    assert history["engine"] == ["packed"]
    if backend == "numba":  # asked for by name, it says why not
        with pytest.raises(ValueError, match="engine 'fused' does not take"):
            Trainer(model, loss=loss, backend=backend, batch_size=16, engine="fused", **kwargs).fit(X, y)


def test_auto_does_not_fuse_a_step_above_the_limit():
    # the rule's size limit, asked of engines.choose without training the big model
    model, loss, opt = nn.MLP([784, 512, 256, 10], rng=0), nn.make_loss("cross_entropy"), optim.SGD(0.1)
    small = engines.fused_limit(threads=2) // engines.multiply_adds(model, 1)
    bigger = engines.fused_limit(threads=1) // engines.multiply_adds(model, 1)
    assert bigger >= 4 * small
    for threads, batch, want in ((2, small, "fused"), (2, small + 1, "layerwise"), (1, bigger, "fused"),
                                 (1, bigger + 1, "layerwise")):
        old = kernprop.get_num_threads()
        kernprop.set_num_threads(threads)
        try:
            name, why = engines.choose(model, loss, opt, "numba", batch)
        finally:
            kernprop.set_num_threads(old)
        assert name == want, (threads, batch, why)


def test_digits_default_model_is_fused():
    # the digits MLP at its usual sizes takes the fused step with the shipped threshold
    rng = np.random.default_rng(0)
    X, y = rng.random((64, 64), dtype=np.float32), rng.integers(0, 10, 64)
    for sizes, batch in (([64, 32, 10], 32), ([64, 128, 10], 32)):
        history = Trainer(nn.MLP(sizes, rng=0), backend="numba", batch_size=batch).fit(X, y, epochs=1, verbose=0)
        assert history["engine"] == ["fused"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products_deeper_than_a_packed_block(dtype, spy):
    # K > mlp_step._KC = 256: hidden width 300 (forward of the logits) and batch 270 (the
    # weight gradients), both through more than one packed K block, narrow and wide
    X, y = _blobs(n=600, dtype=dtype)
    model = lambda: nn.MLP([6, 300, 3], rng=7, dtype=dtype)  # noqa: E731
    runs = [_fit(b, f, spy, "adam", dtype, model=model, data=(X, y), batch_size=270, epochs=2)
            for b, f in (("numba", True), ("numba", False), ("numpy", False))]
    assert spy == [True, False, False]
    _compare(runs, dtype)


def test_hyperparameters_changed_mid_fit_are_honoured():
    # a callback that changes the weight decay after the first epoch: the fit goes on
    # layer by layer, as the layer-by-layer path would have run it from the start
    def decay(trainer):
        def callback(epoch, logs):
            trainer.optimizer.weight_decay = 0.05
        return callback

    runs = []
    for backend, fused in (("numba", True), ("numpy", False)):
        X, y = _blobs()
        trainer = Trainer(nn.MLP([6, 8, 3], rng=0), optimizer=optim.SGD(0.1, momentum=0.5),
                          backend=backend, batch_size=16, engine=_engine(fused))
        runs.append((trainer, trainer.fit(X, y, epochs=3, verbose=0, callbacks=[decay(trainer)])))
    assert runs[0][1]["engine"] == ["fused", "packed", "packed"]
    _compare(runs, np.float32)


def test_zero_epochs_leaves_the_gradients():
    model = nn.MLP([6, 8, 3], rng=0)
    before = [g.copy() for g in model.gradients()]
    model.gradients()[0][...] = 1.0
    trainer = Trainer(model, backend="numba", batch_size=16)
    trainer.fit(*_blobs(), epochs=0, verbose=0)
    assert trainer.engine_choice[0] == "fused"
    assert np.all(model.gradients()[0] == 1.0)
    assert all(np.array_equal(a, b) for a, b in zip(model.gradients()[1:], before[1:]))


def test_progress_bar_chunks_give_the_same_weights(spy, monkeypatch, capsys):
    # with a bar the epoch's fused steps run in one call per bar update, without it in
    # one call per epoch: the same steps, so bit-identical weights, losses, accuracy
    runs = []
    for tty in (False, True):
        monkeypatch.setattr(train, "stderr_is_tty", lambda: tty)
        trainer, history = _fit("numba", True, spy, batch_size=8, epochs=2, verbose=1)
        runs.append((trainer.model.parameters(), history))
    assert spy == [True, True]
    assert "epoch 2: 100%" in capsys.readouterr().err  # the bar did run
    (params_one, hist_one), (params_chunked, hist_chunked) = runs
    for a, b in zip(params_one, params_chunked):
        np.testing.assert_array_equal(a, b)
    assert hist_one["loss"] == hist_chunked["loss"]
    assert hist_one["accuracy"] == hist_chunked["accuracy"]
