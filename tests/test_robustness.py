"""Regression tests for issue 25 (items 3-8): MPI ranks that fail or differ end every
rank with one clear error; checkpoints load whenever they are saved and are written
safely; optimizer hyperparameters are checked on assignment; the CLI answers bad
arguments and environments in one line (exit status 2) before long work; messages say
what is wrong.  Cases that could crash, hang or allocate without bound run in a child
process with a timeout."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from kernprop import nn, optim
from kernprop.backends import status
from kernprop.train import Trainer

TIMEOUT_S = 240


def _backend(name):
    state = status(name)
    if not state.available:
        pytest.skip(f"backend {name} unavailable: {state.reason}")
    return name


def cli(*args, env=None, cwd=None, timeout=TIMEOUT_S):
    """``kernprop ARGS`` in a child process: (returncode, stdout, stderr)."""
    environ = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    environ.update(env or {})
    result = subprocess.run([sys.executable, "-m", "kernprop.cli", *args], capture_output=True, text=True,
                            timeout=timeout, env=environ, cwd=cwd)
    return result.returncode, result.stdout, result.stderr


def assert_one_line(rc, err, *words):
    """Exit status 2, one line on stderr holding ``words``, no traceback."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err


def _problem(n=96, f=12, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, f)).astype(np.float32), rng.integers(0, c, n)


# --- item 6: optimizer hyperparameters are checked on assignment ------------------------


BAD_LR = [(None, TypeError), ("0.1", TypeError), (-1, ValueError), (float("nan"), ValueError),
          (float("inf"), ValueError)]


@pytest.mark.parametrize("value, error", BAD_LR)
def test_lr_assignment_is_checked_as_the_constructor_checks(value, error):
    with pytest.raises(error, match="lr"):
        optim.SGD(lr=value)
    opt = optim.Adam(lr=0.01)
    with pytest.raises(error, match="lr"):
        opt.lr = value
    assert opt.lr == 0.01  # a refused value leaves the old one
    with pytest.raises(error, match="lr"):
        opt.set_lr(value)
    big = optim.SGD(lr=1e30)  # finite and >= 0: the constructor and assignment agree
    big.lr = 1e30
    assert big.lr == 1e30


@pytest.mark.parametrize("make, name, value, error", [
    (lambda: optim.SGD(0.1, momentum=0.9), "momentum", 1.5, ValueError),
    (lambda: optim.SGD(0.1, momentum=0.9), "momentum", "0.9", TypeError),
    (lambda: optim.SGD(0.1, momentum=0.9, nesterov=True), "momentum", 0.0, ValueError),
    (lambda: optim.SGD(0.1), "nesterov", True, ValueError),
    (lambda: optim.SGD(0.1), "weight_decay", -1.0, ValueError),
    (lambda: optim.Adam(), "betas", (1.0, 0.999), ValueError),
    (lambda: optim.Adam(), "betas", 0.9, ValueError),
    (lambda: optim.Adam(), "eps", float("nan"), ValueError),
    (lambda: optim.Adam(), "weight_decay", None, TypeError),
    (lambda: optim.Adam(), "decoupled", "yes", TypeError),
    (lambda: optim.Adam(), "lr_schedule", 3, TypeError),
])
def test_every_hyperparameter_is_checked_on_assignment(make, name, value, error):
    opt = make()
    before = getattr(opt, name)
    with pytest.raises(error):
        setattr(opt, name, value)
    assert getattr(opt, name) == before


def test_momentum_set_later_makes_its_state():
    X, y = _problem()
    opt = optim.SGD(0.1)
    trainer = Trainer(nn.MLP([12, 8, 4], rng=0), optimizer=opt, backend="numpy", batch_size=32)
    trainer.fit(X, y, 1, verbose=0)
    opt.momentum = 0.9
    trainer.fit(X, y, 1, verbose=0)
    assert [v.shape for v in opt.state["velocity"]] == [p.shape for p in trainer.model.parameters()]


ENGINES = [("numpy", "layerwise"), ("numpy", "packed"), ("numba", "layerwise"), ("numba", "fused"),
           ("cython", "packed")]


