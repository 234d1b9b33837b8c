"""Regression tests for issue 16: every entry point refuses what a kernel cannot run on,
before the kernel runs, with a ValueError/TypeError naming the argument (the CLI: one
line and exit status 2).  One test per class of failure seen: crashes (run in a child
process, so a segfault fails the test instead of killing the run), silent wrong answers
(integer wrap-around, aliasing), hangs (MPI), memory (checkpoints, the CLI) and unclear
errors (recursion, overflow, tracebacks)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest

import kernprop
from kernprop import cli, nn, optim
from kernprop.backends import NAMES, status
from kernprop.checkpoint import MAX_DEPTH, checksum
from kernprop.train import Trainer

CPU_BACKENDS = [name for name in NAMES if name != "cuda"]


def _cpu_backend(name):
    state = status(name)
    if not state.available:
        pytest.skip(f"backend {name} unavailable: {state.reason}")
    return name


def run_child(code, timeout=240):
    """``code`` in a fresh interpreter; returns (returncode, stdout + stderr).  A
    negative return code is a signal (a segfault is -11)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=timeout, env=dict(os.environ, NUMBA_NUM_THREADS="1"))
    return result.returncode, result.stdout + result.stderr


# --- crash: the loss weight is checked against the model's outputs ----------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_short_class_weight_is_refused_before_any_kernel_in_a_child(backend):
    _cpu_backend(backend)
    code, out = run_child(f"""
        import numpy as np
        from kernprop import nn, optim
        from kernprop.train import Trainer
        X = np.ones((8, 8), np.float32)
        y = np.arange(8) % 4
        try:
            Trainer(nn.MLP([8, 4, 4], rng=0), "cross_entropy", optim.SGD(lr=0.1), backend={backend!r},
                    batch_size=8, weight=np.ones(2, np.float32)).fit(X, y, verbose=0)
        except ValueError as exc:
            print("refused:", exc)
    """)
    assert code == 0, out
    assert "refused: weight must have shape (4,) (one weight per class of the model's 4 outputs), got (2,)" in out


def test_class_weight_is_checked_at_fit_for_a_model_of_unknown_width():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.MLP([3, 5], rng=0)

        def children(self):
            return [self.inner]

        def parameters(self):
            return self.inner.parameters()

        def forward(self, x):
            return self.inner.forward(x)

    trainer = Trainer(Custom(), backend="numpy", weight=np.ones(2))  # width unknown: not refused yet
    with pytest.raises(ValueError, match=r"weight must have shape \(5,\)"):
        trainer.fit(np.ones((4, 3)), np.zeros(4, np.int64), verbose=0)


@pytest.mark.parametrize("weight, message", [
    (np.array([1.0, np.nan, 1.0]), "weight must be finite"),
    (np.ones((3, 1)), "weight must be a non-empty 1-D array"),
    (np.ones(0), "weight must be a non-empty 1-D array"),
])
def test_bad_class_weights_are_refused_at_loss_construction(weight, message):
    with pytest.raises(ValueError, match=message):
        nn.make_loss("cross_entropy", weight=weight)


def test_the_loss_keeps_its_own_copy_of_the_weights():
    weight = np.ones(3)
    trainer = Trainer(nn.MLP([2, 3], rng=0), backend="numpy", weight=weight)
    weight[:] = np.nan  # the caller's array changes after the check
    assert np.isfinite(trainer.loss.weight).all()


