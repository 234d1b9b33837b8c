"""scikit-learn estimators trained by kernprop: ``MLPClassifier`` and ``MLPRegressor``,
drop-in for ``sklearn.neural_network``'s (same parameters, defaults, fitted attributes
and methods), trained by ``kernprop.Trainer`` on its step engines (the fused small-MLP
step on numba for the common sizes).

    from kernprop.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(64,), random_state=0).fit(X, y)

They need scikit-learn (``pip install kernprop[sklearn]``); ``import kernprop`` alone
never imports it.  What differs from scikit-learn's, and why: the docstring of
``kernprop.sklearn._base``.
"""

try:
    import sklearn  # noqa: F401
except ImportError:
    raise ImportError("kernprop.sklearn needs scikit-learn, which is not installed: pip install kernprop[sklearn]",
                      name="sklearn") from None

from ._estimators import MLPClassifier, MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
