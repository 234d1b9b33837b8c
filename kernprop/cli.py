"""The ``kernprop`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

__all__ = ["build_parser", "main"]


def _info(args) -> int:
    import numpy

    import kernprop
    from kernprop.backends import available_backends, backends, get_backend, get_num_threads, matmul_kernels

    from kernprop import isa

    try:
        cpu_line = isa.describe()  # first: a bad KERNPROP_MAX_ISA stops every engine's import
        _check_threading_layer()
        _check_gemm_choice(available_backends())
    except (_UserError, ValueError) as exc:
        print(f"kernprop info: {exc}", file=sys.stderr)
        return 2
    print(f"kernprop {kernprop.__version__} (Python {sys.version.split()[0]}, NumPy {numpy.__version__})")
    print(cpu_line)
    try:
        import numba

        from numba.core.config import CACHE_DIR

        cache = CACHE_DIR or "beside each module, in __pycache__"
        print(f"numba {numba.__version__}; cache: {cache}")
    except ImportError:
        print("numba not installed")
    print(f"default backend: {get_backend()}; CPU threads: {get_num_threads()}")
    print("backends:")
    for status in backends().values():
        print(f"  {status}  - {status.description}")
    print(f"matmul precision: {kernprop.get_matmul_precision()}; float32 kernels per precision:")
    for name, kernels in matmul_kernels().items():
        print(f"  {name}: " + "; ".join(f"{precision}: {kernel}" for precision, kernel in kernels.items()))
    from kernprop.threadpolicy import policy

    print("thread policy (kernprop.threadpolicy):")
    for line in str(policy()).splitlines():
        print(f"  {line}")
    return 0


# Below this many multiply-adds per step (forward and backward, as kernprop.engines counts
# them: 3 x batch x weights), `kernprop train` runs the CPU backends on one thread unless
# --threads or NUMBA_NUM_THREADS says otherwise (see _choose_threads): tiny steps gain
# nothing from threads and lose much when the cores are busy (a parallel region waits
# for every thread).
SMALL_STEP_WORK = 3 << 20

# Seconds a cold `kernprop train --backend numba` spends compiling the numba kernels of
# its fit, by engine: the estimate it prints before compiling.  Measured with an empty
# NUMBA_CACHE_DIR on a 2-core AMD EPYC Zen 3: fused (digits 64-128-10, 1 thread) 59 s
# quiet, 63 s busy; layerwise (784-512-256-10, 2 threads, adds the parallel builds) 64 s
# busy; 18 s for fused on a Zen 5; packed (not measured here) scaled from a Zen 4, where
# it took 10-15 s to the fused step's 20.  The self-check of a bf16 matmul kernel (--precision
# bf16 or bf16x3 off the fused step) adds about 10 s.  With no backend named, a cold run
# trains on cython instead (kernprop.first_run).
COLD_COMPILE_SECONDS = {"fused": 60, "packed": 45, "layerwise": 60}
COLD_SELF_CHECK_SECONDS = 10

# More classes than this (or than rows) in --data is refused without
# --allow-many-classes: one stray huge label would size the output layer (a label of
# 10**9 asks for a 10**9-wide layer), which is almost always a mistake in the file.
MAX_CLASSES = 100_000


class _UserError(ValueError):
    """A mistake in the command's options or data: one line, exit status 2."""


def _one_line(exc):
    """An exception's message on one line (Numba's hints span several)."""
    return " ".join(str(exc).split())


def _check_thread_count_variable():
    """NUMBA_NUM_THREADS, before anything imports Numba (which raises from inside its
    import for 0 or less): a positive integer, or unset."""
    value = os.environ.get("NUMBA_NUM_THREADS", "")
    if not value.strip():
        return
    try:
        ok = int(value) >= 1
    except ValueError:
        ok = False
    if not ok:
        raise _UserError(f"NUMBA_NUM_THREADS={value!r}: must be a positive integer (threads of the CPU backends)")


def _check_threading_layer():
    """Start Numba's threads (what the first parallel kernel would do): a bad
    NUMBA_THREADING_LAYER, or tbb without TBB, is one line naming the variable."""
    from kernprop.backends import get_num_threads

    try:
        get_num_threads()
    except (ValueError, ImportError, RuntimeError) as exc:
        layer = os.environ.get("NUMBA_THREADING_LAYER")
        where = f"NUMBA_THREADING_LAYER={layer!r}" if layer else "Numba's threading layer"
        raise _UserError(f"{where}: {_one_line(exc)}") from None


