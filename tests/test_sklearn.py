"""kernprop.sklearn (issue 28): scikit-learn's own estimator checks, accuracy against
sklearn.neural_network on its bundled data sets, composition (Pipeline, GridSearchCV in
worker processes, cross_val_score), pickling and clone, labels of every kind,
partial_fit, the loss curves against scikit-learn's, and the optional extra.

scikit-learn's reference fits run with one BLAS thread: OpenBLAS's threads on a busy
2-core runner made a 2 s digits fit take 45 s (they wait for each other's cores)."""

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn import neural_network as sknn  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits, load_wine, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from kernprop.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _quiet_convergence():
    # short fits on purpose: scikit-learn's ConvergenceWarning is expected, not news
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _standardised(loader, seed=0):
    X, y = loader(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


def _sklearn_fit(cls, X, y, **params):
    with threadpool_limits(1, "blas"):
        return getattr(sknn, cls.__name__)(**params).fit(X, y)


# --- scikit-learn's own checks ---------------------------------------------------------

@parametrize_with_checks([MLPClassifier(), MLPRegressor()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# --- accuracy against sklearn.neural_network ------------------------------------------

@pytest.mark.parametrize("loader", [load_digits, load_wine, load_breast_cancer], ids=lambda f: f.__name__[5:])
def test_accuracy_within_one_point_of_sklearn(loader):
    X_train, X_test, y_train, y_test = _standardised(loader)
    ours, theirs = [], []
    for seed in range(3):
        params = dict(hidden_layer_sizes=(64,), random_state=seed)
        ours.append(MLPClassifier(**params).fit(X_train, y_train).score(X_test, y_test))
        theirs.append(_sklearn_fit(MLPClassifier, X_train, y_train, **params).score(X_test, y_test))
    assert abs(np.mean(ours) - np.mean(theirs)) <= 0.01, (ours, theirs)
    assert min(ours) >= 0.93, ours


@pytest.mark.parametrize("cls, params, rtol", [
    (MLPClassifier, dict(), 1e-5),
    (MLPClassifier, dict(solver="sgd", learning_rate_init=0.05), 1e-5),
    (MLPClassifier, dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5, momentum=0.5), 1e-5),
    (MLPClassifier, dict(activation="tanh", hidden_layer_sizes=(16, 8), solver="sgd", nesterovs_momentum=False), 1e-5),
    (MLPClassifier, dict(activation="logistic"), 1e-5),
    (MLPRegressor, dict(), 1e-5),
    (MLPRegressor, dict(solver="sgd", learning_rate_init=0.01), 1e-5),
    (MLPRegressor, dict(solver="sgd", learning_rate_init=0.01, alpha=0.5, n_outputs=1), 3e-2),
], ids=["adam", "sgd", "invscaling", "tanh-2-layers", "logistic", "reg-adam-3-outputs", "reg-sgd-3-outputs",
        "reg-alpha-1-output"])
def test_loss_curve_is_sklearns(cls, params, rtol):
    """Same seed, no shuffling, float64: the same initial weights and batches, so the
    loss curves agree (the scales of alpha, of the mse gradient, Adam's and momentum's
    updates, the invscaling schedule); a large alpha shows the bias decay (see
    kernprop.sklearn._base)."""
    params = dict(params)
    if cls is MLPClassifier:
        X, y = load_wine(return_X_y=True)
    else:
        X, y = make_regression(300, 8, n_targets=3, noise=1.0, random_state=0)
        y = y / y.std()
        if params.pop("n_outputs", 3) == 1:
            y = y[:, 0]
    X = StandardScaler().fit_transform(X)
    params.update(hidden_layer_sizes=params.get("hidden_layer_sizes", (32,)), random_state=0, shuffle=False,
                  max_iter=20)
    theirs = _sklearn_fit(cls, X, y, **params)
    ours = cls(precision="fp64", **params).fit(X, y)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    assert ours.engine_ == "fused"


def test_binary_is_one_logistic_unit():
    X_train, X_test, y_train, y_test = _standardised(load_breast_cancer)
    clf = MLPClassifier((16,), random_state=0, max_iter=20).fit(X_train, y_train)
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 1
    assert [c.shape for c in clf.coefs_] == [(30, 16), (16, 1)]
    assert clf.engine_ == "fused"
    proba = clf.predict_proba(X_test)
    assert proba.shape == (len(X_test), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(clf.predict(X_test), clf.classes_[proba.argmax(axis=1)])
    # the same initial weights as scikit-learn's (its draws, its order)
    ours = MLPClassifier((16,), random_state=3, max_iter=1, precision="fp64").fit(X_train, y_train)
    first = ours.coefs_[0]
    theirs = _sklearn_fit(MLPClassifier, X_train, y_train, hidden_layer_sizes=(16,), random_state=3, max_iter=1)
    assert np.abs(first - theirs.coefs_[0]).max() < 0.05  # one epoch of ~3 steps apart


# --- composition ----------------------------------------------------------------------

def test_pipeline_grid_search_in_workers_and_cross_val_score():
    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=30, random_state=0))
    assert pipe.fit(X, y).score(X, y) > 0.95
    search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-2]}, cv=2, n_jobs=2)  # workers: loky processes
    search.fit(X, y)
    assert search.best_score_ > 0.85
    assert isinstance(search.best_estimator_[-1], MLPClassifier)
    X, y = make_regression(400, 5, noise=1.0, random_state=0)
    regressor = MLPRegressor(hidden_layer_sizes=(16,), max_iter=50, learning_rate_init=0.01, random_state=0)
    scores = cross_val_score(make_pipeline(StandardScaler(), regressor), X, y / y.std(), cv=3)
    assert scores.min() > 0.8, scores


