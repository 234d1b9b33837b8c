"""The Trainer, optimizers, checkpoints and data loading: determinism, agreement across
backends, checkpoint round trips and refusals, input checks, a short digits run."""

import json

import numpy as np
import pytest
from conftest import assert_close

import kernprop
from kernprop import nn, optim
from kernprop.backends import status as backend_status
from kernprop.data import load_digits, load_npz, train_test_split
from kernprop.train import FORMAT_VERSION, Trainer


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _blobs(n=96, features=6, classes=3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, features))
    y = rng.integers(0, classes, n)
    X = (centers[y] + rng.normal(size=(n, features))).astype(dtype)
    return X, y


def _trainer(backend, optimizer=None, dtype=np.float32, seed=0, **kwargs):
    model = nn.MLP([6, 8, 3], rng=seed, dtype=dtype)
    return Trainer(model, optimizer=optimizer or optim.Adam(1e-2), backend=backend, batch_size=16,
                   seed=seed, **kwargs)


OPTIMIZERS = {
    "sgd": lambda: optim.SGD(0.1),
    "momentum-nesterov-wd": lambda: optim.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: optim.Adam(1e-2),
    "adamw": lambda: optim.Adam(1e-2, weight_decay=0.1, decoupled=True),
}


# --- determinism and agreement -------------------------------------------------------


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_same_seed_gives_bit_identical_weights(backend, opt):
    X, y = _blobs()
    runs = []
    for _ in range(2):
        trainer = _trainer(backend, OPTIMIZERS[opt]())
        trainer.fit(X, y, epochs=3, verbose=0)
        runs.append(trainer.model.parameters())
    for a, b in zip(*runs):
        assert np.array_equal(a, b)
    other = _trainer(backend, OPTIMIZERS[opt](), seed=1)
    other.fit(X, y, epochs=3, verbose=0)
    assert not np.array_equal(other.model.parameters()[0], runs[0][0])


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_backends_agree_with_the_reference(backend, opt):
    X, y = _blobs(dtype=np.float64)
    results = {}
    for name in ("numpy", backend):
        trainer = _trainer(name, OPTIMIZERS[opt](), dtype=np.float64, label_smoothing=0.05)
        history = trainer.fit(X, y, epochs=2, verbose=0)
        results[name] = (trainer.model.parameters(), history["loss"])
    for got, want in zip(results[backend][0], results["numpy"][0]):
        assert_close(got, want, rtol=1e-9, name=f"{backend} parameters after training")
    assert results[backend][1] == pytest.approx(results["numpy"][1], rel=1e-9)


@pytest.mark.cudasim
def test_cuda_fit_keeps_parameters_on_device_and_matches_numpy():
    # Runs on a GPU, or on the simulator (NUMBA_ENABLE_CUDASIM=1; small, as it is slow).
    state = backend_status("cuda")
    if not state.available:
        pytest.skip(f"backend cuda unavailable: {state.reason}")
    X, y = _blobs(n=16, dtype=np.float64)
    results = {}
    for name in ("numpy", "cuda"):
        trainer = _trainer(name, optim.Adam(1e-2), dtype=np.float64, label_smoothing=0.1)
        trainer.batch_size = 8
        history = trainer.fit(X, y, epochs=2, verbose=0)
        results[name] = trainer, history
    (ref, ref_history), (gpu, gpu_history) = results["numpy"], results["cuda"]
    # After fit the model holds host arrays again, with the trained values.
    assert all(isinstance(p, np.ndarray) for p in gpu.model.parameters())
    assert all(isinstance(a, np.ndarray) for arrays in gpu.optimizer.state.values() for a in arrays)
    for got, want in zip(gpu.model.parameters(), ref.model.parameters()):
        assert_close(got, want, rtol=1e-9, name="cuda parameters after training")
    assert gpu_history["loss"] == pytest.approx(ref_history["loss"], rel=1e-9)
    assert gpu_history["accuracy"] == ref_history["accuracy"]


# --- fit / evaluate / predict ----------------------------------------------------------