def test_edited_checkpoint_with_recomputed_checksum_is_refused_in_a_child(tmp_path):
    X = np.ones((8, 4), np.float32)
    y = np.arange(8) % 3
    trainer = Trainer(nn.MLP([4, 3], rng=0), backend="numpy", weight=np.ones(3))
    trainer.fit(X, y, verbose=0)
    path = trainer.save(tmp_path / "ok.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["loss.weight"] = np.ones(1)  # a 1-element weight for 3 classes: a read past it
    arrays.pop("checksum")
    arrays["checksum"] = np.array(checksum(arrays))  # unkeyed: anyone can recompute it
    np.savez(tmp_path / "edited.npz", **arrays)
    for backend in CPU_BACKENDS:
        if not status(backend).available:
            continue
        code, out = run_child(f"""
            from kernprop.train import Trainer
            try:
                Trainer.load({str(tmp_path / "edited.npz")!r}, backend={backend!r})
            except ValueError as exc:
                print("refused:", exc)
        """)
        assert code == 0, out
        assert "refused:" in out and "loss.weight" in out, out


# --- silent wrong answers: integers and aliasing ------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64])
def test_labels_of_every_integer_dtype_are_range_checked_before_conversion(dtype):
    info = np.iinfo(dtype)
    X = np.ones((4, 3))
    trainer = Trainer(nn.MLP([3, 4], rng=0, dtype=np.float64), backend="numpy")
    y = np.array([0, 1, 2, 3], dtype=dtype)
    trainer.evaluate(X, y)
    y[2] = info.max  # uint64: 2**64 - 1 would wrap to -1 in int64
    with pytest.raises(ValueError, match=rf"y\[2\] = {info.max} is out of range"):
        trainer.fit(X, y, verbose=0)
    with pytest.raises(ValueError, match=rf"labels\[2\] = {info.max} is out of range"):
        kernprop.cross_entropy(X[:, :3], y, backend="numpy")


def test_uint64_label_that_would_wrap_to_ignore_index_is_refused():
    y = np.array([0, 1, 2**64 - 100], np.uint64)  # int64(2**64 - 100) == -100 == ignore_index
    with pytest.raises(ValueError, match=r"labels\[2\] = 18446744073709551516 is out of range"):
        kernprop.cross_entropy(np.ones((3, 3)), y)
    trainer = Trainer(nn.MLP([3, 3], rng=0, dtype=np.float64), backend="numpy")
    with pytest.raises(ValueError, match=r"y\[2\] = 18446744073709551516 is out of range"):
        trainer.fit(np.ones((3, 3)), y, verbose=0)


@pytest.mark.parametrize("call, message", [
    (lambda: kernprop.cross_entropy(np.ones((2, 3)), np.zeros(2, int), ignore_index=10**20), "ignore_index must be an int in"),
    (lambda: nn.make_loss("cross_entropy", ignore_index=-(10**20)), "ignore_index must be an int in"),
    (lambda: Trainer(nn.MLP([2, 3], rng=0), ignore_index=2**63), "ignore_index must be an int in"),
    (lambda: kernprop.adam_step(np.ones(3), np.ones(3), np.zeros(3), np.zeros(3), 2**70), "step must be an int in"),
    (lambda: kernprop.linear_cross_entropy(np.ones((2, 2)), np.ones((2, 3)), None, np.zeros(2, int), chunk_size=2**64),
     "chunk_size must be an int in"),
])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_python_ints_beyond_int64_are_a_value_error_naming_the_argument(backend, call, message):
    with kernprop.use_backend(_cpu_backend(backend)):
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_optimizer_steps_refuse_arguments_that_share_memory(backend):
    _cpu_backend(backend)
    buf = np.zeros(8)
    with pytest.raises(ValueError, match="param and grad share memory"):
        kernprop.sgd_step(buf[:4], buf[2:6], lr=0.1, backend=backend)
    p, g = np.ones(4), np.ones(4)
    with pytest.raises(ValueError, match="param and grad share memory"):
        kernprop.sgd_step(p, p, lr=0.1, backend=backend)
    with pytest.raises(ValueError, match="grad and velocity share memory"):
        kernprop.sgd_step(p, g, g, lr=0.1, momentum=0.9, backend=backend)
    m = np.zeros(4)
    with pytest.raises(ValueError, match="exp_avg and exp_avg_sq share memory"):
        kernprop.adam_step(p, g, m, m, 1, backend=backend)
    assert (p == 1).all() and (m == 0).all(), "a refused step wrote"
    # separate halves of one buffer are fine
    state = np.zeros(8)
    kernprop.adam_step(p, g, state[:4], state[4:], 1, backend=backend)


def test_trainer_refuses_parameters_that_share_memory():
    model = nn.MLP([3, 3, 3], rng=0, bias=False)
    model.layers[2].set_parameters([model.layers[0].weight])  # tied weights
    with pytest.raises(ValueError, match="model parameters 0 and 1 share memory"):
        Trainer(model, backend="numpy")


# --- bounded checkpoint loading -----------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    trainer = Trainer(nn.MLP([4, 5, 3], rng=0), optimizer=optim.Adam(), backend="numpy")
    trainer.fit(np.ones((6, 4), np.float32), np.arange(6) % 3, verbose=0)
    return trainer.save(tmp_path / "ok.npz")


def _add_entry(path, out, name, array_bytes, compress=True):
    """Copy the checkpoint at ``path`` with one more entry ``name`` holding ``array_bytes``."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(name, array_bytes, compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
    return out


def _npy(shape, dtype=np.float32):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros(shape, dtype))
    return buffer.getvalue()


def test_checkpoint_entry_outside_the_format_is_refused_unread(saved, tmp_path):
    bad = _add_entry(saved, tmp_path / "extra.npz", "junk.npy", _npy((4096, 4096)))  # 64 MiB of zeros
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="unexpected entry 'junk.npy'"):
            Trainer.load(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"reading a refused entry took {peak} bytes"


def test_checkpoint_state_of_the_wrong_shape_is_refused_before_its_data(saved, tmp_path):
    with np.load(saved) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["optimizer.exp_avg.0"] = np.zeros((2048, 2048), np.float32)  # 16 MiB, stored
    arrays.pop("checksum")
    arrays["checksum"] = np.array(checksum(arrays))
    np.savez(tmp_path / "big.npz", **arrays)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"optimizer.exp_avg.0 holds float32 of shape \(2048, 2048\)"):
            Trainer.load(tmp_path / "big.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"checking a refused entry took {peak} bytes"


def test_checkpoint_entry_claiming_a_huge_expansion_is_refused(saved, tmp_path):
    bad = tmp_path / "bomb.npz"
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    # What a crafted file can claim: ~4 GiB from a few compressed bytes (the central
    # directory record's uncompressed size, 24 bytes into it; the name starts at 46).
    raw = bytearray(bad.read_bytes())
    name = b"param.0.npy"
    record = next(i for i in range(len(raw)) if raw[i:i + 4] == b"PK\x01\x02" and raw[i + 46:i + 46 + len(name)] == name)
    raw[record + 24:record + 28] = (0xFFFFFFF0).to_bytes(4, "little")
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="param.0.npy' claims to expand"):
        Trainer.load(bad)


def test_deeply_nested_architecture_is_a_value_error(saved, tmp_path):
    # 900 Sequentials, one inside the other (json.dumps itself would recurse too deep)
    linear = json.dumps({"type": "Linear", "in_features": 4, "out_features": 3, "bias": True})
    config = '{"type": "Sequential", "layers": [' * 900 + linear + "]}" * 900
    with np.load(saved) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["architecture"] = np.array([config])
    arrays.pop("checksum")
    arrays["checksum"] = np.array(checksum(arrays))
    np.savez(tmp_path / "deep.npz", **arrays)
    with pytest.raises(ValueError, match=f"nested .*{MAX_DEPTH}"):
        Trainer.load(tmp_path / "deep.npz")


def test_checkpoint_with_a_step_count_beyond_int64_is_refused(saved, tmp_path):
    with np.load(saved) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["optimizer.steps"] = np.array(np.iinfo(np.int64).max)  # the next Adam step overflows
    arrays.pop("checksum")
    arrays["checksum"] = np.array(checksum(arrays))
    np.savez(tmp_path / "steps.npz", **arrays)
    with pytest.raises(ValueError, match="optimizer.steps must be an int in"):
        Trainer.load(tmp_path / "steps.npz")


def test_failed_checkpoint_write_leaves_no_temporary_file(tmp_path):
    trainer = Trainer(nn.MLP([2, 2], rng=0), backend="numpy")
    target = tmp_path / "a_directory"
    target.mkdir()
    with pytest.raises(OSError):
        trainer.save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["a_directory"]


# --- the CLI: one line, exit status 2, before training -------------------------------------


def _data(tmp_path, X, y):
    path = tmp_path / f"data{len(list(tmp_path.glob('data*.npz')))}.npz"
    np.savez(path, X=X, y=y)
    return str(path)


def _cli_cases(tmp_path):
    X = np.random.default_rng(0).standard_normal((40, 3))
    y = np.arange(40) % 2
    X_nan, y_neg, y_huge = X.copy(), y.copy(), y.copy()
    X_nan[5, 1] = np.nan
    y_neg[3] = -4
    y_huge[7] = 10**9
    (tmp_path / "dir").mkdir()
    return [
        (["--backend", "bogus"], "unknown backend 'bogus'"),
        (["--threads", "9999"], "--threads 9999 is more than the"),
        (["--threads", "0"], "argument --threads: expected a positive integer"),
        (["--save", str(tmp_path / "missing" / "x.npz")], "does not exist"),
        (["--save", str(tmp_path / "dir")], "is a directory"),
        (["--seed", "-1"], "--seed must be a non-negative integer"),
        (["--data", _data(tmp_path, X_nan, y)], "X must be finite, row 5"),
        (["--data", _data(tmp_path, X, y_neg)], r"y\[3\] = -4: class labels must be >= 0"),
        (["--data", _data(tmp_path, X, y_huge)], "pass --allow-many-classes"),
        (["--data", _data(tmp_path, X, y.astype(np.uint64) + np.uint64(2**63))], "does not fit in int64"),
        (["--lr", "nan"], "lr must be finite"),
        (["--hidden", "x"], "--hidden takes positive integers"),
        (["--bogus-option"], "unrecognized arguments"),
    ]


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    import re

    for args, message in _cli_cases(tmp_path):
        try:
            code = cli.main(["train", "--epochs", "1", "--hidden", "4", *args])
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
        captured = capsys.readouterr()
        assert code == 2, (args, captured)
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kernprop train: "), (args, captured.err)
        assert re.search(message, lines[0]), (args, lines[0])
        assert "epoch" not in captured.out, f"{args}: training started before the error"
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == [], "a temporary file was left"


def test_cli_huge_class_count_runs_with_the_flag_refused_without(tmp_path, capsys):
    X = np.random.default_rng(0).standard_normal((60, 3))
    y = np.arange(60) % 3
    y[0] = 199  # 200 classes for 60 rows
    data = _data(tmp_path, X, y)
    assert cli.main(["train", "--data", data, "--epochs", "1", "--hidden", "4", "--backend", "numpy"]) == 2
    assert "pass --allow-many-classes" in capsys.readouterr().err
    assert cli.main(["train", "--data", data, "--epochs", "1", "--hidden", "4", "--backend", "numpy",
                     "--allow-many-classes"]) == 0


def test_cli_error_in_a_real_process_is_one_line():
    result = subprocess.run([sys.executable, "-m", "kernprop.cli", "train", "--backend", "bogus"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("kernprop train: "), result.stderr


# --- MPI: a rank with bad data fails every rank, no hang ------------------------------------


BAD_RANK = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mpi4py import MPI
    from kernprop import nn
    from kernprop.train import Trainer

    rank = MPI.COMM_WORLD.Get_rank()
    X = np.random.default_rng(0).standard_normal((32, 4))
    y = np.arange(32) % 3
    if rank == 1:
        if sys.argv[1] == "labels":
            y[5] = 7
        elif sys.argv[1] == "nan":
            X[2, 2] = np.nan
        else:
            X = X[:, :3]
    trainer = Trainer(nn.MLP([4, 3], rng=0, dtype=np.float64), backend="numpy", batch_size=8, distributed="mpi")
    try:
        trainer.fit(X, y, 2, verbose=0)
    except (ValueError, TypeError) as exc:
        print(f"rank {rank} refused: {exc}", flush=True)
    """
)