GEMM_VARIABLES = ("KERNPROP_GEMM_KERNEL", "KERNPROP_CYTHON_GEMM_KERNEL")


def _check_gemm_choice(backend_names, precision=None):
    """The GEMM kernel overrides (``KERNPROP_*GEMM_KERNEL``), as the backends' matmul
    ``kernel_info`` reads them: a bad value is one line naming the variable."""
    from kernprop.backends import family

    for name in backend_names:
        info = getattr(family(name, "matmul"), "kernel_info", None)
        if info is None:
            continue
        try:
            info()
        except ValueError as exc:
            message = _one_line(exc)
            named = [v for v in GEMM_VARIABLES if v in message]
            set_ = [f"{v}={os.environ[v]!r}" for v in GEMM_VARIABLES if v in os.environ]
            prefix = "" if named else (", ".join(set_) or f"the {name} GEMM kernel") + ": "
            raise _UserError(f"{prefix}{message}") from None


def _check_threads(threads):
    """--threads within what the CPU backends can run (Numba's pool is sized at start)."""
    if threads is None:
        return
    from numba.core.config import NUMBA_NUM_THREADS

    if threads > NUMBA_NUM_THREADS:
        raise _UserError(f"--threads {threads} is more than the {NUMBA_NUM_THREADS} threads available "
                         "(the cores, or NUMBA_NUM_THREADS)")


def _check_output_path(option, path, regular=True):
    """``option`` names a file that can be written: its directory (of a symlink's
    target) exists and takes a new file (tried, not guessed from permission bits, which
    root ignores), and it is not a directory, nor (``regular``) a FIFO, device or
    socket.  Checked before the long work, so none is lost at its end.  None: no path."""
    import tempfile

    if path is None:
        return

    from kernprop._validate import file_kind

    full = os.path.realpath(path)
    kind = file_kind(full)
    if kind == "a directory":
        raise _UserError(f"{option} {path}: is a directory; give a file name such as {os.path.join(path, 'out')}")
    if regular and kind not in (None, "a regular file"):
        raise _UserError(f"{option} {path}: is {kind}, not a regular file")
    parent = os.path.dirname(full)
    if not os.path.isdir(parent):
        raise _UserError(f"{option} {path}: directory {parent} does not exist")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise _UserError(f"{option} {path}: cannot write in {parent}: {exc.strerror or exc}") from None


def _check_save_path(path):
    """--save: a regular file or a new path that can be written (kernprop.checkpoint
    writes a temporary file beside it, then renames)."""
    if os.path.isdir(path):
        raise _UserError(f"--save {path}: is a directory; give a file name such as {os.path.join(path, 'model.npz')}")
    _check_output_path("--save", path)


def _check_training_data(path, X, y, allow_many_classes):
    """--data: finite features and class labels in [0, classes) with a sane class count."""
    import numpy as np

    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise _UserError(f"--data {path}: X must be finite, row {row} holds NaN or inf")
    if y.dtype.kind not in "iu":
        raise _UserError(f"--data {path}: y must hold integer class labels, got {y.dtype}")
    if y.min() < 0:
        row = int(np.argmin(y))
        raise _UserError(f"--data {path}: y[{row}] = {y[row]}: class labels must be >= 0")
    classes = int(y.max()) + 1
    if (classes > MAX_CLASSES or classes > y.shape[0]) and not allow_many_classes:
        raise _UserError(
            f"--data {path}: labels up to {classes - 1} mean {classes:,} classes, more than "
            f"{MAX_CLASSES:,} or than the {y.shape[0]:,} rows; pass --allow-many-classes if that is meant"
        )
    return classes


def _describe_labels(path, y, classes):
    """The class count and label range inferred from --data, and a warning when the
    labels are not 0..C-1: labels 5..7 make an 8-class model whose outputs 0..4 are
    never a target (the usual cause: labels that start at 1, or a subset of classes)."""
    import numpy as np

    present = np.unique(y)
    if present.size != classes:
        unused = classes - present.size
        print(f"kernprop train: warning: --data {path}: labels {int(present[0])}..{int(present[-1])} are not "
              f"0..{present.size - 1}: {unused} of the "
              f"{classes} outputs are for classes that never occur; remap them with "
              "np.unique(y, return_inverse=True)", file=sys.stderr)
    return (f"labels: {present.size} distinct values in {int(present[0])}..{int(present[-1])} "
            f"-> {classes} classes (outputs 0..{classes - 1})")