def test_history_evaluate_predict(backend):
    X, y = _blobs()
    trainer = _trainer(backend)
    history = trainer.fit(X, y, epochs=4, validation_data=(X[:32], y[:32]), verbose=0)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "samples_per_s", "lr", "engine",
                            "precision"}
    assert all(len(v) == 4 for v in history.values())
    assert history["loss"][-1] < history["loss"][0]
    assert all(s > 0 for s in history["samples_per_s"])
    result = trainer.evaluate(X[:32], y[:32])
    assert result["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-6)
    assert result["accuracy"] == history["val_accuracy"][-1]
    proba = trainer.predict_proba(X)
    assert proba.shape == (96, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    labels = trainer.predict(X)
    assert labels.dtype == np.int64 and np.array_equal(labels, proba.argmax(1))
    assert np.mean(labels == y) == pytest.approx(trainer.evaluate(X, y)["accuracy"])


@pytest.mark.parametrize("shuffle", [False, True])
def test_training_accuracy_and_loss_match_evaluate_when_weights_stay(shuffle):
    # lr = 0: the weights never move, so the running accuracy and loss of an epoch
    # (72 steps of 7 rows, the last one short) equal those of evaluate.
    X, y = _blobs(n=500)
    trainer = Trainer(nn.MLP([6, 8, 3], rng=0), optimizer=optim.SGD(0.0), backend="numpy", batch_size=7)
    history = trainer.fit(X, y, epochs=1, shuffle=shuffle, verbose=0)
    result = trainer.evaluate(X, y)
    assert history["accuracy"][0] == result["accuracy"]
    assert history["loss"][0] == pytest.approx(result["loss"], rel=1e-5)


def test_cross_entropy_options_pass_through(backend):
    X, y = _blobs()
    y = y.copy()
    y[::5] = -1
    trainer = _trainer(backend, reduction="sum", ignore_index=-1, label_smoothing=0.1,
                       weight=np.array([1.0, 2.0, 0.5]))
    out = trainer.model.forward(X)
    want = kernprop.cross_entropy(out, y, "sum", -1, 0.1, np.array([1.0, 2.0, 0.5], np.float32), backend="numpy")
    assert trainer.evaluate(X, y)["loss"] == pytest.approx(float(want) / X.shape[0], rel=1e-5)
    keep = y != -1
    assert trainer.evaluate(X, y)["accuracy"] == pytest.approx(np.mean(out.argmax(1)[keep] == y[keep]))
    trainer.fit(X, y, epochs=2, verbose=0)


def test_mse_regression(backend):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(128, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)
    trainer = Trainer(nn.MLP([3, 1], rng=0), "mse", optim.SGD(0.1), backend=backend, batch_size=16)
    history = trainer.fit(X, y, epochs=30, verbose=0)
    assert "accuracy" not in history
    assert history["loss"][-1] < 1e-4
    assert trainer.predict(X).shape == (128, 1)
    with pytest.raises(ValueError, match="predict_proba"):
        trainer.predict_proba(X)


def test_callbacks_see_logs_and_can_stop():
    X, y = _blobs()
    seen = []
    trainer = _trainer("numpy")
    history = trainer.fit(X, y, epochs=10, verbose=0, callbacks=[lambda e, logs: seen.append((e, logs)) or e == 2])
    assert [e for e, _ in seen] == [0, 1, 2]
    assert len(history["loss"]) == 3 and seen[0][1]["loss"] == history["loss"][0]


def test_learning_rate_schedule_and_set_lr():
    X, y = _blobs()
    opt = optim.SGD(1.0, lr_schedule=lambda epoch: 0.1 / (epoch + 1))
    history = _trainer("numpy", opt).fit(X, y, epochs=3, verbose=0)
    assert history["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    opt.set_lr(0.5)
    assert opt.lr == 0.5
    with pytest.raises(ValueError, match="lr"):
        opt.set_lr(-1)


def test_backend_comes_from_trainer_then_model_then_default():
    model = nn.MLP([6, 3], rng=0)
    assert Trainer(model).backend_name() == kernprop.get_backend()
    model.backend = "numpy"
    assert Trainer(model).backend_name() == "numpy"
    assert Trainer(model, backend=kernprop.available_backends()[-1]).backend_name() == kernprop.available_backends()[-1]


def test_float64_model_and_float32_data(backend):
    X, y = _blobs()
    trainer = _trainer(backend, dtype=np.float64)
    trainer.fit(X, y, epochs=1, verbose=0)  # X is cast to the model's dtype once
    assert trainer.model.parameters()[0].dtype == np.float64


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_fit_equals_a_hand_written_loop(backend, opt):
    # fit packs the parameters into one buffer for a single optimizer call per step;
    # the update is elementwise, so it matches stepping each array on its own.
    X, y = _blobs(dtype=np.float64)
    trainer = _trainer(backend, OPTIMIZERS[opt](), dtype=np.float64)
    arrays = trainer.model.parameters()
    trainer.fit(X, y, epochs=2, shuffle=False, verbose=0)
    assert all(a is b for a, b in zip(arrays, trainer.model.parameters()))  # same arrays, updated

    model, optimizer = nn.MLP([6, 8, 3], rng=0, dtype=np.float64), OPTIMIZERS[opt]()
    model.backend = backend
    for _ in range(2):
        for start in range(0, 96, 16):
            out = model.forward(X[start:start + 16])
            _, dout = kernprop.cross_entropy_with_grad(out, y[start:start + 16], backend=backend)
            model.backward(dout)
            optimizer.step(model.parameters(), model.gradients(), nn.validated_ops(backend))
    for got, want in zip(trainer.model.parameters(), model.parameters()):
        assert_close(got, want, rtol=1e-12, name="parameters")
    for key, value in optimizer.state_dict().items():
        got = trainer.optimizer.state_dict()[key]
        assert got.shape == value.shape, key
        if value.dtype.kind == "f":
            assert_close(got, value, rtol=1e-12, name=key)


@pytest.mark.parametrize("opt", ["momentum-nesterov-wd", "adamw"])
def test_packed_and_layerwise_engines_train_identically(backend, opt):
    # big models skip packing (a gradient copy per step costs more than the optimizer
    # calls it saves); the update is elementwise, so both give the same bits
    if backend == "cuda":
        pytest.skip("the cuda backend trains with engine 'device' alone")
    X, y = _blobs(dtype=np.float32)
    runs = []
    for engine in ("packed", "layerwise"):
        trainer = _trainer(backend, OPTIMIZERS[opt](), engine=engine)
        history = trainer.fit(X, y, epochs=2, verbose=0)
        assert history["engine"] == [engine, engine]
        runs.append((trainer.model.parameters(), trainer.optimizer.state_dict(), history["loss"]))
    (params_a, state_a, loss_a), (params_b, state_b, loss_b) = runs
    for a, b in zip(params_a, params_b):
        np.testing.assert_array_equal(a, b)
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key])
    assert loss_a == loss_b


def test_every_engine_matches_the_layerwise_engine():
    # bit-exact where the arithmetic is the same (packed), within float tolerance where
    # the sums round in another order (fused)
    X, y = _blobs(dtype=np.float64)
    results = {}
    for engine in ("layerwise", "packed", "fused"):
        if engine == "fused" and "numba" not in kernprop.available_backends():
            continue
        trainer = _trainer("numba" if engine == "fused" else "numpy", OPTIMIZERS["adamw"](), np.float64,
                           engine=engine)
        history = trainer.fit(X, y, epochs=2, verbose=0)
        assert history["engine"] == [engine] * 2 and trainer.engine_choice == (engine, "asked for by name")
        results[engine] = trainer.model.parameters()
    for engine, params in results.items():
        for got, want in zip(params, results["layerwise"]):
            if engine == "packed":
                np.testing.assert_array_equal(got, want)
            else:
                assert_close(got, want, rtol=1e-9, name=f"{engine} parameters")


def test_engine_names_are_checked():
    with pytest.raises(ValueError, match="engine must be one of"):
        _trainer("numpy", engine="turbo")
    X, y = _blobs()
    with pytest.raises(ValueError, match="engine 'fused' runs on the numba backend"):
        _trainer("numpy", engine="fused").fit(X, y, verbose=0)
    with pytest.raises(ValueError, match="engine 'device' runs on the cuda backend"):
        _trainer("numpy", engine="device").fit(X, y, verbose=0)


# --- optimizers ------------------------------------------------------------------------


def test_optimizers_follow_torch_formulas(backend):
    rng = np.random.default_rng(3)
    p0, g = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    k = nn.raw_kernels(backend)

    p = p0.copy()
    sgd = optim.SGD(0.1, momentum=0.9, weight_decay=0.01)
    sgd.step([p], [g], k)
    sgd.step([p], [g], k)
    want, v = p0.copy(), np.zeros_like(p0)
    for _ in range(2):
        d = g + 0.01 * want
        v = 0.9 * v + d
        want = want - 0.1 * v
    assert_close(p, want, name="SGD momentum + weight decay")

    p = p0.copy()
    adam = optim.Adam(0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, decoupled=True)
    for _ in range(3):
        adam.step([p], [g], k)
    want, m, s = p0.copy(), 0, 0
    for t in range(1, 4):
        want = want * (1 - 0.01 * 0.1)
        m = 0.8 * m + 0.2 * g
        s = 0.9 * s + 0.1 * g * g
        want = want - 0.01 * (m / (1 - 0.8**t)) / (np.sqrt(s / (1 - 0.9**t)) + 1e-6)
    assert_close(p, want, name="AdamW")


def test_optimizer_state_dict_round_trip():
    p, g = np.ones((2, 2)), np.full((2, 2), 0.5)
    adam = optim.Adam(0.1)
    adam.step([p], [g])
    state = adam.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    fresh = optim.Adam()
    fresh.load_state_dict(state)
    assert fresh.steps == 1 and fresh.lr == 0.1
    assert np.array_equal(fresh.state["exp_avg"][0], adam.state["exp_avg"][0])
    q = p.copy()
    adam.step([p], [g])
    fresh.step([q], [g])
    assert np.array_equal(p, q)
    with pytest.raises(ValueError, match="not 'sgd'"):
        optim.SGD(0.1).load_state_dict(state)


def test_optimizer_arguments_are_checked():
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD(0.1, momentum=1.5)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(betas=(0.9,))
    with pytest.raises(TypeError, match="lr_schedule"):
        optim.Adam(lr_schedule=0.1)


# --- checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_checkpoint_round_trip_is_bit_exact(tmp_path, opt):
    X, y = _blobs()
    trainer = _trainer("numpy", OPTIMIZERS[opt](), label_smoothing=0.1, weight=np.array([1.0, 2.0, 3.0]))
    trainer.fit(X, y, epochs=2, verbose=0)
    path = trainer.save(tmp_path / "model.npz")
    loaded = Trainer.load(path)
    for a, b in zip(trainer.model.parameters(), loaded.model.parameters()):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert loaded.model.config() == trainer.model.config()
    assert loaded.loss.kwargs() == trainer.loss.kwargs()
    assert np.array_equal(loaded.loss.weight, trainer.loss.weight)
    assert loaded.batch_size == trainer.batch_size
    for key, value in trainer.optimizer.state_dict().items():
        assert np.array_equal(loaded.optimizer.state_dict()[key], value), key
    # Training on from the checkpoint is the same as never having stopped.
    trainer.fit(X, y, epochs=2, verbose=0)
    loaded.fit(X, y, epochs=2, verbose=0)
    for a, b in zip(trainer.model.parameters(), loaded.model.parameters()):
        assert np.array_equal(a, b)
    with np.load(path, allow_pickle=False) as z:
        assert int(z["format_version"]) == FORMAT_VERSION
        assert [json.loads(s)["type"] for s in z["architecture"]] == ["Linear", "ReLU", "Linear"]


def test_checkpoint_of_a_single_layer(tmp_path):
    X, y = _blobs()
    trainer = Trainer(nn.Linear(6, 3, rng=0), optimizer=optim.SGD(0.1), backend="numpy")
    trainer.fit(X, y, epochs=1, verbose=0)
    loaded = Trainer.load(trainer.save(tmp_path / "linear.npz"))
    assert isinstance(loaded.model, nn.Linear)
    assert np.array_equal(loaded.model.weight, trainer.model.weight)


@pytest.fixture
def checkpoint(tmp_path):
    X, y = _blobs()
    trainer = _trainer("numpy")
    trainer.fit(X, y, epochs=1, verbose=0)
    return trainer.save(tmp_path / "ok.npz")


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.9, 0.999])
def test_truncated_checkpoint_is_refused(checkpoint, tmp_path, keep):
    data = open(checkpoint, "rb").read()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="checkpoint"):
        Trainer.load(bad)


