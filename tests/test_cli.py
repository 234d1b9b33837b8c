"""`kernprop train` and `kernprop info` from the command line (in-process, via main)."""

import subprocess
import sys

import numpy as np
import pytest

import kernprop
from kernprop import cli
from kernprop.train import Trainer


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = kernprop.get_num_threads()
    yield
    kernprop.set_num_threads(threads)


def test_train_smoke_saves_a_loadable_checkpoint(tmp_path, capsys):
    path = tmp_path / "digits.npz"
    code = cli.main(["train", "--backend", "numpy", "--epochs", "2", "--hidden", "32",
                     "--save", str(path), "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "epoch 2/2" in out and "test accuracy:" in out and "samples/s" in out
    assert "engine: packed (" in out  # the step engine and why, as Trainer chose it
    accuracy = float(out.split("test accuracy:")[1].split()[0])
    assert accuracy > 0.8
    trainer = Trainer.load(path)
    assert trainer.model.config()["layers"][0]["out_features"] == 32


def test_train_default_backend_and_optimizers(capsys):
    for optimizer in ("sgd", "momentum", "adam"):
        assert cli.main(["train", "--epochs", "1", "--optimizer", optimizer, "--hidden", "16",
                         "--threads", "1", "--batch-size", "64"]) == 0
        assert "test accuracy:" in capsys.readouterr().out


def test_train_engine_by_name(capsys):
    assert cli.main(["train", "--backend", "numpy", "--epochs", "1", "--hidden", "8", "--engine", "layerwise"]) == 0
    assert "engine: layerwise (asked for by name)" in capsys.readouterr().out
    assert cli.main(["train", "--backend", "numpy", "--epochs", "1", "--engine", "fused"]) == 2
    assert "engine 'fused' runs on the numba backend" in capsys.readouterr().err


def test_train_on_a_user_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    X = (y[:, None] * 2.0 + rng.normal(size=(200, 3))).astype(np.float32)
    data = tmp_path / "data.npz"
    np.savez(data, X=X, y=y)
    assert cli.main(["train", "--data", str(data), "--backend", "numpy", "--epochs", "3",
                     "--hidden", "8,4", "--lr", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "MLP 3-8-4-2" in out and "160 train, 40 test" in out


def test_train_reports_bad_input(tmp_path, capsys):
    assert cli.main(["train", "--data", str(tmp_path / "missing.npz"), "--backend", "numpy"]) == 2
    assert "missing.npz" in capsys.readouterr().err
    np.savez(tmp_path / "nolabels.npz", X=np.ones((5, 2)))
    assert cli.main(["train", "--data", str(tmp_path / "nolabels.npz"), "--backend", "numpy"]) == 2
    assert "no array 'y'" in capsys.readouterr().err
    assert cli.main(["train", "--hidden", "64,x", "--backend", "numpy"]) == 2
    assert "--hidden" in capsys.readouterr().err
    assert cli.main(["train", "--lr", "-1", "--backend", "numpy"]) == 2
    assert "lr" in capsys.readouterr().err
    assert cli.main(["train", "--label-smoothing", "2", "--backend", "numpy"]) == 2
    assert "label_smoothing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--epochs", "0"])


def test_hidden_sizes_parse():
    assert cli._hidden_sizes(["64,32"]) == [64, 32]
    assert cli._hidden_sizes(["64", "32"]) == [64, 32]
    assert cli._hidden_sizes([""]) == []


def test_info_still_works(capsys):
    assert cli.main(["info"]) == 0
    assert "backends:" in capsys.readouterr().out


def test_train_as_a_program():
    # A pipe is not a terminal: no progress bar, one line per epoch on stdout instead.
    run = subprocess.run([sys.executable, "-m", "kernprop.cli", "train", "--epochs", "2", "--backend", "numpy"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "epoch 1/2" in run.stdout and "test accuracy:" in run.stdout
    assert "it/s" not in run.stderr and "samples/s]" not in run.stderr


def test_a_reader_that_goes_away_gets_no_traceback():
    # kernprop info | head -1, at its worst: the reader is gone before the first line
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-m", "kernprop", "info"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    child.stdout.close()
    err = child.stderr.read()
    assert child.wait(timeout=300) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-2000:]
