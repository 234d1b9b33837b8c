"""``MLPClassifier`` and ``MLPRegressor``: scikit-learn's parameters, fitted attributes
and methods, trained by ``kernprop.Trainer`` (``_base.py`` has the shared epoch logic
and what differs from scikit-learn's, and why)."""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import r2_score
from sklearn.neural_network import MLPClassifier as _SkMLPClassifier
from sklearn.neural_network import MLPRegressor as _SkMLPRegressor
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import (_check_partial_fit_first_call, check_classification_targets,
                                      type_of_target, unique_labels)
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from ..ops import sigmoid, softmax
from ._base import KERNPROP_CONSTRAINTS, BaseMLP
from ._losses import LogisticLoss

__all__ = ["MLPClassifier", "MLPRegressor"]

_SHARED_PARAMETERS = """
    hidden_layer_sizes : array-like of shape (n_layers - 2,), default=(100,)
        The ith element is the number of neurons in the ith hidden layer.
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        The hidden layers' activation (the output's follows from the task).
    solver : {"adam", "sgd"}, default="adam"
        "lbfgs" raises NotImplementedError.
    alpha : float, default=1e-4
        L2 penalty: ``alpha / 2 * ||W||^2 / n_batch`` added to each batch's loss.
    batch_size : int or "auto", default="auto"
        ``min(200, n_samples)`` for "auto"; clipped to the samples, with a warning.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        The schedule of solver="sgd", as scikit-learn's.
    learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start,
    momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2,
    epsilon, n_iter_no_change
        As in ``sklearn.neural_network``, with its defaults.
    max_fun : int, default=15000
        Taken for compatibility (it bounds lbfgs, which is not implemented).
    backend : {"numba", "cython", "numpy"} or None, default=None
        kernprop's backend; None: the default backend (``kernprop.get_backend()``,
        numba unless set), named to the Trainer: the first fit on a machine whose Numba
        cache is cold compiles its kernels (about a minute on 2 cores; later processes
        load them); "cython" trains at once (no fused step).
    precision : {"fp32", "fp64", "bf16", "bf16x3"}, default="fp32"
        "fp32" computes in float32 whatever the input's dtype; "fp64" in float64, as
        scikit-learn does on float64 input; "bf16", "bf16x3": the Trainer's products.
    n_threads : int or None, default=None
        The CPU backends' threads during fit and predict (None: kernprop's setting).
"""

_ATTRIBUTES = """
    loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_,
    n_iter_, t_, coefs_, intercepts_, n_features_in_, feature_names_in_, n_layers_,
    n_outputs_, out_activation_
        As in ``sklearn.neural_network``: ``coefs_[i]`` (fan_in, fan_out), in the
        computing dtype (float32 for precision="fp32").
    engine_ : str
        kernprop's step engine that ran the last fit ("fused": the whole step of the
        MLP in one compiled call, on numba; see ``kernprop.engines``).
"""