def _rewrite(path, out, change):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(out, **arrays)
    return out


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: a["param.0"].__setitem__((0, 0), 42.0), "checksum"),
        (lambda a: a.__setitem__("architecture", np.array(['{"type": "Linear"}'])), "architecture: a Linear config"),
        (lambda a: a.pop("param.1"), "checksum"),
        (lambda a: a.__setitem__("format_version", np.array(99)), "format version 99"),
        (lambda a: a.pop("checksum"), "missing 'checksum'"),
        (lambda a: a.__setitem__("optimizer.exp_avg.0", np.zeros(3)), r"optimizer.exp_avg.0 holds float64 of shape \(3,\)"),
    ],
    ids=["weight", "architecture", "missing-param", "version", "no-checksum", "optimizer-state"],
)
def test_tampered_checkpoint_is_refused(checkpoint, tmp_path, change, message):
    bad = _rewrite(checkpoint, tmp_path / "tampered.npz", change)
    with pytest.raises(ValueError, match=message):
        Trainer.load(bad)


def test_checkpoint_with_consistent_checksum_but_bad_content_is_refused(checkpoint, tmp_path):
    # Someone who recomputes the checksum still cannot load shapes that do not fit.
    from kernprop.checkpoint import checksum as _checksum

    def change(arrays):
        arrays["param.0"] = np.zeros((2, 2), np.float32)
        arrays.pop("checksum")
        arrays["checksum"] = np.array(_checksum(arrays))

    bad = _rewrite(checkpoint, tmp_path / "reshaped.npz", change)
    with pytest.raises(ValueError, match="param.0"):
        Trainer.load(bad)


