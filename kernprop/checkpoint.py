"""Checkpoints: a ``Trainer`` as one ``.npz`` file, read without pickle.

Format (version ``FORMAT_VERSION``), one entry per name:

=====================  ==========================================================
``format_version``     int64 scalar
``architecture``       1-D array of JSON strings, one ``nn.to_config`` per top-level
                       layer (one entry for a single layer)
``trainer``            JSON: container ("Sequential" or "single"), loss and its
                       options, batch_size, backend, seed, epochs_done, rng_state
``param.<i>``          the model's ``parameters()`` in order
``loss.weight``        the class weights (float64), when the loss has them
``optimizer.<key>``    ``Optimizer.state_dict()``
``checksum``           SHA-256 of every other entry's name, dtype, shape and bytes
=====================  ==========================================================

``write`` goes to a temporary file then renames it, so a crash never leaves half a
checkpoint.  ``read`` refuses (ValueError) a file that is truncated, altered (checksum),
of another version, or whose arrays do not fit its architecture, checking the shapes
(``nn.parameter_shapes``) before any layer allocates what it claims to need.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np

from . import nn
from .optim import OPTIMIZERS

__all__ = ["FORMAT_VERSION", "checksum", "to_arrays", "write", "read"]

FORMAT_VERSION = 1


def checksum(arrays):
    """SHA-256 over every entry's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def to_arrays(trainer):
    """The checkpoint's entries for ``trainer`` (see the module docstring)."""
    model, loss = trainer.model, trainer.loss
    if isinstance(model, nn.Sequential):
        layers, container = [nn.to_config(layer) for layer in model.layers], "Sequential"
    else:
        layers, container = [nn.to_config(model)], "single"
    settings = {
        "container": container,
        "loss": getattr(loss, "name", "custom"),
        "loss_kwargs": loss.kwargs() if hasattr(loss, "kwargs") else {},
        "batch_size": trainer.batch_size,
        "backend": trainer.backend,
        "seed": trainer.seed if isinstance(trainer.seed, (int, type(None))) else None,
        "epochs_done": trainer.epochs_done,
        "rng_state": trainer.rng.bit_generator.state,
    }
    arrays = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "architecture": np.array([json.dumps(c, sort_keys=True) for c in layers]),
        "trainer": np.array(json.dumps(settings, sort_keys=True)),
    }
    for i, p in enumerate(model.parameters()):
        arrays[f"param.{i}"] = p
    weight = getattr(loss, "weight", None)
    if weight is not None:
        arrays["loss.weight"] = np.asarray(weight, dtype=np.float64)
    for key, value in trainer.optimizer.state_dict().items():
        arrays[f"optimizer.{key}"] = value
    arrays["checksum"] = np.array(checksum(arrays))
    return arrays


def write(trainer, path):
    """Write ``trainer`` to ``path`` (temporary file, then rename); returns the path."""
    path = os.fspath(path)
    buffer = io.BytesIO()
    np.savez(buffer, **to_arrays(trainer))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(tmp, path)
    return path


def read(path, trainer_class, backend=None, loss=None, engine="auto"):
    """A ``trainer_class`` (``Trainer``) restored from ``path``; ``backend`` overrides the
    saved one, ``loss`` is needed when the saved trainer used a custom loss object,
    ``engine`` is passed on."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except Exception as exc:  # noqa: BLE001 - zip, npy and pickle refusals all mean "bad file"
        raise ValueError(f"{path!r} is not a readable kernprop checkpoint (truncated or corrupt?): {exc}") from None
    try:
        return from_arrays(arrays, trainer_class, backend, loss, engine)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path!r} is not a valid kernprop checkpoint: {exc}") from None


def _check_header(arrays):
    for key in ("format_version", "architecture", "trainer", "checksum"):
        if key not in arrays:
            raise ValueError(f"missing {key!r}")
    try:
        version = int(arrays["format_version"])
    except (TypeError, ValueError):
        raise ValueError("format_version is not an integer") from None
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version}, this kernprop reads version {FORMAT_VERSION}")
    stored = arrays.pop("checksum")
    if stored.dtype.kind != "U" or stored.shape != () or str(stored) != checksum(arrays):
        raise ValueError("checksum mismatch (the file was altered or damaged)")


def _model(arrays, settings):
    arch = arrays["architecture"]
    if arch.dtype.kind != "U" or arch.ndim != 1:
        raise ValueError("architecture must be a 1-D array of JSON strings")
    configs = [json.loads(str(s)) for s in arch]
    # Shapes first, from the stored arrays: a bad architecture fails here, before any
    # layer allocates what it claims to need.
    shapes = [shape for c in configs for shape in nn.parameter_shapes(c)]
    for i, shape in enumerate(shapes):
        saved = arrays.get(f"param.{i}")
        if saved is None or saved.shape != shape:
            got = "missing" if saved is None else f"shape {saved.shape}"
            raise ValueError(f"param.{i} is {got}, the architecture needs {shape}")
    layers = [nn.from_config(c) for c in configs]
    model = nn.Sequential(*layers) if settings.get("container") == "Sequential" else layers[0]
    params = model.parameters()
    for i, p in enumerate(params):
        saved = arrays[f"param.{i}"]
        if saved.dtype != p.dtype:
            raise ValueError(f"param.{i} has shape {saved.shape} {saved.dtype}, the architecture needs {p.shape} {p.dtype}")
        p[...] = saved
    if f"param.{len(params)}" in arrays:
        raise ValueError("more parameters than the architecture has")
    return model


def from_arrays(arrays, trainer_class, backend=None, loss=None, engine="auto"):
    """A trainer from a checkpoint's entries; ValueError when they are not valid."""
    _check_header(arrays)
    settings = json.loads(str(arrays["trainer"]))
    if not isinstance(settings, dict):
        raise ValueError("trainer settings must be a JSON object")
    model = _model(arrays, settings)
    opt = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer.")}
    kind = str(opt.get("kind", ""))
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer kind {kind!r}")
    optimizer = OPTIMIZERS[kind](lr=float(opt.get("lr", 0.0)))
    optimizer.load_state_dict(opt)
    optimizer.init_state(model.parameters())  # the state must fit these parameters
    if loss is None:
        loss_name = settings.get("loss")
        if loss_name not in nn.LOSSES:
            raise ValueError(f"the checkpoint used loss {loss_name!r}; pass loss= to load it")
        kwargs = dict(settings.get("loss_kwargs") or {})
        if "loss.weight" in arrays:
            kwargs["weight"] = arrays["loss.weight"]
        loss = nn.make_loss(loss_name, **kwargs)
    trainer = trainer_class(
        model, loss=loss, optimizer=optimizer,
        backend=backend if backend is not None else settings.get("backend"),
        batch_size=settings.get("batch_size", 128), seed=settings.get("seed"), engine=engine,
    )
    trainer.epochs_done = int(settings.get("epochs_done", 0))
    if settings.get("rng_state") is not None:
        trainer.rng.bit_generator.state = settings["rng_state"]
    return trainer