# Features whose spread or offset passes this look unscaled: SGD with the default step
# sizes then diverges or stalls at chance (a step of lr * x moves too far).
UNSCALED = 10.0


def _scale_features(X_train, X_test, standardize):
    """--standardize: each feature to mean 0, std 1, with the training rows' statistics
    (constant features are left centred).  Without it, say when the data looks unscaled."""
    import numpy as np

    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    if standardize:
        std = np.where(std > 0, std, 1.0)
        print("features: standardized with the training rows' mean and std "
              "(a saved model expects inputs scaled the same way)")
        return ((X_train - mean) / std).astype(X_train.dtype), ((X_test - mean) / std).astype(X_test.dtype)
    spread = float(max(np.abs(mean).max(), std.max()))
    if spread > UNSCALED:
        print(f"kernprop train: note: features look unscaled (means or stds up to {spread:,.3g}); "
              "pass --standardize if training stalls", file=sys.stderr)
    return X_train, X_test


def _hidden_sizes(values):
    """--hidden "64,32" or repeated (--hidden 64 --hidden 32) -> [64, 32]; "" -> []."""
    sizes = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            # ASCII digits only: "²".isdigit() is true and int("²") fails
            if not (part.isascii() and part.isdigit()) or int(part) < 1:
                raise _UserError(f"--hidden takes positive integers like 64,32, got {value!r}")
            sizes.append(int(part))
    return sizes