@pytest.mark.mpi
@pytest.mark.parametrize("bad, message", [
    ("labels", r"y\[5\] = 7 is out of range"),
    ("nan", "X must be finite"),
    ("features", "features"),
])
def test_a_rank_with_bad_data_fails_every_rank_without_a_hang(tmp_path, bad, message):
    from test_distributed import MPIRUN, WHY, run_mpi

    if MPIRUN is None:
        pytest.skip(f"MPI tests need mpi4py and mpirun: {WHY}")
    import re

    (tmp_path / "bad_rank.py").write_text(BAD_RANK)
    result = run_mpi(2, [sys.executable, "bad_rank.py", bad], tmp_path, timeout=90)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    lines = sorted(line for line in result.stdout.splitlines() if "refused" in line)
    assert len(lines) == 2, result.stdout + result.stderr
    assert lines[0].startswith("rank 0 refused: rank 1 of 2 failed its checks: ") and re.search(message, lines[0])
    assert lines[1].startswith("rank 1 refused: ") and re.search(message, lines[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_momentum_that_rounds_to_zero_in_the_dtype_is_refused(backend):
    # Found by the fuzz suite: the kernels compute in float32, where 1e-102 is 0 (no
    # velocity update), while the reference kept it.
    p, g, v = np.ones(3, np.float32), np.ones(3, np.float32), np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="momentum must be 0 or at least"):
        kernprop.sgd_step(p, g, v, lr=0.1, momentum=1e-102, backend=_cpu_backend(backend))
    kernprop.sgd_step(p.astype(np.float64), g.astype(np.float64), v.astype(np.float64), lr=0.1,
                      momentum=1e-102, backend=backend)  # representable in float64


# --- bounds-checked kernels (the CI job runs this file under NUMBA_BOUNDSCHECK=1) ----------


def test_bounds_checked_numba_kernels_turn_a_missing_check_into_an_error():
    """What the bounds-checked job is for: with the checks bypassed (the raw kernels,
    as the trainer calls them), a class weight too short for the logits is an
    IndexError instead of a read of the memory after it."""
    import numba

    if not numba.config.BOUNDSCHECK:
        pytest.skip("runs under NUMBA_BOUNDSCHECK=1 (the bounds-checked CI job)")
    _cpu_backend("numba")
    kernels = nn.raw_kernels("numba")
    logits, y = np.ones((8, 4), np.float32), np.arange(8) % 4
    with pytest.raises(IndexError):
        kernels.cross_entropy_with_grad(logits, y, "mean", -100, 0.0, np.ones(2, np.float32))


SAVE_FAILS = textwrap.dedent(
    """
    import os
    import numpy as np
    from mpi4py import MPI
    from kernprop import nn
    from kernprop.train import Trainer

    rank = MPI.COMM_WORLD.Get_rank()
    trainer = Trainer(nn.MLP([4, 3], rng=0), backend="numpy", batch_size=8, distributed="mpi")
    os.makedirs("a_directory", exist_ok=True)
    try:
        trainer.save("a_directory")  # rank 0 cannot write there; rank 1 must not wait for it
    except OSError as exc:
        print(f"rank {rank} refused: {exc}", flush=True)
    """
)


@pytest.mark.mpi
def test_a_failed_distributed_save_fails_every_rank_without_a_hang(tmp_path):
    from test_distributed import MPIRUN, WHY, run_mpi

    if MPIRUN is None:
        pytest.skip(f"MPI tests need mpi4py and mpirun: {WHY}")
    (tmp_path / "save_fails.py").write_text(SAVE_FAILS)
    result = run_mpi(2, [sys.executable, "save_fails.py"], tmp_path, timeout=90)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    lines = sorted(line for line in result.stdout.splitlines() if "refused" in line)
    assert len(lines) == 2 and "rank 1 refused: rank 0 of 2 failed its checks" in lines[1], result.stdout


def test_checkpoint_with_nesterov_but_no_momentum_is_refused(tmp_path):
    trainer = Trainer(nn.MLP([2, 2], rng=0), optimizer=optim.SGD(0.1), backend="numpy")
    path = trainer.save(tmp_path / "ok.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["optimizer.nesterov"] = np.array(1.0)
    arrays.pop("checksum")
    arrays["checksum"] = np.array(checksum(arrays))
    np.savez(tmp_path / "nesterov.npz", **arrays)
    with pytest.raises(ValueError, match="nesterov requires momentum"):
        Trainer.load(tmp_path / "nesterov.npz")


def test_bounds_checked_cython_build_turns_a_missing_check_into_an_error():
    """The same for the Cython build with bounds checks that CI makes on a copy of the
    source (KERNPROP_CYTHON_BOUNDSCHECK=1 is set there)."""
    if os.environ.get("KERNPROP_CYTHON_BOUNDSCHECK") != "1":
        pytest.skip("runs against the bounds-checked Cython build of the CI job")
    _cpu_backend("cython")
    kernels = nn.raw_kernels("cython")
    logits, y = np.ones((8, 4), np.float32), np.arange(8) % 4
    with pytest.raises(IndexError):
        kernels.cross_entropy_with_grad(logits, y, "mean", -100, 0.0, np.ones(2, np.float32))


@pytest.mark.parametrize("call, error, message", [
    (lambda: kernprop.ops.default_chunk_size(0, 4), ValueError, "num_classes must be an int in"),
    (lambda: kernprop.ops.default_chunk_size(10, "a"), TypeError, "itemsize must be an int"),
    (lambda: kernprop.set_num_threads(10**6), ValueError, "n must be at most"),
    (lambda: kernprop.train_test_split([1, 2], np.arange(2)), TypeError, "X must be a numpy.ndarray"),
    (lambda: kernprop.train_test_split(np.ones((5, 2)), np.arange(4)), ValueError, "y must have one entry per row"),
    (lambda: kernprop.train_test_split(np.ones((5, 2)), np.arange(5), "x"), TypeError, "test_fraction must be"),
])
def test_small_public_helpers_name_the_argument(call, error, message):
    # A ZeroDivisionError, AttributeError or Numba's unnamed message before.
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("call, error, message", [
    (lambda: nn.Linear(10**20, 3), ValueError, "in_features x out_features"),
    (lambda: Trainer(nn.MLP([2, 2], rng=0), seed="x"), TypeError, "seed must be"),
    (lambda: Trainer(nn.MLP([2, 2], rng=0), seed=-1), ValueError, "seed must be"),
])
def test_model_sizes_and_seeds_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
