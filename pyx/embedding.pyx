# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Embedding lookup and its gradient for the ``cython`` backend.

Forward: a ``prange`` over positions, each copying its table row (``memcpy`` when the
table's rows are contiguous, element by element for a strided table: a transposed view
is read where it lies, never copied whole).

Backward: ``dtable[v]`` is the sum of ``dy`` at the positions where ``ids == v``.  The
loader sorts the positions by id, stably (so the positions of one id stay in their
order), and marks where each distinct id's run starts.  A ``prange`` over (run, chunk
of channels) then gives every output element to one task, which adds that id's rows
of ``dy`` in position order onto the zeros of ``dtable``: ``0 + dy[p0] + dy[p1] + ...``,
the very sums ``np.add.at`` makes, so the bits are the reference's at any thread count.
``dtable`` arrives as zero pages mapped on first write (see the loader), and only the
rows of ids that occur are written, each first stored (0 + dy) and then added to.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memcpy

include "_grain.pxi"


cdef enum:
    # Channels per task of the backward: a long run of one id (a padding token) is
    # still split across threads when the rows are wide.
    CHANNEL_CHUNK = 256


def embedding_forward(const int64_t[::1] ids, const floating[:, :] table, floating[:, ::1] out):
    # ids (n,) in [0, V), table (V, C) any strides -> out (n, C) = table[ids]
    # IN ids (validated in range), table; OUT out
    cdef Py_ssize_t i, j, n = ids.shape[0], c = table.shape[1]
    cdef bint rows_contiguous = table.strides[1] == sizeof(floating)
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n * c > PARALLEL_MIN_WORK):
        if rows_contiguous:
            memcpy(&out[i, 0], &table[ids[i], 0], c * sizeof(floating))
        else:
            for j in range(c):
                out[i, j] = table[ids[i], j]


def embedding_backward(const int64_t[::1] ids, const int64_t[::1] order,
                       const int64_t[::1] run_starts, const floating[:, ::1] dy,
                       floating[:, ::1] dtable):
    # ids (n,), dy (n, C) -> dtable (V, C) += the rows of dy summed per id
    # IN ids; order (n,): the positions sorted stably by id; run_starts (runs + 1,):
    #    where each distinct id's run begins in order, then n; dy
    # OUT dtable: zeros on entry; the rows of the ids that occur are written
    cdef Py_ssize_t nruns = run_starts.shape[0] - 1, c = dy.shape[1]
    cdef Py_ssize_t nchunks = (c + CHANNEL_CHUNK - 1) // CHANNEL_CHUNK
    cdef Py_ssize_t task, run, j0, j1, j, k
    cdef int64_t v, p
    cdef floating zero = 0
    for task in prange(nruns * nchunks, nogil=True, schedule="dynamic", chunksize=16,
                       use_threads_if=dy.shape[0] * c > PARALLEL_MIN_WORK):
        run = task // nchunks
        j0 = (task % nchunks) * CHANNEL_CHUNK
        j1 = min(j0 + CHANNEL_CHUNK, c)
        v = ids[order[run_starts[run]]]
        # the first row is stored, not added: dtable's page is never read before it is
        # written (a read maps the shared zero page, and the write after it copies that
        # page: two faults, and for a huge page 2 MiB zeroed); 0 + dy, not dy, so a -0.0
        # comes out +0.0 as np.add.at's first addition gives it
        p = order[run_starts[run]]
        for j in range(j0, j1):
            dtable[v, j] = zero + dy[p, j]
        for k in range(run_starts[run] + 1, run_starts[run + 1]):
            p = order[k]
            for j in range(j0, j1):
                dtable[v, j] += dy[p, j]
