"""Cython embedding: loaders over ``kernprop._cy.embedding`` (pyx/embedding.pyx).

The backward's order: the positions sorted stably by id (NumPy's stable argsort keeps
the positions of one id in their order), and where each distinct id's run begins.
"""

import numpy as np

from kernprop._cy import embedding as _cy


def embedding_forward(ids, table):
    # ids (any shape) int64 in [0, V), table (V, C) -> ids.shape + (C,)
    flat = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    out = np.empty((flat.size, table.shape[1]), dtype=table.dtype)
    _cy.embedding_forward(flat, table, out)
    return out.reshape(*ids.shape, table.shape[1])


def embedding_backward(ids, dy, num_embeddings):
    # dy ids.shape + (C,) -> dtable (num_embeddings, C), each id's rows summed in position order
    channels = dy.shape[-1]
    flat = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    order = np.argsort(flat, kind="stable")
    sorted_ids = flat[order]
    run_starts = np.concatenate(([0], np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1, [flat.size]))
    # np.zeros: calloc'd, so the rows of ids that never occur are never touched
    dtable = np.zeros((num_embeddings, channels), dtype=dy.dtype)
    _cy.embedding_backward(flat, order.astype(np.int64, copy=False), run_starts.astype(np.int64),
                           np.ascontiguousarray(dy).reshape(-1, channels), dtable)
    return dtable