def _plural(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _choose_threads(asked, backend, work):
    """Set the CPU backends' thread count for ``kernprop train`` (``work``: multiply-adds
    per step); returns the line that says how many and why (None for the numpy and cuda
    backends, whose threads are not kernprop's).  By priority: --threads;
    NUMBA_NUM_THREADS set in the environment (the user's choice, as for any Numba
    program); one thread for a small model; every core."""
    if backend not in ("numba", "cython"):
        return None
    from numba.core.config import NUMBA_NUM_THREADS as cores  # the pool's size: the cores or the variable

    from kernprop.backends import set_num_threads

    small = work < SMALL_STEP_WORK
    if asked is not None:
        threads, line = asked, f"{_plural(asked, 'thread')} (--threads)"
    elif os.environ.get("NUMBA_NUM_THREADS"):
        threads, line = cores, f"{_plural(cores, 'thread')} (NUMBA_NUM_THREADS)"
    elif small and cores > 1:
        threads, line = 1, (f"1 thread: the model is small (a step of {work:,} multiply-adds); "
                            f"use --threads {cores} to override")
    else:
        threads, line = cores, f"{_plural(cores, 'thread')} ({'every core' if cores > 1 else 'one core'})"
    if small and threads > 1:
        line += f"; the model is small (a step of {work:,} multiply-adds): --threads 1 may be faster"
    set_num_threads(threads)  # the Cython backend's OpenMP pool follows Numba's count
    return line


def _announce_compile(engine, precision):
    """What ``kernprop train`` prints just before Numba's first compilation (see
    kernprop.warmup.compiling): kernels loaded from the cache, and the cython and numpy
    backends, print nothing."""
    seconds = COLD_COMPILE_SECONDS.get(engine, COLD_COMPILE_SECONDS["layerwise"])
    if precision != "fp32" and engine != "fused":
        seconds += COLD_SELF_CHECK_SECONDS

    def announce():
        print(f"compiling kernels (first run with these settings on this machine, up to about {seconds} s; "
              "later runs load them from Numba's cache)", flush=True)

    return announce


def _precision_line(asked, ran, why):
    if asked == "fp32":
        return "precision: fp32"
    if ran == asked:
        return f"precision: {asked} products ({why}); weights, optimizer and loss in fp32"
    return f"precision: {asked} asked, products in fp32: {why}"


def _options_to_agree(args):
    """The options every rank of ``--distributed mpi`` must be given alike, by option
    name (``--data`` may name another path holding the same rows: the fit compares
    the data themselves)."""
    skip = {"func", "command", "data", "distributed"}
    return {f"--{k.replace('_', '-')}": v for k, v in sorted(vars(args).items()) if k not in skip}


def _train_mpi(args) -> int:
    """``--distributed mpi`` (under ``mpirun -n N``): rank 0 alone prints, and an
    exception on any rank aborts every rank instead of leaving them waiting."""
    import contextlib

    from kernprop.distributed import make_context

    try:
        dist = make_context("mpi")
    except RuntimeError as exc:
        print(f"kernprop train: {exc}", file=sys.stderr)
        return 2
    with open(os.devnull, "w") as devnull, dist.abort_on_error():
        with contextlib.redirect_stdout(sys.stdout if dist.is_root else devnull):
            return _train(args, dist)


@dataclasses.dataclass
class _Run:
    """What ``kernprop train`` trains, read from its options and checked before anything
    is printed."""

    backend: str
    train: tuple  # (X, y)
    test: tuple  # (X, y)
    num_classes: int
    source: str  # where the data came from, as printed
    labels_line: str | None  # what --data's labels mean, when they need saying
    sizes: list  # the MLP's layer widths
    lr: float
    threads_line: str | None  # the thread count and why, when the CLI chose it
    trainer: object  # kernprop.Trainer


def _check_options(args, dist):
    """The backend ``args`` asks for, after every check of the options that needs no data
    (a ``_UserError`` or ValueError naming the option otherwise)."""
    from kernprop.backends import get_backend, status

    backend = args.backend or get_backend()
    state = status(backend)  # ValueError naming the known backends for an unknown one
    if not state.available:
        raise _UserError(f"backend {backend!r} is not available: {state.reason}")
    _check_threads(args.threads)
    _check_threading_layer()
    _check_gemm_choice([backend])
    if args.seed < 0:
        raise _UserError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.save and (dist is None or dist.is_root):  # rank 0 alone writes
        _check_save_path(args.save)
    return backend


def _read_data(args):
    """``(train, test, classes, source, labels line or None)`` from ``--data`` (checked,
    split 80/20) or the digits, scaled as ``--standardize`` says."""
    from kernprop.data import load_digits, load_npz, train_test_split

    if args.data:
        X, y = load_npz(args.data)
        num_classes = _check_training_data(args.data, X, y, args.allow_many_classes)
        (X_train, y_train), (X_test, y_test) = train_test_split(X, y, 0.2, args.seed)
        X_train, X_test = _scale_features(X_train, X_test, args.standardize)
        return ((X_train, y_train), (X_test, y_test), num_classes, args.data,
                _describe_labels(args.data, y, num_classes))
    (X_train, y_train), (X_test, y_test) = load_digits(seed=args.seed)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if args.standardize:
        X_train, X_test = _scale_features(X_train, X_test, True)
    return (X_train, y_train), (X_test, y_test), num_classes, "digits (scikit-learn, 8x8)", None


DEFAULT_LR = {"sgd": 0.5, "momentum": 0.1, "adam": 1e-2}


def _optimizer(args, lr):
    """``--optimizer`` at ``lr``, decayed by a cosine from lr to 0 over ``--epochs``."""
    import numpy as np

    from kernprop import optim

    epochs = max(args.epochs, 1)
    schedule = lambda epoch: lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs))  # noqa: E731
    if args.optimizer == "adam":
        return optim.Adam(lr, lr_schedule=schedule)
    momentum = 0.9 if args.optimizer == "momentum" else 0.0
    return optim.SGD(lr, momentum=momentum, lr_schedule=schedule)


def _build_run(args, dist):
    """The ``_Run`` of ``args``.  Every user error is found here, before training: the
    caller prints it as one line and exits with status 2."""
    from kernprop import nn
    from kernprop.engines import multiply_adds
    from kernprop.train import Trainer

    backend = _check_options(args, dist)
    hidden = _hidden_sizes(args.hidden or ["128"])
    train, test, num_classes, source, labels_line = _read_data(args)
    sizes = [train[0].shape[1], *hidden, num_classes]
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    optimizer = _optimizer(args, lr)
    nn.make_loss("cross_entropy", label_smoothing=args.label_smoothing)
    try:
        model = nn.MLP(sizes, activation=args.activation, rng=args.seed)
    except MemoryError:
        raise _UserError(f"not enough memory for an MLP {'-'.join(map(str, sizes))}") from None
    threads_line = _choose_threads(args.threads, backend, multiply_adds(model, args.batch_size))
    trainer = Trainer(model, "cross_entropy", optimizer, backend=backend, batch_size=args.batch_size,
                      seed=args.seed, label_smoothing=args.label_smoothing, distributed=dist,
                      engine=args.engine, precision=args.precision)
    return _Run(backend, train, test, num_classes, source, labels_line, sizes, lr, threads_line, trainer)