def test_checkpoint_claiming_a_huge_layer_is_refused_before_allocating(checkpoint, tmp_path):
    from kernprop.checkpoint import checksum as _checksum

    def change(arrays):
        arch = [json.loads(s) for s in arrays["architecture"]]
        arch[0]["in_features"] = 10**12
        arrays["architecture"] = np.array([json.dumps(c) for c in arch])
        arrays.pop("checksum")
        arrays["checksum"] = np.array(_checksum(arrays))

    bad = _rewrite(checkpoint, tmp_path / "huge.npz", change)
    with pytest.raises(ValueError, match=r"param.0 holds float32 of shape \(6, 8\), the format needs .* \(1000000000000, 8\)"):
        Trainer.load(bad)


def test_pickled_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "pickle.npz"
    np.savez(bad, format_version=np.array(1), architecture=np.array([{"type": "Linear"}], dtype=object))
    with pytest.raises(ValueError, match="checkpoint"):
        Trainer.load(bad)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="checkpoint"):
        Trainer.load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        Trainer.load(tmp_path / "missing.npz")


# --- input checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "X,y,error,match",
    [
        (np.zeros(96, np.float32), None, ValueError, "X must be 2-D"),
        (np.zeros((96, 6), np.int64), None, TypeError, "X must have dtype float32 or float64"),
        (np.zeros((96, 5), np.float32), None, ValueError, "X has 5 features, the model expects 6"),
        (np.full((96, 6), np.nan, np.float32), None, ValueError, "X must be finite"),
        ([[0.0] * 6] * 95 + [[0.0]], None, TypeError, "X must be an array-like of numbers"),
        (None, np.zeros(95, np.int64), ValueError, "y must have one entry per row of X"),
        (None, np.full(96, 3), ValueError, "y\\[0\\] = 3 is out of range"),
        (None, np.full(96, -1), ValueError, "y\\[0\\] = -1 is out of range"),
        (None, np.zeros(96, np.float32), TypeError, "y must hold integer class labels"),
        (None, np.zeros((96, 1), np.int64), ValueError, "y must be 1-D"),
    ],
)
def test_fit_checks_its_inputs_once_and_names_them(X, y, error, match):
    X0, y0 = _blobs()
    trainer = _trainer("numpy")
    with pytest.raises(error, match=match):
        trainer.fit(X0 if X is None else X, y0 if y is None else y, epochs=1, verbose=0)


