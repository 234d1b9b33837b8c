"""CUDA embedding lookup and its deterministic gradient, as ``torch.nn.functional.embedding``.

Kernels:
    embedding_forward_kernel   out[p, c] = table[ids[p], c], a grid-stride loop over the
                               (positions x C) outputs; consecutive threads take
                               consecutive columns of one row (coalesced reads and writes).
    embedding_backward_kernel  dtable[v, c] = the rows of dy at the positions of id v,
                               added one after another in the order of the positions.

Determinism without atomics: the host sorts the positions by id (a stable argsort of the
validated ids, which are on the host anyway) and counts each id's positions, so each id
owns a contiguous run of ``order``; one thread per (id, column) adds its run from zero in
position order.  That is ``np.add.at``'s order, so the result is the reference's bits, on
every run and device.  Every element of dtable is written (0 for an absent id): no fill
of the (V, C) table first.  An id repeated at many positions is one thread's serial sum
per column; the order of the sum is the contract, so it is not split.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import cuda

from ._common import any_device, elementwise_grid, finish, numba_type, to_device, to_device_flat


@lru_cache(maxsize=None)
def _kernels(dtype):
    T = numba_type(dtype)

    @cuda.jit
    def embedding_forward_kernel(ids, table, out):
        # ids (P,) int64 in [0, V), table (V, C) -> out (P, C)
        width = table.shape[1]
        for e in range(cuda.grid(1), out.shape[0] * width, cuda.gridsize(1)):
            p = e // width
            c = e - p * width
            out[p, c] = table[ids[p], c]

    @cuda.jit
    def embedding_backward_kernel(order, offsets, dy, dtable):
        # order (P,) positions sorted by id, offsets (V + 1,) run of id v = order[offsets[v]:
        # offsets[v + 1]], dy (P, C) -> dtable (V, C)
        width = dy.shape[1]
        for e in range(cuda.grid(1), dtable.shape[0] * width, cuda.gridsize(1)):
            v = e // width
            c = e - v * width
            total = T(0)
            for k in range(offsets[v], offsets[v + 1]):
                total += dy[order[k], c]
            dtable[v, c] = total

    return embedding_forward_kernel, embedding_backward_kernel


def embedding_forward(ids, table):
    # ids (any shape) int64 in [0, V) on the host, table (V, C) -> ids.shape + (C,)
    on_device = any_device(table)
    d_table = to_device(table)
    dtype = np.dtype(d_table.dtype)
    flat = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    width = d_table.shape[1]
    out = cuda.device_array((flat.shape[0], width), dtype=dtype)
    forward, _ = _kernels(dtype)
    blocks, threads = elementwise_grid(flat.shape[0] * width)
    forward[blocks, threads](cuda.to_device(flat), d_table, out)
    return finish(out.reshape(tuple(ids.shape) + (width,)), on_device)


def sort_positions(ids, num_embeddings):
    """(order, offsets): the positions of the flattened ``ids`` sorted by id, stably (so
    each id's positions stay in increasing order), and where each id's run starts in
    ``order``: id v occupies ``order[offsets[v]:offsets[v + 1]]``."""
    flat = np.asarray(ids, dtype=np.int64).reshape(-1)
    order = np.argsort(flat, kind="stable").astype(np.int64)
    offsets = np.zeros(num_embeddings + 1, dtype=np.int64)
    np.cumsum(np.bincount(flat, minlength=num_embeddings), out=offsets[1:])
    return order, offsets


def embedding_backward(ids, dy, num_embeddings):
    # ids (any shape) on the host, dy ids.shape + (C,) -> dtable (num_embeddings, C)
    on_device = any_device(dy)
    width = tuple(dy.shape)[-1]  # (the simulator's device shapes take no negative index)
    positions = int(np.prod(ids.shape))
    d_dy = to_device_flat(dy).reshape(positions, width)
    dtype = np.dtype(d_dy.dtype)
    order, offsets = sort_positions(ids, num_embeddings)
    dtable = cuda.device_array((num_embeddings, width), dtype=dtype)
    _, backward = _kernels(dtype)
    blocks, threads = elementwise_grid(num_embeddings * width)
    backward[blocks, threads](cuda.to_device(order), cuda.to_device(offsets), d_dy, dtable)
    return finish(dtable, on_device)