def test_pickle_and_clone():
    X_train, X_test, y_train, _ = _standardised(load_wine)
    clf = MLPClassifier((8,), max_iter=30, random_state=0, n_threads=1).fit(X_train, y_train)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X_test), clf.predict_proba(X_test))
    restored.partial_fit(X_train, y_train)  # training goes on from the pickle
    fresh = clone(clf)
    assert fresh.get_params() == clf.get_params()
    assert not hasattr(fresh, "coefs_")


# --- labels, partial_fit, input validation --------------------------------------------

@pytest.mark.parametrize("kind", ["int", "float", "str"])
def test_labels_of_any_kind(kind):
    X_train, X_test, y_train, y_test = _standardised(load_wine)
    convert = {"int": lambda y: y, "float": lambda y: y.astype(np.float64),
               "str": lambda y: np.array(["cat", "dog", "emu"])[y]}[kind]
    clf = MLPClassifier((16,), max_iter=50, learning_rate_init=0.01, random_state=0).fit(X_train, convert(y_train))
    pred = clf.predict(X_test)
    assert pred.dtype == convert(y_test).dtype
    assert set(pred) <= set(convert(y_test)) and list(clf.classes_) == sorted(set(convert(y_train)))
    assert clf.score(X_test, convert(y_test)) > 0.9
    assert clf.predict_log_proba(X_test).shape == (len(X_test), 3)


def test_multilabel_indicator():
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    Y = np.stack([y % 2 == 0, y >= 5, y == 3], axis=1).astype(int)
    clf = MLPClassifier((32,), max_iter=30, random_state=0).fit(X, Y)
    assert clf.out_activation_ == "logistic" and list(clf.classes_) == [0, 1, 2]
    pred = clf.predict(X)
    assert pred.shape == Y.shape and set(np.unique(pred)) <= {0, 1}
    assert clf.predict_proba(X).shape == Y.shape
    assert clf.score(X, Y) > 0.8  # subset accuracy


def test_partial_fit_with_classes():
    X_train, X_test, y_train, y_test = _standardised(load_digits)
    clf = MLPClassifier((32,), learning_rate_init=0.01, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X_train[:100], y_train[:100])
    first = y_train < 5  # the first call sees half the classes
    clf.partial_fit(X_train[first], y_train[first], classes=np.arange(10))
    assert list(clf.classes_) == list(range(10)) and clf.n_iter_ == 1
    t = clf.t_
    for _ in range(10):
        clf.partial_fit(X_train, y_train)
    assert clf.t_ == t + 10 * len(X_train) and len(clf.loss_curve_) == 11
    assert clf.score(X_test, y_test) > 0.9
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(X_train[:5], np.full(5, 11))
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")