class MLPClassifier(ClassifierMixin, BaseMLP):
    __doc__ = f"""Multi-layer perceptron classifier: ``sklearn.neural_network.MLPClassifier``
    trained by ``kernprop.Trainer``.

    Labels of any kind (ints, floats, strings, a multilabel indicator matrix); softmax
    output for several classes, logistic for two and for multilabel.

    Parameters
    ----------{_SHARED_PARAMETERS}
    Attributes
    ----------
    classes_ : ndarray
        The class labels (for multilabel: ``arange(n_labels)``).{_ATTRIBUTES}
    Examples
    --------
    >>> from kernprop.sklearn import MLPClassifier
    >>> clf = MLPClassifier(hidden_layer_sizes=(64,), random_state=0).fit(X, y)   # doctest: +SKIP
    >>> clf.predict_proba(X[:2])                                                    # doctest: +SKIP
    """

    _parameter_constraints = {**_SkMLPClassifier._parameter_constraints, **KERNPROP_CONSTRAINTS}

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, backend=None, precision="fp32", n_threads=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.precision = precision
        self.n_threads = n_threads

    # --- fit ----------------------------------------------------------------------

    def fit(self, X, y):
        """Fit the model to ``X`` (n_samples, n_features) and labels ``y`` (n_samples,),
        or an indicator matrix (n_samples, n_labels) for multilabel.  Returns self."""
        return self._fit(X, y, incremental=False)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, classes=None):
        """One epoch over ``(X, y)``, continuing from the last fit.  ``classes``, every
        label of all the calls, is required on the first call."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, incremental=True)

    def _multilabel(self):
        return self._label_binarizer.y_type_.startswith("multilabel")

    def _two_logits(self):
        return self.n_outputs_ == 1 and not self._multilabel()

    def _stratify(self):
        return self.n_outputs_ == 1

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the previous "
                                     f"call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        if self._multilabel():
            return X, np.asarray(self._label_binarizer.transform(y), dtype=self._dtype())
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the data, but the data "
                             f"contains only one class: {self.classes_[0]!r}")
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D labels for a classifier fitted on them, got shape {y.shape}")
        return X, np.searchsorted(self.classes_, y).astype(np.int64)

    def _layout(self, y):
        if self._multilabel():
            self.n_outputs_, self.out_activation_ = len(self.classes_), "logistic"
        elif len(self.classes_) == 2:
            self.n_outputs_, self.out_activation_ = 1, "logistic"
        else:
            self.n_outputs_, self.out_activation_ = len(self.classes_), "softmax"

    def _kp_loss(self):
        return LogisticLoss() if self._multilabel() else "cross_entropy"

    def _validation_score(self, X_val, y_val, coefs, intercepts):
        prob = self._output(self._forward(X_val, coefs, intercepts))
        if not np.isfinite(prob).all():
            return np.nan
        if self._multilabel():
            hit = np.all((prob > 0.5) == (y_val > 0.5), axis=1)
        elif self.n_outputs_ == 1:
            hit = (prob[:, 0] > 0.5) == (y_val == 1)
        else:
            hit = prob.argmax(axis=1) == y_val
        return float(np.mean(hit))

    # --- predict ------------------------------------------------------------------

    def _output(self, z):
        backend = self._backend()
        return sigmoid(z, backend=backend) if self.out_activation_ == "logistic" else softmax(z, backend=backend)

    def _probabilities(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        return self._output(self._forward(X)).astype(X.dtype, copy=False)

    def predict(self, X):
        """The predicted labels (n_samples,), or indicator matrix for multilabel."""
        prob = self._probabilities(X)
        return self._label_binarizer.inverse_transform(prob.ravel() if self.n_outputs_ == 1 else prob)

    def predict_proba(self, X):
        """Probability of each class (n_samples, n_classes), in the order of ``classes_``."""
        prob = self._probabilities(X)
        if self.n_outputs_ == 1 and not self._multilabel():
            prob = prob.ravel()
            return np.vstack([1 - prob, prob]).T
        return prob

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        prob = self.predict_proba(X)
        return np.log(prob, out=prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, BaseMLP):
    __doc__ = f"""Multi-layer perceptron regressor: ``sklearn.neural_network.MLPRegressor``
    trained by ``kernprop.Trainer`` (half the squared error; several outputs too).

    Parameters
    ----------
    loss : {{"squared_error"}}, default="squared_error"
        "poisson" raises NotImplementedError.{_SHARED_PARAMETERS}
    Attributes
    ----------{_ATTRIBUTES}
    Examples
    --------
    >>> from kernprop.sklearn import MLPRegressor
    >>> reg = MLPRegressor(hidden_layer_sizes=(64,), random_state=0).fit(X, y)   # doctest: +SKIP
    """

    _parameter_constraints = {**_SkMLPRegressor._parameter_constraints, **KERNPROP_CONSTRAINTS}
    _loss_scale = 0.5  # scikit-learn's loss is half the mean squared error

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, backend=None, precision="fp32",
                 n_threads=None):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.precision = precision
        self.n_threads = n_threads

    @property
    def _grad_scale(self):
        # kernprop's mse gradient 2 (pred - y) / (N k) -> scikit-learn's (pred - y) / N
        return self.n_outputs_ / 2.0

    def fit(self, X, y):
        """Fit the model to ``X`` (n_samples, n_features) and targets ``y`` (n_samples,)
        or (n_samples, n_outputs).  Returns self."""
        return self._fit(X, y, incremental=False)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y):
        """One epoch over ``(X, y)``, continuing from the last fit."""
        return self._fit(X, y, incremental=True)

    def _check_implemented(self):
        super()._check_implemented()
        if self.loss != "squared_error":
            raise NotImplementedError(f"kernprop.sklearn.MLPRegressor trains with loss='squared_error'; "
                                      f"loss={self.loss!r} is not implemented (sklearn.neural_network's has it)")

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=(np.float64, np.float32),
                             reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y.reshape(y.shape[0], -1)

    def _layout(self, y):
        self.n_outputs_, self.out_activation_ = y.shape[1], "identity"

    def _kp_loss(self):
        return "mse"

    def _validation_score(self, X_val, y_val, coefs, intercepts):
        pred = self._forward(X_val, coefs, intercepts)
        if not np.isfinite(pred).all():
            return np.nan
        return float(r2_score(y_val, pred))

    def predict(self, X):
        """The predicted values (n_samples,), or (n_samples, n_outputs)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        out = self._forward(X).astype(X.dtype, copy=False)
        return out.ravel() if out.shape[1] == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