def _first_run(args, run, dist):
    """No backend named (no --backend, no KERNPROP_BACKEND) and the default numba: numba
    when its kernels for this run are in Numba's cache, else cython for the whole run
    while a background process compiles them for the next (``kernprop.first_run``);
    printed.  A named backend, an engine only numba runs, and MPI runs keep numba."""
    if (args.backend or os.environ.get("KERNPROP_BACKEND") or dist is not None or run.backend != "numba"
            or args.engine not in ("auto", "layerwise", "packed")):
        return run
    from kernprop import first_run

    choice = first_run.choose(run.trainer, *run.train, validation_data=run.test)
    print(choice.line, flush=True)
    return dataclasses.replace(run, backend=choice.backend)


def _describe_run(args, run, dist):
    """Print what will train (data, model, threads, engine); returns the engine's name."""
    X_train, X_test = run.train[0], run.test[0]
    engine, why_engine = run.trainer.choose_engine()
    print(f"data: {run.source}: {X_train.shape[0]} train, {X_test.shape[0]} test rows, "
          f"{X_train.shape[1]} features, {run.num_classes} classes")
    if run.labels_line:
        print(run.labels_line)
    print(f"model: MLP {'-'.join(map(str, run.sizes))} ({args.activation}), {args.optimizer} lr {run.lr:g}, "
          f"batch {args.batch_size}, backend {run.backend}"
          + (f" x {dist.size} MPI ranks" if dist is not None else ""))
    if run.threads_line:
        print(run.threads_line)
    print(f"engine: {f'mpi({engine})' if dist is not None else engine} ({why_engine})")
    return engine


def _warm_up(args, run, engine):
    """Compile (or load) the fit's kernels before the first epoch, saying so on a first run."""
    from kernprop.warmup import compiling

    with compiling(_announce_compile(engine, run.trainer.precision)) as compiles:
        # Choosing a bf16 kernel runs its self-check: compiled too on a first run.
        print(_precision_line(args.precision, *run.trainer.precision_in_effect(engine)))
        run.trainer.warmup(*run.train, validation_data=run.test)
    if compiles.kernels:
        print(f"compiled {_plural(compiles.kernels, 'kernel')} in {compiles.seconds:.1f} s", flush=True)


def _fit(args, run):
    """``run.trainer.fit``, printing a line per epoch (unless a progress bar shows them);
    returns the history."""
    interactive = sys.stderr.isatty()

    def report(epoch, logs):
        if not interactive:  # the tqdm bar shows these on a terminal
            print(f"epoch {epoch + 1}/{args.epochs}  loss {logs['loss']:.4f}  accuracy {logs['accuracy']:.4f}  "
                  f"val_accuracy {logs['val_accuracy']:.4f}  {logs['samples_per_s']:,.0f} samples/s", flush=True)

    return run.trainer.fit(*run.train, args.epochs, validation_data=run.test, callbacks=[report], verbose=1)


def _report(args, run, history, start):
    """Print the test accuracy and the training speed, write ``--save``; the exit status."""
    import time

    import numpy as np

    result = run.trainer.evaluate(*run.test)
    print(f"test accuracy: {result['accuracy']:.4f}  test loss: {result['loss']:.4f}")
    # Warmed up: no epoch pays for compiling or loading the kernels.
    print(f"training speed: {np.median(history['samples_per_s']):,.0f} samples/s (median over epochs); "
          f"total time {time.perf_counter() - start:.1f} s")
    if args.save:
        try:
            path = run.trainer.save(args.save)
        except (OSError, ValueError) as exc:  # checked before training; the disk may still fill up
            print(f"kernprop train: could not write the checkpoint {args.save}: {_one_line(exc)}", file=sys.stderr)
            return 2
        print(f"saved checkpoint to {path}")
    return 0


