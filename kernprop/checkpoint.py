"""Checkpoints: a ``Trainer`` as one ``.npz`` file, read without pickle.

Format (version ``FORMAT_VERSION``), one entry per name:

=====================  ==========================================================
``format_version``     int64 scalar
``architecture``       1-D array of JSON strings, one ``nn.to_config`` per top-level
                       layer (one entry for a single layer)
``trainer``            JSON: container ("Sequential" or "single"), loss and its
                       options, batch_size, backend, seed, epochs_done, rng_state,
                       precision
``param.<i>``          the model's ``parameters()`` in order
``loss.weight``        the class weights (float64), when the loss has them
``optimizer.<key>``    ``Optimizer.state_dict()``
``checksum``           SHA-256 of every other entry's name, dtype, shape and bytes
=====================  ==========================================================

``write`` goes to a temporary file in the destination's directory, then renames it
over the destination (``os.replace``), so a crash never leaves half a checkpoint (nor,
when the write fails, the temporary file).  A symlink is followed: its target is
written and the link stays.  The destination must be a regular file or a new path:
a directory, FIFO or device is refused (``check_destination``) before anything is
written.  A checkpoint written from a callback during ``fit`` holds the parameters and
optimizer state as the Trainer keeps them outside a fit (``Trainer.training_state``),
so it loads like any other.

``read`` is bounded: it opens the zip itself and reads only the entries the format
defines (any other name is refused unread); the text entries first, capped at
``MAX_TEXT_BYTES``, with the architecture nested at most ``MAX_DEPTH`` deep; then each
array's ``.npy`` header, whose declared dtype and shape must be the ones the
architecture needs (``nn.parameter_shapes``: parameters, optimizer state, one class
weight per output) before a byte of its data is read; and an entry may not claim to
expand more than ``MAX_EXPANSION`` times its compressed size, so what a file can make
``read`` decompress or allocate is bounded by the file's size and its architecture.  The
parameters, optimizer state and loss options are then checked against each other by
the constructors they go through (``Optimizer.load_state_dict``, ``Trainer``).  Any
failure is a ValueError naming the file and the entry.

The checksum is an unkeyed SHA-256: it detects corruption (a truncated or damaged
file), not tampering.  Anyone can edit a checkpoint and recompute it, so it is no
signature; what makes an edited file safe to load is the checking above, which refuses
whatever a kernel could not run on, not the checksum.  Load checkpoints you trust to
hold the training you expect.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import zipfile

import numpy as np

from . import nn
from ._validate import INT64_MAX, check_int, file_kind
from .optim import OPTIMIZERS

__all__ = ["FORMAT_VERSION", "MAX_TEXT_BYTES", "MAX_DEPTH", "MAX_EXPANSION", "checksum", "to_arrays",
           "check_destination", "NotAFileError", "write", "read"]

FORMAT_VERSION = 1
MAX_TEXT_BYTES = 4 << 20  # a text entry (architecture, trainer settings) or a scalar
MAX_DEPTH = 64  # Sequential inside Sequential: deeper is refused before any recursion
MAX_EXPANSION = 200  # bytes an entry may inflate to per compressed byte (np.savez stores: 1)
_MAX_OPTIMIZER_STATE = 4  # state arrays per parameter (Adam has 2)
_MAX_OPTIMIZER_SCALARS = 32  # kind, steps and hyperparameters


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
        "precision": trainer.precision,
    }
    arrays = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "architecture": np.array([json.dumps(c, sort_keys=True) for c in layers]),
        "trainer": np.array(json.dumps(settings, sort_keys=True)),
    }
    # During a fit the engine may hold the parameters and state flat or on a device:
    # training_state gives them per parameter, on the host, as read expects them.
    params, state = trainer.training_state()
    for i, p in enumerate(params):
        arrays[f"param.{i}"] = np.array(p, copy=True)
    weight = getattr(loss, "weight", None)
    if weight is not None:
        arrays["loss.weight"] = np.asarray(weight, dtype=np.float64)
    for key, value in trainer.optimizer.state_dict(state).items():
        arrays[f"optimizer.{key}"] = value
    arrays["checksum"] = np.array(checksum(arrays))
    return arrays


class NotAFileError(OSError, ValueError):
    """A checkpoint's destination is a directory, FIFO, device or socket: an OSError
    (as writing there would be) and a ValueError (as every refused argument is)."""


def check_destination(path):
    """The file a checkpoint for ``path`` is written to: ``path`` itself, or the target
    of a symlink (followed to the end).  ``NotAFileError`` (an OSError and a
    ValueError) when that is not a regular file or a new path (a directory, FIFO,
    device or socket), FileNotFoundError when its directory does not exist; what
    cannot be written then fails as the operating system says, in ``write``."""
    target = os.path.realpath(os.fspath(path))
    kind = file_kind(target)
    if kind is not None and kind != "a regular file":
        shown = os.fspath(path) if target == os.path.abspath(path) else f"{os.fspath(path)} (-> {target})"
        raise NotAFileError(f"{shown} is {kind}: a checkpoint is written to a regular file or a new path")
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{path}: directory {parent} does not exist")
    return target


def write(trainer, path):
    """Write ``trainer`` to ``path`` (temporary file beside the destination, then
    ``os.replace``; a symlink's target is written); returns the path."""
    path = os.fspath(path)
    target = check_destination(path)
    buffer = io.BytesIO()
    np.savez(buffer, **to_arrays(trainer))
    directory, name = os.path.split(target)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        # O_EXCL: never through a file or link someone else put there; 0o666 less the
        # umask, as open() would create the file, or the mode of the file it replaces
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path


def read(path, trainer_class, backend=None, loss=None, engine="auto"):
    """A ``trainer_class`` (``Trainer``) restored from ``path``; ``backend`` overrides the
    saved one, ``loss`` is needed when the saved trainer used a custom loss object,
    ``engine`` is passed on."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = _read_bounded(zf)
    except _Invalid as exc:
        raise ValueError(f"{path!r} is not a valid kernprop checkpoint: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - zip and npy refusals all mean "bad file"
        raise ValueError(f"{path!r} is not a readable kernprop checkpoint (truncated or corrupt?): {exc}") from None
    try:
        return from_arrays(arrays, trainer_class, backend, loss, engine)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise ValueError(f"{path!r} is not a valid kernprop checkpoint: {exc}") from None


class _Invalid(ValueError):
    """A checkpoint that reads, but not as the format says."""


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_ENTRY = re.compile(r"(format_version|architecture|trainer|checksum|loss\.weight|param\.(\d+)"
                    r"|optimizer\.([A-Za-z_]\w*)(?:\.(\d+))?)\.npy")


def _read_bounded(zf):
    """The checkpoint's entries, each checked against the format (and the arrays
    against the architecture) before its data is read (see the module docstring)."""
    entries = {}
    for info in zf.infolist():
        match = _ENTRY.fullmatch(info.filename)
        if match is None:
            raise _Invalid(f"unexpected entry {info.filename!r} (not part of the format)")
        if info.filename[:-4] in entries:
            raise _Invalid(f"entry {info.filename!r} appears twice")
        if info.file_size > MAX_EXPANSION * max(info.compress_size, 1) + 4096:
            raise _Invalid(f"entry {info.filename!r} claims to expand {info.file_size} bytes from "
                           f"{info.compress_size} (more than {MAX_EXPANSION}x)")
        entries[info.filename[:-4]] = (info, match)
    for key in ("format_version", "architecture", "trainer", "checksum"):
        if key not in entries:
            raise _Invalid(f"missing {key!r}")

    def text(key, ndim):
        return _read_npy(zf, entries[key][0], key, lambda shape, dtype: (
            dtype.kind == "U" and len(shape) == ndim, f"a {ndim}-D text array"), MAX_TEXT_BYTES)

    arrays = {"format_version": _read_npy(zf, entries["format_version"][0], "format_version",
                                          lambda shape, dtype: (dtype.kind in "iu" and shape == (), "an integer"),
                                          64)}
    arrays.update(architecture=text("architecture", 1), trainer=text("trainer", 0), checksum=text("checksum", 0))
    configs = _configs(arrays["architecture"])
    try:
        shapes = [shape for c in configs for shape in nn.parameter_shapes(c)]
    except ValueError as exc:
        raise _Invalid(f"architecture: {exc}") from None
    outputs = _outputs(configs)
    optimizer_scalars, state_names = 0, set()
    for key, (info, match) in entries.items():
        if key in arrays:
            continue
        _, param, opt_name, opt_index = match.groups()
        if param is not None or opt_index is not None:
            i = int(param if param is not None else opt_index)
            if i >= len(shapes):
                raise _Invalid(f"{key} is beyond the architecture's {len(shapes)} parameters")
            if opt_index is not None:
                state_names.add(opt_name)
                if len(state_names) > _MAX_OPTIMIZER_STATE:
                    raise _Invalid(f"more than {_MAX_OPTIMIZER_STATE} kinds of optimizer state")
            expected, what = shapes[i], f"a float array of shape {shapes[i]} (parameter {i})"
            arrays[key] = _read_npy(zf, info, key, lambda shape, dtype: (
                dtype in _FLOATS and shape == expected, what), None)
        elif key == "loss.weight":
            arrays[key] = _read_npy(zf, info, key, lambda shape, dtype: (
                dtype in _FLOATS and shape == (outputs,), f"a float array of shape ({outputs},), one weight "
                "per output"), None)
        else:  # optimizer.<name>: kind, steps, a hyperparameter
            optimizer_scalars += 1
            if optimizer_scalars > _MAX_OPTIMIZER_SCALARS:
                raise _Invalid(f"more than {_MAX_OPTIMIZER_SCALARS} optimizer settings")
            arrays[key] = _read_npy(zf, info, key, lambda shape, dtype: (
                shape == () and dtype.kind in "Ufiub", "a scalar"), 1024)
    return arrays


def _read_npy(zf, info, key, accept, max_bytes):
    """One ``.npy`` entry: its header is read and ``accept(shape, dtype) -> (ok, what)``
    asked before its data; ``max_bytes`` (None: no cap beyond the shape's) bounds it."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _Invalid(f"{key} is a .npy of version {version}, not 1.0 or 2.0")
        ok, what = accept(tuple(shape), dtype)
        if not ok or dtype.hasobject:
            raise _Invalid(f"{key} holds {dtype} of shape {tuple(shape)}, the format needs {what}")
        nbytes = math.prod(shape) * dtype.itemsize
        if max_bytes is not None and nbytes > max_bytes:
            raise _Invalid(f"{key} holds {nbytes} bytes, more than the {max_bytes} allowed")
        if info.file_size - f.tell() != nbytes:
            raise _Invalid(f"{key} declares {nbytes} bytes of data but its entry holds {info.file_size - f.tell()}")
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise _Invalid(f"{key} is truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _configs(architecture):
    """The layer configs of an ``architecture`` entry, nested at most ``MAX_DEPTH``."""
    if architecture.dtype.kind != "U" or architecture.ndim != 1:
        raise _Invalid("architecture must be a 1-D array of JSON strings")
    try:
        configs = [json.loads(str(s)) for s in architecture]
    except RecursionError:
        raise _Invalid(f"architecture is nested too deep (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        raise _Invalid(f"architecture is not JSON: {exc}") from None
    # Iterative depth count: parameter_shapes and from_config recurse per level.
    todo = [(c, 1) for c in configs]
    while todo:
        config, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise _Invalid(f"architecture is nested more than {MAX_DEPTH} levels deep")
        if isinstance(config, dict) and isinstance(config.get("layers"), list):
            todo.extend((c, depth + 1) for c in config["layers"])
    return configs


def _outputs(configs):
    """The architecture's number of outputs: the last Linear's ``out_features``."""
    todo, last = list(reversed(configs)), None
    while todo:
        config = todo.pop()
        if isinstance(config, dict) and config.get("type") == "Linear":
            last = config.get("out_features")
        elif isinstance(config, dict) and config.get("type") == "GPT":
            last = config.get("vocab_size")
        elif isinstance(config, dict) and isinstance(config.get("layers"), list):
            todo.extend(reversed(config["layers"]))
    return last


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
    configs = _configs(arch)
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
    if "steps" in opt:  # the kernels count Adam's steps in int64
        check_int("optimizer.steps", int(opt["steps"]), 0, INT64_MAX - 1)
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
        precision=settings.get("precision", "fp32"),  # checkpoints from before precision: fp32
    )
    trainer.epochs_done = check_int("epochs_done", settings.get("epochs_done", 0), 0)
    if settings.get("rng_state") is not None:
        trainer.rng.bit_generator.state = settings["rng_state"]
    return trainer