@pytest.mark.parametrize("backend, engine", ENGINES)
@pytest.mark.parametrize("value, error", BAD_LR[:4])
def test_bad_lr_from_a_callback_fails_alike_on_every_engine(backend, engine, value, error):
    _backend(backend)
    X, y = _problem()
    opt = optim.Adam(lr=0.01)
    trainer = Trainer(nn.MLP([12, 8, 4], rng=0), optimizer=opt, backend=backend, batch_size=32, engine=engine)
    before = [p.copy() for p in trainer.model.parameters()]

    def callback(epoch, logs):
        opt.lr = value

    with pytest.raises(error, match="lr"):
        trainer.fit(X, y, 3, callbacks=[callback], verbose=0)
    assert opt.lr == 0.01
    params = trainer.model.parameters()
    assert all(np.isfinite(p).all() for p in params)
    assert any(not np.array_equal(a, b) for a, b in zip(before, params))  # the first epoch ran


# --- item 4: a checkpoint saved during fit loads ----------------------------------------


@pytest.mark.parametrize("backend, engine", [("numba", "fused"), ("numba", "packed"), ("numpy", "packed"),
                                             ("numpy", "layerwise")])
@pytest.mark.parametrize("make_opt", [lambda: optim.Adam(lr=0.01), lambda: optim.SGD(0.1, momentum=0.9)],
                         ids=["adam", "momentum"])
def test_save_from_a_callback_loads_and_resumes(tmp_path, backend, engine, make_opt):
    _backend(backend)
    X, y = _problem()

    def trainer():
        return Trainer(nn.MLP([12, 16, 4], rng=0), optimizer=make_opt(), backend=backend, batch_size=32,
                       engine=engine)

    whole = trainer()
    path = tmp_path / "mid.npz"

    def callback(epoch, logs):
        if epoch == 0:
            whole.save(path)

    whole.fit(X, y, 2, callbacks=[callback], verbose=0)
    resumed = Trainer.load(path, engine=engine)
    assert resumed.epochs_done == 1
    resumed.fit(X, y, 1, verbose=0)
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        np.testing.assert_array_equal(a, b)
    for name, arrays in whole.optimizer.state.items():
        for a, b in zip(arrays, resumed.optimizer.state[name]):
            np.testing.assert_array_equal(a, b)


# --- item 5: where and how checkpoints are written --------------------------------------


def _trainer():
    return Trainer(nn.MLP([4, 3], rng=0), backend="numpy")


def test_save_through_a_symlink_writes_its_target(tmp_path):
    target = tmp_path / "target.npz"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.npz"
    link.symlink_to(target.name)
    _trainer().save(link)
    assert link.is_symlink() and os.readlink(link) == target.name
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640  # the mode of the file it replaced
    assert Trainer.load(link).model.parameters()[0].shape == (4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.npz", "target.npz"]  # no temporary left


@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "link to device"])
def test_save_refuses_what_is_not_a_regular_file(tmp_path, kind):
    if kind == "directory":
        path = tmp_path
    elif kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    else:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full")
        path = "/dev/full"
        if kind == "link to device":
            path = tmp_path / "full.npz"
            path.symlink_to("/dev/full")
    with pytest.raises(ValueError, match="regular file"):
        _trainer().save(path)
    assert os.path.exists("/dev/full") is False or stat.S_ISCHR(os.stat("/dev/full").st_mode)
    if kind == "fifo":
        assert stat.S_ISFIFO(os.stat(path).st_mode)