def _train(args, dist=None) -> int:
    """``kernprop train``: build and check the run, describe it, warm up, fit, report."""
    if getattr(args, "distributed", "none") == "mpi" and dist is None:
        return _train_mpi(args)
    import time

    start = time.perf_counter()
    try:
        if dist is None:
            run = _build_run(args, None)
        else:
            # every rank checks, then one allgather: a rank whose options, paths or data
            # fail ends every rank with that error, and ranks given different options
            # fail naming the option, instead of one rank stopping and the others
            # waiting in the first collective
            run = dist.checked(lambda: _build_run(args, dist), agree=lambda _: _options_to_agree(args))
    except (ValueError, TypeError, OSError, ImportError) as exc:  # ImportError: the sklearn extra for digits
        print(f"kernprop train: {_one_line(exc)}", file=sys.stderr)
        return 2
    run = _first_run(args, run, dist)
    engine = _describe_run(args, run, dist)
    _warm_up(args, run, engine)
    try:
        history = _fit(args, run)
    except (ValueError, TypeError) as exc:
        # the fit's checks (distributed: the ranks' agreement, raised alike on every
        # rank); a failure inside the training loop aborts every rank instead
        print(f"kernprop train: {_one_line(exc)}", file=sys.stderr)
        return 2
    return _report(args, run, history, start)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


ENGINE_CHOICES = ("auto", "layerwise", "packed", "fused", "device")  # kernprop.engines.ENGINE_CHOICES, unimported


def build_parser() -> argparse.ArgumentParser:
    """The ``kernprop`` argument parser: ``info``, ``train``, ``bench``, ``cuda-check``."""
    from kernprop import __version__

    parser = argparse.ArgumentParser(
        prog="kernprop", description="High-performance kernels for training neural networks."
    )
    parser.add_argument("--version", action="version", version=f"kernprop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, backends and why any is unavailable, threads, Numba cache")
    info.set_defaults(func=_info)
    train = sub.add_parser(
        "train", help="train an MLP classifier (default: the bundled 8x8 digits) and report test accuracy",
    )
    train.add_argument("--backend", default=None, help="kernel backend (default: the default backend)")
    train.add_argument("--epochs", type=_positive_int, default=30, help="passes over the data (default 30)")
    train.add_argument("--batch-size", type=_positive_int, default=32, help="rows per step (default 32)")
    train.add_argument("--hidden", action="append", default=None,
                       help='hidden layer sizes, "128" (default) or "64,32", or the option repeated')
    train.add_argument("--activation", choices=("relu", "sigmoid", "tanh"), default="relu")
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate, decayed by a cosine to 0 (default: 0.01 adam, 0.1 momentum, 0.5 sgd)")
    train.add_argument("--optimizer", choices=("sgd", "momentum", "adam"), default="adam")
    train.add_argument("--label-smoothing", type=float, default=0.1, help="cross-entropy label smoothing (default 0.1)")
    train.add_argument("--seed", type=int, default=0, help="seeds initialisation, split and shuffling (default 0)")
    train.add_argument("--save", metavar="PATH", default=None, help="write a .npz checkpoint after training")
    train.add_argument("--data", metavar="FILE.npz", default=None,
                       help="train on arrays X (N, F) and integer labels y (N,) from this file (80/20 split)")
    train.add_argument("--standardize", action="store_true",
                       help="scale each feature to mean 0, std 1 (the training rows' statistics) before training")
    train.add_argument("--allow-many-classes", action="store_true",
                       help=f"accept --data labels meaning more than {MAX_CLASSES:,} classes or more classes than rows")
    train.add_argument("--threads", type=_positive_int, default=None,
                       help="CPU threads for the numba/cython backends (default: NUMBA_NUM_THREADS if set, "
                            "else 1 for small models, whose steps are too short to gain from threads, else "
                            "all cores; the choice and its reason are printed)")
    train.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                       help="how a step runs (default auto: the rule in kernprop.engines; the choice is printed)")
    train.add_argument("--distributed", choices=("none", "mpi"), default="none",
                       help="mpi: data-parallel over the ranks of mpirun -n N (--batch-size is the global batch)")
    train.add_argument("--precision", choices=("fp32", "bf16x3", "bf16"), default="fp32",
                       help="how the layers' products are computed (kernprop.precision): bf16 rounds their "
                            "operands to bfloat16, bf16x3 splits them in three bf16 products; weights, "
                            "optimizer and loss stay fp32 (default fp32)")
    train.set_defaults(func=_train)
    train.error = _one_line_error(train)
    sub.add_parser("bench", add_help=False,
                   help="run the benchmark suites in bench/ and write a Markdown report (a source checkout; "
                        "kernprop bench --help for its options)")
    from kernprop import cuda_check  # light: numba-cuda is imported only when it runs

    cuda_check.add_parser(sub)
    from kernprop import train_lm  # light: its work imports happen when it runs

    train_lm.add_parser(sub)
    return parser


