"""Fit time of ``kernprop.sklearn`` against ``sklearn.neural_network`` (issue 28's targets).

    NUMBA_NUM_THREADS=2 python bench/sklearn_fit.py [--rounds 3] [--cases classifier,regressor,digits] [--float32]

The three cases of issue 28, each ``est.fit(X, y)`` on the float64 arrays scikit-learn's
generators return, so the time includes input validation and conversion:

* ``classifier``: ``make_classification(20000, 100)``, hidden (256, 128), batch 200,
  10 iterations (``max_iter=10``, ``tol=0``: every fit runs all 10);
* ``regressor``: the same X, as a regressor (``make_regression(20000, 100)``, the
  targets scaled to unit variance);
* ``digits``: scikit-learn's digits, standardised, a 75/25 stratified split, hidden
  (64,), ``max_iter=200`` (both stop earlier when the loss stops improving, by
  scikit-learn's rule; the iterations are reported); test accuracy of each.

Contenders, each timed in a block of its own (one untimed fit, a pause so that the
previous library's idle threads stop spinning, then ``--rounds`` timed fits; median and
best): kernprop (``precision="fp32"``, the default, and ``"fp64"``, scikit-learn's
arithmetic) at 2 threads, and scikit-learn with OpenBLAS at 2 threads and at 1 thread
(threadpoolctl), on the float64 input (what it computes in then); ``--float32`` adds
scikit-learn on float32 input (it then computes in float32).
The speed-up is scikit-learn's best median over its thread counts on float64 input,
divided by kernprop's fp32 median.  The CPU and the load average (1 min) before and
after each case are printed: on a shared machine other processes' load makes every
figure slower, and scikit-learn's threaded OpenBLAS far more than kernprop (a digits fit
took 45 s instead of 2 s beside another user's tests).

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np

CASES = ("classifier", "regressor", "digits")


def data(case):
    from sklearn.datasets import load_digits, make_classification, make_regression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if case == "classifier":
        X, y = make_classification(20000, 100, random_state=0)
        return X, y, None, None
    if case == "regressor":
        X, y = make_regression(20000, 100, noise=1.0, random_state=0)
        return X, y / y.std(), None, None
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), y_train, scaler.transform(X_test), y_test


def params(case):
    if case == "digits":
        return dict(hidden_layer_sizes=(64,), max_iter=200, random_state=0)
    return dict(hidden_layer_sizes=(256, 128), batch_size=200, max_iter=10, tol=0.0, random_state=0)


def time_block(make, X, y, rounds):
    """One untimed fit, a pause, then ``rounds`` timed fits: (times, last fitted)."""
    make().fit(X, y)
    time.sleep(0.3)  # another library's idle threads (OpenBLAS spins ~0.1 s) go to sleep
    times = []
    for _ in range(rounds):
        est = make()
        start = time.perf_counter()
        est.fit(X, y)
        times.append(time.perf_counter() - start)
    return times, est


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--float32", action="store_true", help="also time scikit-learn on float32 input")
    args = parser.parse_args(argv)
    from sklearn import neural_network as sknn
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    import kernprop
    from kernprop import isa
    from kernprop import sklearn as kpnn

    warnings.simplefilter("ignore", ConvergenceWarning)
    threads = kernprop.get_num_threads()
    print(isa.describe())
    print(f"kernprop {kernprop.__version__}, scikit-learn {__import__('sklearn').__version__}, "
          f"NumPy {np.__version__}; kernprop threads {threads}; rounds {args.rounds}")
    print()
    print("| case | contender | median s | best s | iterations | score | median / kernprop fp32 |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        X, y, X_test, y_test = data(case)
        name = "MLPClassifier" if case != "regressor" else "MLPRegressor"
        p = params(case)
        load = os.getloadavg()[0]
        rows = []  # (contender, times, fitted, X it was fitted on)
        for precision in ("fp32", "fp64"):
            times, est = time_block(lambda: getattr(kpnn, name)(precision=precision, n_threads=threads, **p), X, y,
                                    args.rounds)
            rows.append((f"kernprop {precision}", times, est, X))
        for dtype in (np.float64, np.float32) if args.float32 else (np.float64,):
            for blas in (2, 1):
                Xd = X.astype(dtype)
                with threadpool_limits(blas, "blas"):
                    times, est = time_block(lambda: getattr(sknn, name)(**p), Xd, y, args.rounds)
                rows.append((f"sklearn, {np.dtype(dtype).name} input, {blas} BLAS thread{'s' * (blas > 1)}", times,
                             est, Xd))
        ours = statistics.median(rows[0][1])
        for label, times, est, Xd in rows:
            # test accuracy for digits (split above), else the training score
            score = est.score(X_test.astype(Xd.dtype), y_test) if X_test is not None else est.score(Xd, y)
            print(f"| {case} | {label} | {statistics.median(times):.3f} | {min(times):.3f} | {est.n_iter_} | "
                  f"{score:.4f} | {statistics.median(times) / ours:.2f} |", flush=True)
        theirs = min(statistics.median(r[1]) for r in rows if "float64" in r[0])
        print(f"| {case} | **speed-up**: sklearn's best float64 median / kernprop fp32 | **{theirs / ours:.2f}x** | | | "
              f"| load average (1 min) {load:.2f} before, {os.getloadavg()[0]:.2f} after |", flush=True)

if __name__ == "__main__":
    main()
