"""Step engines: how ``Trainer.fit`` trains a batch.  ``fit`` keeps the epoch loop
(shuffling, history, callbacks, progress bar); an engine, chosen once per fit, runs the
steps.  Each is a small object behind one interface (``engines/base.py``):

=============  =====================================================  =======================
engine         a step is                                              file
=============  =====================================================  =======================
``layerwise``  each layer's kernel, the loss's, the optimizer's,      ``engines/layerwise.py``
               per parameter array (any backend, model and loss)
``packed``     ``layerwise`` over one flat buffer each of             ``engines/layerwise.py``
               parameters, gradients and optimizer state: one
               optimizer call per step
``fused``      numba: the whole step of a small MLP in one compiled   ``engines/fused_mlp.py``
               call per epoch (its kernel: ``engines/mlp_step.py``)
``device``     cuda: ``layerwise`` with the parameters, optimizer     ``engines/device.py``
               state and rows resident on the GPU
``sequence``   a GPT on (N, T) token ids: features, the fused head    ``engines/sequence.py``
               and cross-entropy (``linear_cross_entropy``),
               backward, update
=============  =====================================================  =======================

``distributed="mpi"`` wraps the engine in ``DataParallel`` (``engines/data_parallel.py``),
which adds one gradient ``Allreduce`` per step; its name is ``mpi(<engine>)``.

The rule (``choose``), for ``engine="auto"``, in this order:

0. a sequence model (``nn.GPT``): ``sequence`` (the only engine that takes one; CPU
   backends);
1. the ``cuda`` backend: ``device``;
2. distributed: ``layerwise`` (each rank's shard, then the Allreduce);
3. the ``numba`` backend, a model the fused step takes (``fused_mlp.plan``) and a step of
   at most ``fused_limit()`` multiply-adds: ``fused``.  Measured while the fused step was
   serial: with 2 numba threads it won up to ~100M multiply-adds per step (1.2x at
   784-256-10 batch 128, 78M) and the parallel layer-by-layer kernels from ~200M
   (0.8-1.0x at 784-512-256-10 batch 256, 411M); with 1 thread it won at every size
   measured, up to those 411M (1.4x) (bench/TRAIN_STEP.md, 2-core AMD EPYC Zen 4).  Its
   larger products now run on two threads (``mlp_step``), which can only move the
   crossing up;
4. more than one parameter array and at most ``PACK_MAX_PARAMS`` parameters: ``packed``
   (the gradient copy into the flat buffer costs more than the optimizer calls it saves
   for big models: 784-512-256-10 at batch 256, 535K parameters, numba, SGD: 4.15-4.41 ms
   per step packed, 3.96-4.12 ms not);
5. otherwise ``layerwise``.

The rule does not depend on ``Trainer(precision=...)``: the fused step always computes
in fp32 (at the sizes it takes, packing and edge tiles cost as much as the products, so
rounding operands to bf16 would not pay), and a larger model runs layer by layer, its
products at the Trainer's precision.  ``Trainer.precision_in_effect`` says which.

A name (``Trainer(..., engine="fused")``) skips the rule; an engine that cannot run the
fit (``fused`` off numba or for a model it does not take, ``device`` off cuda, ``fused``
or ``device`` distributed) is a ValueError saying why.  The choice and its reason are
recorded: ``history["engine"]`` per epoch, ``Trainer.engine_choice``.
"""

from __future__ import annotations

from ..backends import get_num_threads
from .base import Engine
from .data_parallel import DataParallel
from .device import DeviceEngine
from .fused_mlp import FusedMLPEngine, multiply_adds, plan
from .layerwise import LayerwiseEngine, PackedEngine
from .sequence import SequenceEngine, takes as sequence_takes

__all__ = ["ENGINES", "Engine", "LayerwiseEngine", "PackedEngine", "FusedMLPEngine", "DeviceEngine",
           "DataParallel", "SequenceEngine", "check", "choose", "make", "fused_limit"]