def test_validation_data_and_arguments_are_checked():
    X, y = _blobs()
    trainer = _trainer("numpy")
    with pytest.raises(ValueError, match="validation_data\\[1\\]\\[0\\] = 7"):
        trainer.fit(X, y, validation_data=(X, np.full(96, 7)), verbose=0)
    with pytest.raises(ValueError, match="validation_data must be a pair"):
        trainer.fit(X, y, validation_data=X, verbose=0)
    with pytest.raises(ValueError, match="epochs"):
        trainer.fit(X, y, epochs=-1)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(nn.MLP([6, 3], rng=0), batch_size=0)
    with pytest.raises(ValueError, match="unknown backend"):
        Trainer(nn.MLP([6, 3], rng=0), backend="tpu")
    with pytest.raises(ValueError, match="X must be 2-D"):
        trainer.predict(X[0])


# --- data ------------------------------------------------------------------------------


def test_load_digits(digits):
    (X, y), (Xt, yt) = digits
    assert X.dtype == Xt.dtype == np.float32 and X.shape[1] == 64
    assert X.shape[0] + Xt.shape[0] == 1797 and Xt.shape[0] == pytest.approx(1797 * 0.2, abs=10)
    assert 0.0 <= X.min() and X.max() <= 1.0 and X.max() == 1.0
    assert y.dtype == np.int64 and set(np.unique(yt)) == set(range(10))
    (X2, _), _ = load_digits()
    assert np.array_equal(X, X2)


