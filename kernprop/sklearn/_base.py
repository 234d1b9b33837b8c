"""What ``MLPClassifier`` and ``MLPRegressor`` share: the parameters, the initialisation,
the epoch logic of scikit-learn's stochastic solvers around one ``Trainer.fit``, and
the forward pass of ``predict``.

The training loop is the Trainer's: one ``Trainer.fit(X, y, epochs=max_iter)`` per
``fit`` (``epochs=1`` per ``partial_fit``), on the engine its rule picks (the fused
small-MLP step on numba for the common sizes), with one callback after every epoch that
does what scikit-learn does between epochs (``_fit_stochastic``): ``loss_curve_``, the
``tol`` / ``n_iter_no_change`` test on the training loss or, with ``early_stopping``, on
the validation score (keeping the best weights), ``learning_rate="invscaling"`` and
``"adaptive"`` (the learning rate is the one setting the running engine reads at every
step), and the ``ConvergenceWarning``.

How scikit-learn's model maps onto kernprop's
---------------------------------------------
- Initialisation: scikit-learn's, drawn from ``random_state`` in its order (Glorot
  uniform, bound ``sqrt(6 / (fan_in + fan_out))``, ``sqrt(2 / ...)`` for logistic, biases
  alike), so a seed starts from the same weights as ``sklearn.neural_network``.
- Losses: multiclass is softmax cross-entropy and regression half the mean squared
  error, as there.  A binary problem trains as a two-logit softmax whose logits start
  as ``-d/2, +d/2`` (``d``: scikit-learn's single logistic unit) and stay opposite, so
  ``sigmoid(d) = softmax`` throughout and the loss is the binary log-loss; the fused
  step runs it.  ``coefs_[-1]`` holds ``d``'s weights, as scikit-learn's (n, 1).  The
  hidden layers get scikit-learn's gradients, the output layer takes steps twice as
  long (each of its two columns moves as ``d`` would).  Multilabel targets train with
  independent logistic outputs (``LogisticLoss``), layer by layer.
- ``alpha``: scikit-learn adds ``alpha / 2 * ||W||^2 / n_batch`` to each batch's loss,
  i.e. ``alpha / n_batch * W`` to the gradient.  kernprop's optimizers take it as
  ``weight_decay = alpha / batch_size`` (coupled, as ``torch.optim``), applied to the
  biases too (kernprop decays every parameter) and to an epoch's shorter last batch at
  the full batch's rate; at scikit-learn's ``alpha=1e-4`` and batch 200 a bias shrinks
  by 5e-7 of itself per step.  ``loss_`` adds the penalty of the epoch's last weights
  once per batch, as scikit-learn sums it over the batches' weights.
- Measured against scikit-learn at ``precision="fp64"``, ``shuffle=False`` (same
  seed, so the same weights and batches): the loss curves of multiclass and regression
  fits agree to about 1e-6 relative with adam, sgd, momentum, invscaling; 1e-2 with
  ``alpha=1``; a binary fit's differs by the output layer's step (above).
- Regression: kernprop's ``mse`` gradient is ``2 (pred - y) / (N k)`` for k outputs,
  scikit-learn's ``(pred - y) / N``; the learning rate (SGD), ``epsilon`` (Adam) and the
  weight decay are scaled by ``k / 2`` so that the updates are scikit-learn's.
- Adam: ``torch.optim.Adam``'s update, which adds ``epsilon`` to the bias-corrected
  ``sqrt(v)``; scikit-learn adds it before the correction (a difference of
  ``epsilon * sqrt(1 - beta_2**t)`` against ``sqrt(v)``).  SGD momentum: the same
  updates at a constant learning rate (scikit-learn keeps ``lr`` inside the velocity,
  so they differ slightly right after an ``invscaling`` / ``adaptive`` change).
- Computation: float32 by default (``precision="fp32"``), whatever the input's dtype;
  ``precision="fp64"`` computes in float64 as scikit-learn does on float64 input;
  ``"bf16"`` and ``"bf16x3"`` are the Trainer's product precisions.  Predictions and
  probabilities are returned in the input's dtype.
- Not implemented: ``solver="lbfgs"`` and ``MLPRegressor(loss="poisson")`` raise
  ``NotImplementedError``; ``sample_weight``; sparse input (a dense array is asked
  for, with scikit-learn's message).
"""