ENGINES = {"layerwise": LayerwiseEngine, "packed": PackedEngine, "fused": FusedMLPEngine,
           "device": DeviceEngine, "sequence": SequenceEngine}
ENGINE_CHOICES = ("auto", *ENGINES)

FUSED_MAX_MACS = 100_000_000  # multiply-adds per step, with more than one numba thread
PACK_MAX_PARAMS = 65_536


def fused_limit(threads=None):
    """The most multiply-adds per step that ``auto`` runs fused: ``FUSED_MAX_MACS`` with
    more than one numba thread, 4x that with one (see rule 3)."""
    threads = get_num_threads() if threads is None else threads
    return FUSED_MAX_MACS if threads > 1 else 4 * FUSED_MAX_MACS


def choose(model, loss, optimizer, backend, batch_size, distributed=False):
    """``(engine name, reason)`` by the rule of the module docstring."""
    if getattr(model, "sequence_model", False):
        return "sequence", "a sequence model: features, fused head and loss, backward"
    if backend == "cuda":
        return "device", "the cuda backend: parameters stay on the GPU"
    if distributed:
        return "layerwise", "distributed: each rank's shard layer by layer, then the Allreduce"
    params = model.parameters()
    if backend == "numba":
        layers, why = plan(model, loss, optimizer)
        macs, limit = multiply_adds(model, batch_size), fused_limit()
        if layers is not None and macs <= limit:
            return "fused", f"numba, a small MLP: {macs:,} multiply-adds per step <= {limit:,}"
    size = sum(p.size for p in params)
    if len(params) > 1 and size <= PACK_MAX_PARAMS:
        return "packed", f"{size:,} parameters <= {PACK_MAX_PARAMS:,}: one optimizer call per step"
    return "layerwise", f"{size:,} parameters in {len(params)} arrays"


def check(name, model, loss, optimizer, backend, distributed=False):
    """A ValueError saying why engine ``name`` cannot train this model on ``backend``."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINE_CHOICES}, got {name!r}")
    if name == "device" and backend != "cuda":
        raise ValueError(f"engine 'device' runs on the cuda backend, not {backend!r}")
    if name != "device" and backend == "cuda":
        raise ValueError(f"the cuda backend trains with engine 'device', not {name!r}")
    if name == "fused" and backend != "numba":
        raise ValueError(f"engine 'fused' runs on the numba backend, not {backend!r}")
    sequence = getattr(model, "sequence_model", False)
    if name == "sequence" or sequence:
        if name != "sequence":
            raise ValueError(f"a {type(model).__name__} trains with engine 'sequence', not {name!r}")
        if backend == "cuda":
            raise ValueError("engine 'sequence' runs on the CPU backends, not 'cuda'")
        why = sequence_takes(model, loss)
        if why is not None:
            raise ValueError(f"engine 'sequence' does not take {why}")
    if distributed and name not in ("layerwise", "packed", "sequence"):
        raise ValueError(f"distributed training wraps engine 'layerwise', 'packed' or 'sequence', not {name!r}")
    if name == "fused":
        layers, why = plan(model, loss, optimizer)
        if layers is None:
            raise ValueError(f"engine 'fused' does not take {why}")


def make(name, model, loss, optimizer, kernels, backend, batch_size, dist=None, rng=None, data=None):
    """The engine ``name`` (not "auto") for this fit, wrapped in ``DataParallel`` when
    ``dist`` (an ``MPIContext``) is given; a ValueError when it cannot run the fit."""
    check(name, model, loss, optimizer, backend, dist is not None)
    if name == "fused":
        engine = FusedMLPEngine(model, loss, optimizer, kernels, batch_size)
    else:
        engine = ENGINES[name](model, loss, optimizer, kernels)
    return engine if dist is None else DataParallel(engine, dist, rng, data, batch_size)