def _one_line_error(parser):
    """argparse's error for ``parser``, as one line ``kernprop train: ...`` (no usage
    block) and exit status 2, like the command's other user errors."""
    def error(message):
        parser.exit(2, f"{parser.prog}: {message} (see {parser.prog} --help)\n")
    return error


def _bench_output(words):
    """The report path of ``kernprop bench`` (``-o PATH``, ``-oPATH``, ``--output PATH``,
    ``--output=PATH``), or None; checked before the suites run."""
    for i, word in enumerate(words):
        if word in ("-o", "--output") and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--output="):
            return word.split("=", 1)[1]
        if word.startswith("-o") and len(word) > 2 and not word.startswith("--"):
            return word[2:]
    return None


_BENCH_HELP = """usage: kernprop bench [--quick] [--ops OP] [--backends NAME] [-o PATH] [--json PATH] [...]

Run the benchmark suites (every backend side by side, each op and shape) and write a
Markdown report of speeds, with the CPU named.  The suites and the report live in a source
checkout's bench/, which an installed wheel does not carry (looked in {bench}).  To run
them, and for every option:

  git clone <kernprop's repository>; cd kernprop; pip install -e '.[test]'; kernprop bench --help"""


def _bench(argv) -> int:
    """``kernprop bench``: the report lives beside the suites it runs, in the source
    checkout's ``bench/benchreport/``; it is found next to the package of an editable
    install, and takes the rest of the arguments."""
    from pathlib import Path

    import kernprop

    bench = Path(kernprop.__file__).resolve().parent.parent / "bench"
    checkout = (bench / "benchreport" / "__init__.py").is_file() and (bench / "conftest.py").is_file()
    helping = any(word in ("-h", "--help") for word in argv)
    if "--quick" in argv and not helping:
        # first, the answer to "is it fast on my CPU?" (kernprop.speed: installed too);
        # on stderr beside the suites, whose report may be piped from stdout
        from kernprop import speed

        print(speed.headline(), file=sys.stderr if checkout else sys.stdout, flush=True)
        if not checkout:
            print(f"(the full benchmark suites need the source checkout's bench/, not found at {bench})")
            return 0
    if not checkout:
        # an installed wheel: no suites to run, but --help still says what the command is
        if helping:
            print(_BENCH_HELP.format(bench=bench))
            return 0
        print(f"kernprop bench: needs the source checkout's bench/ (not found at {bench}): "
              "git clone ...; pip install -e '.[test]'", file=sys.stderr)
        return 2
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    from benchreport.command import main as bench_main

    return bench_main(argv)


def main(argv=None) -> int:
    """Run the ``kernprop`` command with ``argv`` (default ``sys.argv[1:]``); returns the
    exit status: 0 done, 1 a failed check, 2 a usage or input error (one line)."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
        return status
    except BrokenPipeError:
        # the reader went away (kernprop info | head): no traceback; what is still
        # buffered goes nowhere instead of failing again at exit (Python's own recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv):
    words = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["kernprop", *[w for w in words if not w.startswith("-")][:1]])
    try:
        _check_thread_count_variable()  # before anything imports Numba, which fails on it
        if words[:1] == ["bench"] and not {"-h", "--help"} & set(words[1:]):  # --help always helps
            _check_output_path("-o", _bench_output(words[1:]), regular=False)
    except _UserError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    if words[:1] == ["bench"]:  # its options belong to bench/benchreport (a source checkout)
        return _bench(words[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse reports them from the top parser, with its usage block; a train
        # error stays one line like the command's others.
        message = f"unrecognized arguments: {' '.join(extra)}"
        if args.command == "train":
            parser.exit(2, f"kernprop train: {message} (see kernprop train --help)\n")
        parser.error(message)
    if args.command == "cuda-check" and args.output:
        try:  # before minutes of compiling, not after
            _check_output_path("--output", args.output, regular=False)
        except _UserError as exc:
            print(f"kernprop cuda-check: {exc}", file=sys.stderr)
            return 2
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
