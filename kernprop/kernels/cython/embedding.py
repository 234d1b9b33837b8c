"""Cython embedding: loaders over ``kernprop._cy.embedding`` (pyx/embedding.pyx).

The backward's order: the positions sorted stably by id (NumPy's stable argsort keeps
the positions of one id in their order), and where each distinct id's run begins.

The gradient table is mostly zeros: only the rows of ids that occur are written, so it
is allocated as zero pages the kernel maps on first write.  ``np.zeros`` does that too
(calloc), but NumPy asks for transparent huge pages from 4 MiB, and then one row
written zeroes a whole 2 MiB page: 2048 ids into a 50257x768 float32 table zeroed all
154 MB (the time of writing every zero, PyTorch's cost).  A private anonymous mapping
without huge pages zeroes 4 KiB pages, only those of the rows written (measured on an
AMD EPYC Zen 3, shared: 35-64 ms against 82-96 ms with np.zeros).
"""

import mmap

import numpy as np

from kernprop._cy import embedding as _cy

# from this size NumPy's own allocation would be given huge pages
_LAZY_ZEROS_BYTES = 1 << 22


def _lazy_zeros(shape, dtype):
    # an array of zeros whose pages are mapped 4 KiB at a time, when first written
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < _LAZY_ZEROS_BYTES or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.zeros(shape, dtype=dtype)
    pages = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    pages.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(pages, dtype=dtype).reshape(shape)


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
    dtable = _lazy_zeros((num_embeddings, channels), dy.dtype)
    _cy.embedding_backward(flat, order.astype(np.int64, copy=False), run_starts.astype(np.int64),
                           np.ascontiguousarray(dy).reshape(-1, channels), dtable)
    return dtable