def test_regressor_partial_fit_and_outputs():
    X, y = make_regression(300, 6, n_targets=2, noise=0.5, random_state=0)
    X, y = StandardScaler().fit_transform(X), y / y.std()
    reg = MLPRegressor(hidden_layer_sizes=(32,), random_state=0, learning_rate_init=0.01)
    for _ in range(30):
        reg.partial_fit(X, y)
    assert reg.predict(X).shape == (300, 2) and reg.predict(X).dtype == np.float64
    assert reg.score(X, y) > 0.9
    assert MLPRegressor(hidden_layer_sizes=(8,), max_iter=5).fit(X, y[:, 0]).predict(X).shape == (300,)


def test_one_dimensional_X_gets_sklearns_reshape_advice():
    X, y = load_wine(return_X_y=True)
    with pytest.raises(ValueError, match="Reshape your data"):
        MLPClassifier().fit(X[:, 0], y)
    clf = MLPClassifier((4,), max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="Reshape your data"):
        clf.predict(X[0])


def test_early_stopping_and_adaptive():
    X_train, X_test, y_train, y_test = _standardised(load_digits)
    clf = MLPClassifier((32,), early_stopping=True, learning_rate_init=0.01, random_state=0,
                        n_iter_no_change=3).fit(X_train, y_train)
    assert clf.n_iter_ < 200 and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_) and clf.best_loss_ is None
    assert clf.score(X_test, y_test) > 0.9
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        clf.partial_fit(X_train, y_train)
    sgd = MLPClassifier((32,), solver="sgd", learning_rate="adaptive", learning_rate_init=0.5, tol=0.05,
                        n_iter_no_change=2, random_state=0, max_iter=60).fit(X_train, y_train)
    assert sgd._learning_rate < 0.5  # divided by 5 at least once
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        warnings.simplefilter("always", ConvergenceWarning)
        MLPClassifier((8,), max_iter=2).fit(X_train, y_train)


def test_kernprop_settings():
    X_train, X_test, y_train, y_test = _standardised(load_wine)
    for precision, dtype in (("fp32", np.float32), ("fp64", np.float64), ("bf16", np.float32)):
        clf = MLPClassifier((16,), max_iter=50, learning_rate_init=0.01, random_state=0,
                            precision=precision).fit(X_train, y_train)
        assert clf.coefs_[0].dtype == dtype and clf.score(X_test, y_test) > 0.9
    numpy = MLPClassifier((16,), max_iter=20, random_state=0, backend="numpy", n_threads=1).fit(X_train, y_train)
    fused = MLPClassifier((16,), max_iter=20, random_state=0).fit(X_train, y_train)
    assert numpy.engine_ != "fused" and fused.engine_ == "fused"
    np.testing.assert_allclose(numpy.loss_curve_, fused.loss_curve_, rtol=1e-4)
    with pytest.raises(NotImplementedError, match="lbfgs"):
        MLPClassifier(solver="lbfgs").fit(X_train, y_train)
    with pytest.raises(NotImplementedError, match="poisson"):
        MLPRegressor(loss="poisson").fit(X_train, y_train)
    with pytest.raises(ValueError, match="backend"):
        MLPClassifier(backend="tpu").fit(X_train, y_train)


# --- the optional extra ---------------------------------------------------------------

def _python(code):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_import_kernprop_never_imports_sklearn():
    done = _python("import sys, kernprop; kernprop.Trainer; kernprop.nn; kernprop.data; "
                   "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_sklearn_one_line_naming_the_extra():
    block = "import sys; sys.modules['sklearn'] = None; "
    train = _python(block + "from kernprop.cli import main; sys.exit(main(['train', '--epochs', '1']))")
    assert train.returncode == 2
    assert train.stderr.strip().count("\n") == 0 and "pip install kernprop[sklearn]" in train.stderr
    imported = _python(block + "import kernprop.sklearn")
    assert imported.returncode == 1 and "pip install kernprop[sklearn]" in imported.stderr
