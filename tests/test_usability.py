"""What a PyTorch or scikit-learn user tries first (issue 18): top-level names, array-likes
and DLPack tensors, errors in the user's terms, docstrings on every public callable."""

import importlib
import subprocess
import sys

import numpy as np
import pytest

import kernprop

PUBLIC_MODULES = (
    "kernprop", "kernprop.ops", "kernprop.backends", "kernprop.precision", "kernprop.warmup",
    "kernprop.nn", "kernprop.optim", "kernprop.train", "kernprop.data", "kernprop.checkpoint",
    "kernprop.distributed", "kernprop.engines", "kernprop.cli", "kernprop.cuda_check",
)


# --- top-level names ------------------------------------------------------------------


def test_training_names_reachable_from_import_kernprop():
    from kernprop import nn, optim, train

    assert kernprop.nn is nn and kernprop.optim is optim
    assert kernprop.Trainer is train.Trainer
    assert kernprop.SGD is optim.SGD and kernprop.Adam is optim.Adam
    assert kernprop.MLP is nn.MLP
    assert callable(kernprop.load_digits)
    assert {"nn", "optim", "Trainer"} <= set(dir(kernprop))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kernprop.nope


def test_import_kernprop_stays_lazy():
    code = (
        "import sys, kernprop; "
        "print(sorted(m for m in ('kernprop.train', 'kernprop.nn', 'kernprop.engines', 'numba') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_module_has_all(name):
    module = importlib.import_module(name)
    assert isinstance(module.__all__, list)
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ lists {attr!r}, which it lacks"
    assert "np" not in module.__all__
