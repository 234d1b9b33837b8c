"""The chunk loop of the fused linear + cross-entropy, written once for every backend.

``linear_cross_entropy(x, w, b, labels, ...)`` never holds the full (N, C) logits: the
rows go through in chunks, and per chunk the backend's kernels compute the chunk's
logits into one reused (chunk, C) buffer, its cross-entropy row kernel turns them into
their gradient in place (loss and gradient in one pass, as Liger-Kernel's fused linear
cross-entropy), and the products take dx, dw and db from that gradient before the next
chunk overwrites it.  The "mean" denominator depends on the labels alone, so each
backend computes it before the first chunk, and every chunk's gradient is final when
computed.  Each backend's ``losses.linear_cross_entropy`` allocates the outputs, gives
this loop its kernels and reduces the row losses.
"""

from __future__ import annotations


def linear_cross_entropy_chunks(x, num_classes, chunk_size, empty, forward, rows, backward):
    # x (N, IN) -> per chunk of at most chunk_size rows start:stop, in order:
    #   forward(x_chunk, logits)             logits (stop - start, C) = x_chunk @ w + b, into
    #                                        the one buffer empty((chunk, C)) made here
    #   rows(logits, start, stop)            the backend's cross-entropy row kernel: the
    #                                        rows' losses, their gradient written over logits
    #   backward(x_chunk, g, start, stop)    dx[start:stop] = g @ w.T, dw (+)= x_chunk.T @ g,
    #                                        db (+)= column sums of g (added to when start > 0)
    n = x.shape[0]
    chunk = min(chunk_size, n)
    buffer = empty((chunk, num_classes))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x_chunk = x[start:stop]
        logits = buffer[: stop - start]
        forward(x_chunk, logits)
        rows(logits, start, stop)
        backward(x_chunk, logits, start, stop)