def test_train_test_split_is_seeded_and_disjoint():
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20) % 2
    (a, _), (b, _) = train_test_split(X, y, 0.25, seed=1)
    (a2, _), _ = train_test_split(X, y, 0.25, seed=1)
    assert np.array_equal(a, a2) and len(a) + len(b) == 20
    assert not set(a[:, 0]) & set(b[:, 0])


def test_load_npz(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, X=np.ones((4, 3)), y=np.array([0, 1, 0, 1]))
    X, y = load_npz(good)
    assert X.dtype == np.float64 and y.dtype == np.int64
    np.savez(tmp_path / "noy.npz", X=np.ones((4, 3)))
    with pytest.raises(ValueError, match="no array 'y'"):
        load_npz(tmp_path / "noy.npz")
    np.savez(tmp_path / "short.npz", X=np.ones((4, 3)), y=np.zeros(3))
    with pytest.raises(ValueError, match="one entry per row"):
        load_npz(tmp_path / "short.npz")
    np.savez(tmp_path / "flat.npz", X=np.ones(4), y=np.zeros(4))
    with pytest.raises(ValueError, match="X must be a non-empty 2-D"):
        load_npz(tmp_path / "flat.npz")
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(ValueError, match="single array"):
        load_npz(tmp_path / "single.npy")
    np.savez(tmp_path / "obj.npz", X=np.array([object()]), y=np.zeros(1))
    with pytest.raises(ValueError, match="obj.npz"):
        load_npz(tmp_path / "obj.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")


# --- a real run ------------------------------------------------------------------------


def test_digits_reaches_97_percent(digits):
    # The default backend (numba), the configuration of `kernprop train` at 12 epochs.
    (X, y), (Xt, yt) = digits
    epochs = 12
    opt = optim.Adam(1e-2, lr_schedule=lambda e: 1e-2 * 0.5 * (1 + np.cos(np.pi * e / epochs)))
    trainer = Trainer(nn.MLP([64, 128, 10], rng=0), optimizer=opt, batch_size=32, label_smoothing=0.1)
    threads = kernprop.get_num_threads()
    kernprop.set_num_threads(1)  # as `kernprop train` runs this small model
    try:
        trainer.fit(X, y, epochs=epochs, verbose=0)
    finally:
        kernprop.set_num_threads(threads)
    assert trainer.evaluate(Xt, yt)["accuracy"] >= 0.97
