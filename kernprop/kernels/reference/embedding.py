"""Reference embedding lookup and its gradient, as ``torch.nn.functional.embedding``."""

import numpy as np


def embedding_forward(ids, table):
    # ids (any shape) int64 in [0, V), table (V, C) -> ids.shape + (C,)
    return table[ids]


def embedding_backward(ids, dy, num_embeddings):
    # dtable[v] = sum of dy at the positions where ids == v, in the order of the
    # positions (np.add.at adds unbuffered, one position after another)
    channels = dy.shape[-1]
    dtable = np.zeros((num_embeddings, channels), dtype=dy.dtype)
    np.add.at(dtable, ids.reshape(-1), dy.reshape(-1, channels))
    return dtable