from __future__ import annotations

import contextlib
import warnings
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from .. import nn
from ..backends import get_backend, get_num_threads, set_num_threads
from ..ops import linear
from ..optim import SGD, Adam
from ..train import Trainer

__all__ = ["BaseMLP", "PRECISIONS", "CPU_BACKENDS"]

PRECISIONS = ("fp32", "bf16x3", "bf16", "fp64")
CPU_BACKENDS = ("numba", "cython", "numpy")
# scikit-learn's hidden activations -> kernprop's fused activation (None: identity)
_HIDDEN = {"identity": None, "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_LAYERS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}

KERNPROP_CONSTRAINTS = {
    "backend": [None, StrOptions(set(CPU_BACKENDS))],
    "precision": [StrOptions(set(PRECISIONS))],
    "n_threads": [None, Interval(Integral, 1, None, closed="left")],
}


@contextlib.contextmanager
def threads(n):
    """The CPU backends' thread count set to ``n`` inside the block (None: unchanged)."""
    if n is None:
        yield
        return
    before = get_num_threads()
    set_num_threads(int(n))
    try:
        yield
    finally:
        set_num_threads(before)


class BaseMLP(BaseEstimator):
    """Shared by the two estimators (see the module docstring).  A subclass defines
    ``_validate_input`` (returns X and the Trainer's targets), ``_layout`` (sets
    ``n_outputs_``, ``out_activation_``; returns kernprop's output width), ``_kp_loss``,
    ``_validation_score`` and the scales ``_grad_scale`` / ``_loss_scale``."""

    _grad_scale = 1.0  # scikit-learn's gradient = kernprop's loss gradient x this
    _loss_scale = 1.0  # scikit-learn's loss = kernprop's loss x this

    # --- settings -----------------------------------------------------------------

    def _dtype(self):
        return np.float64 if self.precision == "fp64" else np.float32

    def _backend(self):
        # Named to the Trainer, so that every fit of the estimator runs where the last
        # did: left unnamed, a first fit on a machine whose Numba cache is cold would run
        # on cython while numba compiles in the background (kernprop.first_run), and a
        # later fit of the same seed on numba, with other rounding
        return self.backend if self.backend is not None else get_backend()

    def _matmul_precision(self):
        return "fp32" if self.precision == "fp64" else self.precision

    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if np.any(np.array(sizes) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _check_solver(self):
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    def _check_implemented(self):
        if self.solver == "lbfgs":
            raise NotImplementedError(
                "kernprop.sklearn trains with solver='adam' or 'sgd'; solver='lbfgs' is not implemented "
                "(sklearn.neural_network's estimators have it)")

    # --- parameters in scikit-learn's layout and kernprop's -----------------------

    def _initialize(self, units, random_state):
        """First fit: scikit-learn's fitted attributes and its initial weights."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(units)
        dtype = self._dtype()
        factor = 2.0 if self.activation == "logistic" else 6.0
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(units[:-1], units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            self.coefs_.append(random_state.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype))
            self.intercepts_.append(random_state.uniform(-bound, bound, fan_out).astype(dtype))
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [b.copy() for b in self.intercepts_]
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _to_kernprop(self, coefs, intercepts):
        """[W0, b0, W1, b1, ...] for the kernprop model, in its dtype; a binary output's
        single logit d becomes the two opposite logits -d/2, d/2."""
        dtype = self._dtype()
        params = []
        for i, (w, b) in enumerate(zip(coefs, intercepts)):
            w, b = np.asarray(w, dtype=dtype), np.asarray(b, dtype=dtype)
            if i == len(coefs) - 1 and self._two_logits():
                w, b = np.hstack([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
            params += [np.array(w, dtype=dtype, order="C"), np.array(b, dtype=dtype, order="C")]
        return params

    def _to_sklearn(self, params):
        """(coefs, intercepts) from the kernprop model's parameters (copies)."""
        coefs, intercepts = [w.copy() for w in params[0::2]], [b.copy() for b in params[1::2]]
        if self._two_logits():
            w, b = params[-2], params[-1]
            coefs[-1], intercepts[-1] = w[:, 1:] - w[:, :1], b[1:] - b[:1]
        return coefs, intercepts

    def _two_logits(self):
        return False

    def _model(self, units):
        """A kernprop ``Sequential`` of ``Linear`` (+ the hidden activation) layers holding
        ``coefs_`` and ``intercepts_`` (in kernprop's layout)."""
        params = self._to_kernprop(self.coefs_, self.intercepts_)
        shapes = [(a, b) for a, b in zip(units[:-1], units[1:])]
        found = [p.shape for p in params[0::2]]
        if self._two_logits():
            found[-1] = (found[-1][0], found[-1][1] // 2)
        if found != shapes:
            raise ValueError(f"the fitted weights have shapes {found}, this fit needs {shapes} "
                             "(hidden_layer_sizes or the outputs changed since the last fit: fit without warm_start)")
        hidden = _HIDDEN[self.activation]
        layers = []
        for i in range(len(params) // 2):
            w = params[2 * i]
            layer = nn.Linear(w.shape[0], w.shape[1], dtype=w.dtype, rng=0)  # weights set below
            layer.set_parameters(params[2 * i:2 * i + 2])
            layers.append(layer)
            if i < len(params) // 2 - 1 and hidden is not None:
                layers.append(_LAYERS[hidden]())
        return nn.Sequential(*layers)

    def _new_optimizer(self, batch):
        """scikit-learn's solver as a kernprop optimizer (see the module docstring for the
        scales); its learning rate follows ``self._learning_rate``."""
        c = self._grad_scale
        decay = self.alpha / batch / c
        if self.solver == "sgd":
            return SGD(self._learning_rate * c, momentum=self.momentum,
                       nesterov=bool(self.nesterovs_momentum) and self.momentum > 0, weight_decay=decay)
        return Adam(self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon / c,
                    weight_decay=decay)

    # --- fit ----------------------------------------------------------------------

    def _fit(self, X, y, incremental=False):
        self._validate_params()
        self._check_implemented()
        hidden = self._hidden_sizes()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        self._layout(y)
        units = [X.shape[1], *hidden, self.n_outputs_]
        self._random_state = random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(units, random_state)
        model = self._model(units)
        dtype = self._dtype()
        optimizer = getattr(self, "_kp_optimizer", None)
        if not incremental or optimizer is None or any(
                s.dtype != dtype for arrays in optimizer.state.values() for s in arrays):
            self._learning_rate = float(self.learning_rate_init)
            optimizer = None
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        X_train, y_train, X_val, y_val = self._split(X, y, random_state)
        n = X_train.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
            batch = int(np.clip(self.batch_size, 1, n))
        if optimizer is None:
            optimizer = self._kp_optimizer = self._new_optimizer(batch)
        optimizer.weight_decay = self.alpha / batch / self._grad_scale  # partial_fit: this call's batch
        trainer = Trainer(model, self._kp_loss(), optimizer, backend=self._backend(), batch_size=batch,
                          seed=int(random_state.randint(np.iinfo(np.int32).max)),
                          precision=self._matmul_precision())
        end_of_epoch = self._epoch_logic(trainer, n, batch, X_val, y_val, incremental)
        self.n_iter_ = 0
        with threads(self.n_threads):
            try:
                trainer.fit(X_train, y_train, epochs=1 if incremental else self.max_iter, shuffle=self.shuffle,
                            callbacks=[end_of_epoch], verbose=0)
            except KeyboardInterrupt:
                warnings.warn("Training interrupted by user.")
        optimizer.set_state(optimizer.state)  # forget the model's arrays it last checked against
        self.engine_ = trainer.engine_choice[0] if trainer.engine_choice else None
        if self.early_stopping:
            self.coefs_, self.intercepts_ = self._best_coefs, self._best_intercepts
        else:
            self.coefs_, self.intercepts_ = self._to_sklearn(model.parameters())
        if not all(np.isfinite(w).all() for w in (*self.coefs_, *self.intercepts_)):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large values "
                             "and need to be preprocessed.")
        return self

    def _split(self, X, y, random_state):
        """(X_train, y_train, X_val, y_val): scikit-learn's validation split for
        ``early_stopping`` (stratified for a binary classifier), else all rows."""
        if not self.early_stopping:
            return X, y, None, None
        stratify = y if self._stratify() else None
        X_train, X_val, y_train, y_val = train_test_split(X, y, random_state=random_state,
                                                          test_size=self.validation_fraction, stratify=stratify)
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                             "your dataset.")
        return X_train, y_train, X_val, y_val

    def _stratify(self):
        return False

    def _epoch_logic(self, trainer, n, batch, X_val, y_val, incremental):
        """The callback run by ``Trainer.fit`` after each epoch: scikit-learn's
        ``_fit_stochastic`` between epochs.  Returns True to stop."""
        batches = -(-n // batch)
        optimizer = trainer.optimizer

        def set_lr(lr):
            # scikit-learn's velocity holds lr * gradient (u = momentum u - lr g), kernprop's
            # the gradient (v = momentum v + g, p -= lr v): v is rescaled so that u goes on
            # as scikit-learn's does (the running engine updates its state in place)
            old, self._learning_rate = self._learning_rate, lr
            optimizer.lr = lr * self._grad_scale
            if lr > 0 and optimizer.momentum:
                for velocity in trainer.training_state()[1].get("velocity", []):
                    velocity *= old / lr

        def end_of_epoch(epoch, logs):
            params = trainer.training_state()[0]  # the running engine's (views: no copy)
            weights = params[0::2]
            if self._two_logits():
                weights = [*weights[:-1], weights[-1][:, 1] - weights[-1][:, 0]]
            penalty = sum(float(np.dot(w.ravel(), w.ravel())) for w in weights)
            self.loss_ = logs["loss"] * self._loss_scale + 0.5 * self.alpha * penalty * batches / n
            self.n_iter_ += 1
            self.t_ += n
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
            self._update_no_improvement_count(X_val, y_val, params)
            sgd = self.solver == "sgd"
            if sgd and self.learning_rate == "invscaling":
                set_lr(float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t)
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if self.early_stopping else "Training loss"
                msg = "%s did not improve more than tol=%f for %d consecutive epochs." % (
                    what, self.tol, self.n_iter_no_change)
                if not (sgd and self.learning_rate == "adaptive"):
                    if self.verbose:
                        print(msg + " Stopping.")
                    return True
                if self._learning_rate <= 1e-6:
                    if self.verbose:
                        print(msg + " Learning rate too small. Stopping.")
                    return True
                set_lr(self._learning_rate / 5.0)
                if self.verbose:
                    print(msg + " Setting learning rate to %f" % self._learning_rate)
                self._no_improvement_count = 0
            if not incremental and self.n_iter_ == self.max_iter:
                warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the optimization hasn't "
                              "converged yet." % self.max_iter, ConvergenceWarning)
            return False

        return end_of_epoch

    def _update_no_improvement_count(self, X_val, y_val, params):
        if self.early_stopping:
            coefs, intercepts = self._to_sklearn(params)
            score = self._validation_score(X_val, y_val, coefs, intercepts)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_coefs, self._best_intercepts = coefs, intercepts
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    # --- predict ------------------------------------------------------------------

    def _forward(self, X, coefs=None, intercepts=None):
        """The output layer's values (before the output activation), (N, n_outputs_), in
        the weights' dtype, through kernprop's ``linear`` on the estimator's backend."""
        coefs = self.coefs_ if coefs is None else coefs
        intercepts = self.intercepts_ if intercepts is None else intercepts
        x = np.ascontiguousarray(X, dtype=np.asarray(coefs[0]).dtype)
        hidden, last = _HIDDEN[self.activation], len(coefs) - 1
        with threads(self.n_threads):
            for i, (w, b) in enumerate(zip(coefs, intercepts)):
                w = np.asarray(w, dtype=x.dtype)
                b = np.asarray(b, dtype=x.dtype)
                x = linear(x, w, b, activation=hidden if i < last else None, backend=self._backend(),
                           precision=self._matmul_precision())
        return x