def test_save_os_errors_are_the_systems(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _trainer().save(tmp_path / "missing" / "x.npz")


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_cli_save_refuses_special_files_before_training(tmp_path, kind):
    path = {"fifo": tmp_path / "fifo", "device": "/dev/full", "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "device" and not os.path.exists(path):
        pytest.skip("no /dev/full")
    rc, out, err = cli("train", "--backend", "numpy", "--epochs", "1", "--save", str(path))
    assert_one_line(rc, err, "--save")
    assert "epoch" not in out  # refused before training
    if kind == "device":
        assert stat.S_ISCHR(os.stat(path).st_mode)


# --- item 7: the CLI prints no tracebacks -----------------------------------------------


def test_fused_workspace_is_sized_by_the_rows():
    _backend("numba")
    X, y = _problem(n=40)
    trainer = Trainer(nn.MLP([12, 8, 4], rng=0), backend="numba", batch_size=10**9, engine="fused")
    history = trainer.fit(X, y, 1, verbose=0)
    assert history["engine"] == ["fused"]


def test_cli_huge_batch_fused_trains_in_a_child():
    _backend("numba")
    rc, out, err = cli("train", "--backend", "numba", "--engine", "fused", "--batch-size", "1000000000",
                       "--epochs", "1", "--hidden", "16")
    assert rc == 0, err
    assert "test accuracy" in out


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_cuda_check_output_is_checked_before_compiling(tmp_path, where):
    path = tmp_path / "missing" / "x.md" if where == "missing" else tmp_path
    rc, out, err = cli("cuda-check", "--output", str(path), timeout=60)
    assert_one_line(rc, err, "--output")


@pytest.mark.parametrize("form", [["-o", "{}"], ["--output={}"], ["-o{}"]])
def test_bench_output_is_checked_first(form):
    rc, out, err = cli("bench", *[w.format("/nonexistent/x.md") for w in form], timeout=60)
    assert_one_line(rc, err, "/nonexistent")


def _has_tbb():
    try:
        import tbb  # noqa: F401
    except ImportError:
        return False
    return True


ENVIRONMENTS = [
    ({"NUMBA_NUM_THREADS": "0"}, "NUMBA_NUM_THREADS"),
    ({"NUMBA_NUM_THREADS": "two"}, "NUMBA_NUM_THREADS"),
    ({"NUMBA_THREADING_LAYER": "bogus"}, "NUMBA_THREADING_LAYER"),
    ({"KERNPROP_GEMM_KERNEL": "bogus"}, "KERNPROP_"),
    ({"KERNPROP_CYTHON_GEMM_KERNEL": "bogus"}, "KERNPROP_"),
]
if not _has_tbb():
    ENVIRONMENTS.append(({"NUMBA_THREADING_LAYER": "tbb"}, "NUMBA_THREADING_LAYER"))


@pytest.mark.parametrize("env, word", ENVIRONMENTS, ids=[f"{k}={v}" for (e, _) in ENVIRONMENTS for k, v in e.items()])
def test_info_names_a_bad_environment_variable(env, word):
    if "CYTHON" in next(iter(env)):
        _backend("cython")
    rc, out, err = cli("info", env=env)
    assert_one_line(rc, err, word, "kernprop info")


@pytest.mark.parametrize("env, word, backend", [
    ({"NUMBA_NUM_THREADS": "0"}, "NUMBA_NUM_THREADS", "numpy"),
    ({"NUMBA_THREADING_LAYER": "bogus"}, "NUMBA_THREADING_LAYER", "numba"),
    ({"KERNPROP_GEMM_KERNEL": "bogus"}, "KERNPROP_", "numba"),
    ({"KERNPROP_CYTHON_GEMM_KERNEL": "bogus"}, "KERNPROP_", "cython"),
])
def test_train_names_a_bad_environment_variable(env, word, backend):
    if backend != "numpy":
        _backend(backend)
    rc, out, err = cli("train", "--backend", backend, "--epochs", "1", env=env)
    assert_one_line(rc, err, word, "kernprop train")
    assert "does not fit the model" not in err


# --- item 8: messages say what is wrong -------------------------------------------------


def test_a_bad_gemm_override_is_not_called_a_shape_mismatch_in_fit():
    _backend("numba")
    code = ("import numpy as np\nfrom kernprop import nn\nfrom kernprop.train import Trainer\n"
            "X = np.ones((16, 8), np.float32); y = np.arange(16) % 3\n"
            "try:\n    Trainer(nn.MLP([8, 3], rng=0), backend='numba').fit(X, y, verbose=0)\n"
            "except ValueError as exc:\n    print('ERROR', exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S,
                            env=dict(os.environ, NUMBA_NUM_THREADS="1", KERNPROP_GEMM_KERNEL="bogus"))
    assert "ERROR" in result.stdout and "KERNPROP_" in result.stdout, result.stdout + result.stderr
    assert "does not fit the model" not in result.stdout


@pytest.mark.parametrize("kind, word", [("directory", "is a directory"), ("fifo", "FIFO"),
                                        ("device", "character device")])
def test_cli_data_says_what_the_path_is(tmp_path, kind, word):
    path = {"directory": tmp_path, "fifo": tmp_path / "fifo", "device": "/dev/null"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    rc, out, err = cli("train", "--backend", "numpy", "--data", str(path), timeout=60)
    assert_one_line(rc, err, "data file", word)
    assert "does not exist" not in err


def test_cli_hidden_names_the_option_for_non_ascii_digits():
    rc, out, err = cli("train", "--backend", "numpy", "--hidden", "²", timeout=60)
    assert_one_line(rc, err, "--hidden")


@pytest.mark.parametrize("value", [np.array(["relu"]), ["relu"], 1])
def test_activation_that_is_not_a_string_is_named(value):
    with pytest.raises((TypeError, ValueError), match="activation"):
        nn.MLP([4, 3, 2], activation=value)
    import kernprop

    x, w = np.ones((2, 4), np.float32), np.ones((4, 3), np.float32)
    with pytest.raises((TypeError, ValueError), match="activation"):
        kernprop.linear(x, w, activation=value, backend="numpy")


# --- item 3: MPI: ranks that fail or differ end every rank with one error ---------------

try:
    from test_distributed import MPIRUN, WHY, run_mpi
except ImportError:  # run from elsewhere: the helpers live beside this file
    MPIRUN, WHY, run_mpi = None, "tests/test_distributed.py not importable", None

needs_mpi = pytest.mark.skipif(MPIRUN is None, reason=f"MPI tests need mpi4py and mpirun: {WHY}")
TRAIN = [sys.executable, "-m", "kernprop.cli", "train", "--distributed", "mpi", "--backend", "numpy",
         "--epochs", "1", "--hidden", "16"]


def _mpmd(rank0, rank1):
    """An mpirun MPMD command line: one rank with each extra option list."""
    return ["-n", "1", *TRAIN, *rank0, ":", "-n", "1", *TRAIN, *rank1]


@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("rank0, rank1, words", [
    (["--lr", "0.1"], ["--lr", "0.2"], ["rank 1", "--lr"]),
    (["--optimizer", "sgd"], ["--optimizer", "momentum"], ["rank 1", "--optimizer"]),
    ([], ["--engine", "fused"], ["rank 1", "fused"]),
    ([], ["--threads", "1000"], ["rank 1", "--threads"]),
    (["--save", "/nonexistent/dir/x.npz"], ["--save", "/nonexistent/dir/x.npz"], ["rank 0", "--save"]),
    ([], ["--data", "/nonexistent.npz"], ["rank 1", "does not exist"]),
], ids=["lr", "momentum", "engine", "threads", "save", "data"])
def test_mpi_ranks_that_fail_or_differ_all_end_with_the_error(tmp_path, rank0, rank1, words):
    result = run_mpi(None, _mpmd(rank0, rank1), tmp_path, timeout=90)
    assert result.returncode == 2, f"{result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.startswith("kernprop train:")]
    assert len(lines) == 2, result.stderr  # one line from each rank
    for line in lines:  # the failing rank states its error, the other names that rank too
        for word in words[1:]:
            assert word in line, result.stderr
    assert any(words[0] in line for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    assert "test accuracy" not in result.stdout


MPI_FIT = """
import sys
import numpy as np
from kernprop import nn, optim
from kernprop.train import Trainer
from mpi4py import MPI
rank = MPI.COMM_WORLD.Get_rank()
rng = np.random.default_rng(0)
X = rng.standard_normal((64, 8)); y = rng.integers(0, 3, 64)
setting = sys.argv[1]
opt = optim.SGD(0.1 if setting != "lr" or rank == 0 else 0.2,
                momentum=0.9 if setting != "momentum" or rank == 0 else 0.5)
epochs = 2 if setting != "epochs" or rank == 0 else 3
trainer = Trainer(nn.MLP([8, 8, 3], rng=0, dtype=np.float64), optimizer=opt, backend="numpy", batch_size=16,
                  distributed="mpi")


def callback(epoch, logs):  # "callback": rank 1 alone changes the rate mid-fit
    if setting == "callback" and rank == 1:
        opt.lr = 0.05


try:
    trainer.fit(X, y, epochs, verbose=0, callbacks=[callback])
except ValueError as exc:
    print(f"rank {rank}: {exc}", flush=True)
    sys.exit(3)
print(f"rank {rank}: trained", flush=True)
"""


@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("setting, word", [("lr", "optimizer lr"), ("momentum", "optimizer momentum"),
                                           ("epochs", "epochs"), ("callback", "optimizer lr")])
def test_mpi_fit_with_different_hyperparameters_fails_on_every_rank(tmp_path, setting, word):
    (tmp_path / "fit.py").write_text(MPI_FIT)
    result = run_mpi(2, [sys.executable, "fit.py", setting], tmp_path, timeout=90)
    assert result.returncode == 3, f"{result.returncode}\n{result.stdout}\n{result.stderr}"
    for rank in (0, 1):
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"rank {rank}:"))
        assert word in line and "rank 1 has" in line, result.stdout
