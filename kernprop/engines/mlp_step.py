"""The fused engine's kernel (``fused_mlp.py`` runs it): a whole training step of a
small MLP as one Numba kernel, built from the Numba CPU families' row and block
helpers and the GEMM engine's serial driver (``kernels/numba_cpu/``), and cached with
their machine code (``kernels/numba_cpu/cache.py``).

For a model of a few thousand parameters at a small batch (the digits MLP, 64-32-10 at
batch 32) the arithmetic of a step takes a few microseconds, and the separate kernel
calls of the layer-by-layer path (forward, loss, backward, optimizer: 7 calls of at
least 2.5 us each, plus their allocations) cost more than the math.  The fused step
(``MLPStep``) does forward through every ``Linear`` (+ ReLU / Sigmoid / Tanh), softmax cross-entropy (or
MSE) with its gradient, backward, and the SGD (momentum, nesterov, weight decay) or
Adam(W) update in place, in one call, over buffers allocated once per fit.

Threads: a product of fewer than ``SPLIT_MIN_MACS`` multiply-adds runs on the calling
thread (at the digits sizes a fork/join costs more than the work it would split).  A
larger one runs on two threads, each calling the serial driver with its own pack
buffers (``_two_products``): a forward product as two halves of the batch's rows, a
layer's weight and input gradients side by side (they read the same dz and have the
same multiply-adds), the first layer's weight gradient (no input gradient beside it) by
halves of its rows.  Each output element is the same sum in the
same order either way, so the step's bits do not depend on the thread count or on the
split (``tests/test_mlp_step.py``).  scikit-learn's 100-256-128-2 at batch 200 (35M
multiply-adds a step; a 2-core Zen 3): 1.05-1.33 ms a step serial, 0.72-0.79 ms split.

Semantics: those of the layer-by-layer kernels (``matmul.linear_forward`` /
``linear_backward``, ``activations``, ``losses.cross_entropy_with_grad`` /
``mse_forward`` / ``mse_backward``, ``optimizers.sgd_step`` / ``adam_step``); sums may
round in another order, so results agree to float tolerance, not bit for bit.

Layout (what ``Trainer.fit`` keeps during a fit, see ``kernprop.engines.layerwise.PackedEngine``):
``params`` and ``grads`` are flat buffers of every layer's weight (IN, OUT) row-major
then its bias (OUT,); ``state1`` / ``state2`` the flat optimizer state (SGD velocity;
Adam exp_avg, exp_avg_sq).  The settings are named records (``LAYER`` per layer,
``LOSS``, ``OPTIMIZER``, ``WORKSPACE``; see below); each layer's three products are
the GEMM engine's ``PRODUCT`` records (``gemm.drivers``).  ``work`` holds every layer's
output (batch, OUT), two gradient buffers (batch, widest layer) that backward ping-pongs
between, the cross-entropy's scratch and the GEMM's pack buffers; ``sums`` (float64) the
cross-entropy's row statistics, then the bias gradient's column sums.

The non-GEMM parts are the family helpers the parallel kernels run per block or row, so
each formula is written once: ``losses.cross_entropy_short_rows`` (the cross-entropy of
a block of rows, which ``losses._cross_entropy_short`` runs per task; here the batch is
one block) with ``losses.mean_denominator`` and ``class_weight_total``, the MSE kernels'
serial twins, ``optimizers.sgd_update`` / ``adam_update`` (over the whole flat parameter
buffer at once).  The exception is the activation's backward,
``activations.activation_backward_in_place``: the in-place twin of the kernels'
``activation_backward_flat``, with its own loops (LLVM does not vectorise the
out-of-place loops when out is dy).  The cross-entropy was the step's own copy until
issue 31: the family's helper, the argmax found in its max loop
(``softmax.short_rows_stats``' ``preds``), costs 1.88 against 1.50 us at 32 x 10 (+0.34-0.38 us, about 2% of the digits step's 16 us on a
shared AMD EPYC Zen 3, one thread; whole steps A/B in one process: within their +-3.5%
noise); a separate argmax pass had cost another 0.05-0.1 us.

The GEMMs are the GEMM engine's serial driver (``gemm.drivers.small``) over the step's
own buffers, always fp32: at these sizes packing and edge tiles cost about as much as
the multiply-adds, so a bf16 conversion would not pay.  A product whose output is
narrower than a tile runs transposed (``gemm.drivers.narrow``), except that a layer of at
most ``gemm.drivers.THIN`` (10) outputs, a classifier's logits or a regressor's outputs,
runs its forward and weight gradient as plain loops (``thin_forward``,
``thin_weight_gradient``: a 128 -> 2 layer at batch 200 on a Zen 3 core, 44 -> 9 us, about
35 us of the 0.6-0.7 ms step on 2 threads).  Measured per
step, 64-32-10 at batch 32, float32 (shared 2-core Zen 4): forward 3.5 us (x @ w1 2.5,
of which packing x 0.9), backward 4.1 us, loss 0.9 us, update 0.3 us (SGD) / 1.1 us
(Adam); 10.3 / 11.2 us in all, 11.0 / 12.0 us called from Python; in ``Trainer.fit``
13.5 us, with the epoch's shuffle (bench/TRAIN_STEP.md).

Variants:
  1. i-k-j loops over rows with an auto-vectorised inner loop: 8 us for one 32x64x32
     product (a vector loop of 2 iterations set up per (i, k)); replaced.
  2. ``matmul._gemm_serial`` called from here: its signature changed while it was being
     tuned (and Numba's cache does not see a callee's edits); replaced.
  3. the GEMM engine's serial driver over the step's own buffers (this one).

Every kernel is ``error_model="numpy"``: Python's division check in a loop stops LLVM
from vectorising it (Adam's update: 7 us -> 1.5 us), and 0 / 0 must give nan (the mean
loss when every row is ignored), as in ``losses``.
"""

import functools

import numpy as np
from numba import njit, prange

from ..kernels.numba_cpu._jit import FASTMATH
from ..kernels.numba_cpu.gemm import KC as _KC, MR, tile_cols
from ..kernels.numba_cpu.activations import ACTIVATION_CODES, activation_backward_in_place
from ..kernels.numba_cpu.losses import (class_weight_total, cross_entropy_short_rows, mean_denominator,
                                        squared_error, squared_error_sum)
from ..kernels.numba_cpu.optimizers import adam_update, sgd_update
from ..kernels.numba_cpu.gemm.drivers import (THIN, product, product_table, small as _serial_gemm, thin_forward,
                                               thin_weight_gradient)

__all__ = ["MLPStep", "LAYER", "LOSS", "OPTIMIZER", "WORKSPACE"]

CROSS_ENTROPY, MSE = 0, 1
SGD, ADAM = 0, 1

# The step's tables, as NumPy structured arrays (records with named fields, which Numba
# reads as ``layers[l].n_in``; one array argument each, ~65 ns of dispatch).
# One record per layer: sizes, offsets into the flat parameter / gradient buffers (bias
# -1: none), the fused activation's code (``activations.ACTIVATION_CODES``), and the
# offset of the layer's output (batch, n_out) in ``work``.
LAYER = np.dtype([("n_in", np.int64), ("n_out", np.int64), ("weight", np.int64), ("bias", np.int64),
                  ("activation", np.int64), ("output", np.int64)])
# The loss (one record): CROSS_ENTROPY or MSE, reduction "mean" (else "sum"), the
# cross-entropy options, and whether to write each row's argmax.
LOSS = np.dtype([("kind", np.int64), ("mean", np.bool_), ("ignore_index", np.int64), ("weighted", np.bool_),
                 ("smoothing", np.float64), ("classify", np.bool_)])
# The optimizer (one record): SGD or ADAM and their hyperparameters (lr comes per call).
OPTIMIZER = np.dtype([("kind", np.int64), ("momentum", np.float64), ("nesterov", np.bool_),
                      ("weight_decay", np.float64), ("beta1", np.float64), ("beta2", np.float64),
                      ("eps", np.float64), ("decoupled", np.bool_)])
# Where each scratch buffer starts in ``work`` (one record): the two gradient buffers
# backward ping-pongs between, the cross-entropy's scratch (the logits' row maxima,
# logits minus them, their exps), the GEMM's pack buffers and edge tile, the class
# weights.
WORKSPACE = np.dtype([("grad_a", np.int64), ("grad_b", np.int64), ("maxes", np.int64), ("shifted", np.int64),
                      ("exps", np.int64), ("apack", np.int64), ("bpack", np.int64), ("tile", np.int64),
                      ("apack2", np.int64), ("bpack2", np.int64), ("tile2", np.int64), ("weight", np.int64),
                      ("split_macs", np.int64)])

# A product of at least this many multiply-adds runs on two threads (see _two_products):
# on a 2-core Zen 3, 64-128-10 at batch 64 (products of 2^19) took 95 us a step serial
# and 111 split; 128-128-10 at batch 128 (2^21) 236-239 either way; 100-256-128-2 at
# batch 200 (2^22.3 and up) 1075 serial, 794 from 2^19, 703 from 2^21.
SPLIT_MIN_MACS = 1 << 21


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _cross_entropy(z, labels, weight, cfg, preds, g, d, e, m, stats):
    # z (B, C) logits, labels (B,) -> the summed (or mean) loss, g (B, C) its gradient
    # (C-contiguous), preds (B,) each row's argmax, through the losses family's row
    # helper over the whole batch (losses.cross_entropy_short_rows, as its parallel
    # kernel runs it per block).  d, e (B C,), m (B,), stats (3 B,) float64: scratch.
    # "mean" divides by the summed target weights of the rows not ignored (0 / 0 = nan
    # when all are ignored; their gradient is 0).
    b, num_classes = z.shape
    denominator = mean_denominator(labels, cfg.ignore_index, weight, cfg.weighted) if cfg.mean else 1.0
    row_losses = stats[2 * b:3 * b]
    cross_entropy_short_rows(z, labels, 0, b, weight, cfg.weighted, cfg.ignore_index, cfg.smoothing,
                             1.0 / denominator, class_weight_total(weight, cfg.weighted, num_classes), True,
                             row_losses, g, d, e, m, stats[0:b], stats[b:2 * b], preds)
    total = 0.0
    for i in range(b):
        total += row_losses[i]
    return total / denominator


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _mse(pred, target, mean, g):
    # pred, target (B, OUT) -> the summed (or mean) squared error, g its gradient: the
    # losses family's MSE kernels (their serial twins)
    size = pred.shape[0] * pred.shape[1]
    flat_pred, flat_target = pred.reshape(-1), target.reshape(-1)
    total = squared_error_sum(flat_pred, flat_target)
    squared_error(flat_pred, flat_target, 2.0 / size if mean else 2.0, False, g.reshape(-1))
    return total / size if mean else total


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _two_products(a0, b0, c0, sums0, bflat0, spec0, a1, b1, c1, sums1, bflat1, spec1, bias, apack, bpack, tile,
                  apack2, bpack2, tile2):
    # c0 = a0 @ b0 and c1 = a1 @ b1 (each with its spec's epilogue; bias is read by both
    # specs that add one) at once, one per thread, each with its own pack buffers: the
    # row halves of one product, or a layer's weight and input gradients.  Each
    # is the serial driver's product, so each element of c0, c1 has the bits of one
    # thread.
    for task in prange(2):
        if task == 0:
            _serial_gemm(a0, b0, c0, bias, sums0, apack, bpack, tile, bflat0, spec0)
        else:
            _serial_gemm(a1, b1, c1, bias, sums1, apack2, bpack2, tile2, bflat1, spec1)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _view(x):
    # x itself as an array of any layout ('A'): the step passes its products' operands
    # so, and the GEMM driver is then compiled once instead of once per combination of
    # layouts (x @ w, x.T @ dz, dz @ w.T: C/C, F/C, C/F).  The digits run's first compile
    # (its numba kernels, empty cache, 2-core Zen 3) took 85-89 s with the operands
    # passed directly and 35-45 s through this function (34-43 s before the step had
    # threads).
    return x[0:x.shape[0], 0:x.shape[1]]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _mlp_step(params, grads, state1, state2, work, sums, layers, products, loss_rec, opt_rec, space_rec, x_all,
              labels_all, targets_all, preds_all, lo, hi, lr, step):
    # x = x_all[lo:hi] (B, IN0) -> one step: forward, loss and gradient, backward, update
    # in place.  Returns the batch loss, reduced as the loss's reduction, rounded to the
    # dtype.  Rows lo:hi of whole arrays: slicing here costs nothing, in Python a few
    # hundred ns per array; and every scratch buffer lives in work, since each array
    # argument costs ~65 ns of dispatch.  loss_rec, opt_rec, space_rec: one-record arrays
    # of LOSS, OPTIMIZER, WORKSPACE; layers: LAYER records; products: the GEMM engine's
    # settings (``drivers.PRODUCT``) of layer l's products at 3 l (forward), 3 l + 1
    # (dw), 3 l + 2 (dx).
    cfg = loss_rec[0]
    opt = opt_rec[0]
    space = space_rec[0]
    classify = cfg.classify
    x = x_all[lo:hi]
    labels = labels_all[lo:hi] if classify else labels_all
    preds = preds_all[lo:hi] if classify else preds_all
    targets = targets_all if classify else targets_all[lo:hi]
    b = x.shape[0]
    num_layers = layers.shape[0]
    t = params.dtype.type
    nr = tile_cols(params.itemsize)
    apack = work[space.apack:space.bpack]
    bpack = work[space.bpack:space.tile]
    tile = work[space.tile:space.tile + MR * nr].reshape((MR, nr))
    apack2 = work[space.apack2:space.bpack2]
    bpack2 = work[space.bpack2:space.tile2]
    tile2 = work[space.tile2:space.tile2 + MR * nr].reshape((MR, nr))
    split_macs = space.split_macs
    # the forward's row split: a whole number of MR panels in the first half
    split = min(b, (b // 2 + MR - 1) // MR * MR)
    bias0 = params[0:0]
    # forward: layer l reads x (l = 0) or layer l-1's output, writes its own
    for l in range(num_layers):
        layer = layers[l]
        n_in, n_out, w_off = layer.n_in, layer.n_out, layer.weight
        b_off, activation, a_off = layer.bias, layer.activation, layer.output
        if l == 0:
            inp = x
        else:
            p_out, p_off = layers[l - 1].n_out, layers[l - 1].output
            inp = work[p_off:p_off + b * p_out].reshape((b, p_out))
        w = params[w_off:w_off + n_in * n_out].reshape((n_in, n_out))
        bias = params[b_off:b_off + n_out] if b_off >= 0 else bias0
        y = work[a_off:a_off + b * n_out].reshape((b, n_out))
        spec = products[3 * l:3 * l + 1]
        if n_out <= THIN:  # the operands in their own layouts (see drivers.THIN)
            thin_forward(inp, w, y, bias, bpack, spec)
        elif b * n_in * n_out >= split_macs and 0 < split < b:  # two halves of the batch's rows
            inp_any, w_any = _view(inp), _view(w)
            _two_products(inp_any[:split], w_any, y[:split], sums, params, spec, inp_any[split:], w_any, y[split:],
                          sums, params, spec, bias, apack, bpack, tile, apack2, bpack2, tile2)
        else:
            _serial_gemm(_view(inp), _view(w), y, bias, sums, apack, bpack, tile, params, spec)
    # loss and its gradient into the first gradient buffer
    last_out, last_off = layers[num_layers - 1].n_out, layers[num_layers - 1].output
    out = work[last_off:last_off + b * last_out].reshape((b, last_out))
    da, db = space.grad_a, space.grad_b
    dz = work[da:da + b * last_out].reshape((b, last_out))
    if cfg.kind == CROSS_ENTROPY:
        weight = work[space.weight:space.weight + last_out]
        loss = _cross_entropy(out, labels, weight, cfg, preds, dz, work[space.shifted:space.shifted + b * last_out],
                              work[space.exps:space.exps + b * last_out], work[space.maxes:space.maxes + b], sums)
    else:
        loss = _mse(out, targets, cfg.mean, dz)
    # backward, last layer first; dz and dx alternate between the two buffers
    cur, other = da, db
    for l in range(num_layers - 1, -1, -1):
        layer = layers[l]
        n_in, n_out, w_off = layer.n_in, layer.n_out, layer.weight
        b_off, activation, a_off = layer.bias, layer.activation, layer.output
        if activation != 0:  # dz *= activation'(.), from the layer's output, in place
            activation_backward_in_place(work[a_off:a_off + b * n_out], work[cur:cur + b * n_out], activation)
        dz = work[cur:cur + b * n_out].reshape((b, n_out))
        if l == 0:
            inp = x
        else:
            p_out, p_off = layers[l - 1].n_out, layers[l - 1].output
            inp = work[p_off:p_off + b * p_out].reshape((b, p_out))
        w = params[w_off:w_off + n_in * n_out].reshape((n_in, n_out))
        dw = grads[w_off:w_off + n_in * n_out].reshape((n_in, n_out))
        dbias = grads[b_off:b_off + n_out] if b_off >= 0 else grads[0:0]
        dx = work[other:other + b * n_in].reshape((b, n_in))
        # dw = x.T @ dz, db = column sums of dz (float64, taken while dz is packed),
        # dx = dz @ w.T (not for the first layer): as matmul.linear_backward
        if b_off >= 0:
            for j in range(n_out):
                sums[j] = 0.0
        spec_dw, spec_dx = products[3 * l + 1:3 * l + 2], products[3 * l + 2:3 * l + 3]
        if n_out <= THIN:
            thin_weight_gradient(inp.T, dz, dw, sums, bpack, spec_dw)
            if l > 0:
                _serial_gemm(_view(dz), _view(w.T), dx, bias0, sums, apack, bpack, tile, bpack, spec_dx)
        else:
            inp_t, dz_any, w_t = _view(inp.T), _view(dz), _view(w.T)
            # the second half of a split weight gradient packs dz too: its column sums go
            # to the scratch at the end of sums
            scratch = sums[sums.shape[0] - n_out:]
            split_rows = min(n_in, (n_in // 2 + MR - 1) // MR * MR)
            big = b * n_in * n_out >= split_macs
            if big and l > 0:  # dw and dx side by side (the same multiply-adds)
                _two_products(inp_t, dz_any, dw, sums, work, spec_dw, dz_any, w_t, dx, scratch, bpack2, spec_dx,
                              bias0, apack, bpack, tile, apack2, bpack2, tile2)
            elif big and 0 < split_rows < n_in:  # the first layer: dw alone, by row halves
                _two_products(inp_t[:split_rows], dz_any, dw[:split_rows], sums, work, spec_dw, inp_t[split_rows:],
                              dz_any, dw[split_rows:], scratch, work, spec_dw, bias0, apack, bpack, tile, apack2,
                              bpack2, tile2)
            else:
                _serial_gemm(inp_t, dz_any, dw, bias0, sums, apack, bpack, tile, work, spec_dw)
                if l > 0:
                    _serial_gemm(dz_any, w_t, dx, bias0, sums, apack, bpack, tile, bpack, spec_dx)
        if b_off >= 0:
            for j in range(n_out):
                dbias[j] = sums[j]
        cur, other = other, cur
    # update, every parameter in one pass over the flat buffers
    if opt.kind == SGD:
        sgd_update(params, grads, state1, t(lr), t(opt.momentum), opt.nesterov, t(opt.weight_decay))
    else:
        beta1, beta2, wd = opt.beta1, opt.beta2, opt.weight_decay
        adam_update(params, grads, state1, state2, t(lr) / t(1 - beta1**step), t(beta1), t(beta2),
                    t(opt.eps), t(wd), opt.decoupled, t(np.sqrt(1 - beta2**step)), t(1 - beta1), t(1 - beta2),
                    t(1 - lr * wd))
    return t(loss)  # rounded as the layer-by-layer losses return it


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _mlp_steps(params, grads, state1, state2, work, sums, layers, products, loss_rec, opt_rec, space_rec, x_all,
               labels_all, targets_all, preds_all, bounds, lr, first_step, losses):
    # consecutive steps, step s on rows bounds[s, 0]:bounds[s, 1] with step count
    # first_step + s; losses[s] receives its loss.  A whole epoch in one call: from
    # Python each step costs ~2 us of dispatch and bookkeeping, 20% of the digits step.
    for s in range(bounds.shape[0]):
        losses[s] = _mlp_step(params, grads, state1, state2, work, sums, layers, products, loss_rec, opt_rec,
                              space_rec, x_all, labels_all, targets_all, preds_all, bounds[s, 0], bounds[s, 1],
                              lr, first_step + s)


class MLPStep:
    """One fit's fused step: the layer table, loss and optimizer settings, workspace.

    layers: ``[(in, out, weight offset, bias offset or -1, activation name or None)]``,
    offsets into the flat parameter buffer ``params`` (gradients: ``grads``, optimizer
    state: ``state1``, ``state2`` or None).  loss: "cross_entropy" or "mse"; reduction
    "mean" or "sum".  optimizer: "sgd" or "adam" with its hyperparameters.

    ``bind(X, y, preds)`` returns ``step(lo, hi, lr, step_count)``: one step on rows
    ``lo:hi`` of ``X`` (N, IN) and ``y`` (labels (N,) int64, or targets (N, OUT)),
    returning the loss (a float rounded to the dtype); ``preds[lo:hi]`` (int64) receives
    each row's argmax (cross-entropy).  The arrays are bound once: refill them in place.
    ``bind_steps(X, y, preds)`` returns ``steps(bounds, lr, first_step, losses)``: the
    steps on rows ``bounds[s, 0]:bounds[s, 1]`` (int64 (S, 2)) in order, with step counts
    ``first_step + s``, each step's loss into ``losses[s]`` (float64 (S,)): the same
    arithmetic as S calls of ``step``, in one call.  ``split_macs``: the fewest
    multiply-adds a product runs on two threads with (default ``SPLIT_MIN_MACS``, read
    when the step is made).
    """

    def __init__(self, layers, batch_size, dtype, params, grads, state1, state2, *, loss,
                 reduction, ignore_index=-100, label_smoothing=0.0, weight=None,
                 optimizer, momentum=0.0, nesterov=False, weight_decay=0.0, betas=(0.9, 0.999),
                 eps=1e-8, decoupled=False, split_macs=None):
        dtype = np.dtype(dtype)
        table = np.zeros(len(layers), dtype=LAYER)
        offset = 0
        for l, (n_in, n_out, w_off, b_off, activation) in enumerate(layers):
            table[l] = (n_in, n_out, w_off, b_off, ACTIVATION_CODES[activation], offset)
            offset += batch_size * n_out
        widest = max(max(n_in, n_out) for n_in, n_out, *_ in layers)
        # work: layer outputs, two gradient buffers, the cross-entropy's scratch (row
        # maxima, shifted logits, exps), then the pack buffers of _gemm, big enough for
        # every product of the step ((B, in) @ (in, out), (in, B) @ (B, out), (B, out) @
        # (out, in)), its edge tile, and the class weights
        nr = tile_cols.py_func(dtype.itemsize)
        big = max(batch_size, widest)
        depth = min(big, _KC)
        num_classes = layers[-1][1]
        da = offset
        db = da + batch_size * widest
        maxes = db + batch_size * widest
        shifted = maxes + batch_size
        exps = shifted + batch_size * num_classes
        apack = exps + batch_size * num_classes
        bpack = apack + (-(-big // MR) * MR) * depth
        tile = bpack + max(-(-big // nr) * nr * depth, 2 * THIN * big)  # also the thin products' scratch
        apack2 = tile + MR * nr
        bpack2 = apack2 + (bpack - apack)
        tile2 = bpack2 + (tile - bpack)
        weight_at = tile2 + MR * nr
        self.work = np.zeros(weight_at + num_classes, dtype=dtype)
        if weight is not None:
            self.work[weight_at:] = weight
        classify = loss == "cross_entropy"
        self.layers = table
        # each layer's three products (as drivers.serial reads them): y = act(x @ w + b)
        # with w read in place from params; dw = x.T @ dz with db's sums taken while dz
        # is packed (dz read in place from the gradient buffer backward writes it to:
        # grad_a for the last layer, then alternately grad_b, grad_a); dx = dz @ w.T
        specs = []
        for l, (n_in, n_out, w_off, b_off, activation) in enumerate(layers):
            dzt = da if (len(layers) - 1 - l) % 2 == 0 else db
            specs += [product(False, b_off >= 0, ACTIVATION_CODES[activation], False, _KC, 1, w_off),
                      product(False, False, 0, b_off >= 0, _KC, 1, dzt),
                      product(False, False, 0, False, _KC)]
        self.products = product_table(specs)
        self.loss = np.array([(CROSS_ENTROPY if classify else MSE, reduction == "mean", ignore_index,
                               weight is not None, label_smoothing, classify)], dtype=LOSS)
        self.optimizer = np.array([(SGD if optimizer == "sgd" else ADAM, momentum, bool(nesterov), weight_decay,
                                    betas[0], betas[1], eps, bool(decoupled))], dtype=OPTIMIZER)
        split_macs = SPLIT_MIN_MACS if split_macs is None else split_macs
        self.workspace = np.array([(da, db, maxes, shifted, exps, apack, bpack, tile, apack2, bpack2, tile2, weight_at,
                                    split_macs)], dtype=WORKSPACE)
        # float64: the cross-entropy's row sums, log-sums and losses (3 B), then, in
        # backward, each layer's bias gradient as column sums (widest); its last widest
        # entries: the discarded sums of a weight gradient's second row half
        self.sums = np.zeros(max(widest, 3 * batch_size) + widest, dtype=np.float64)
        self.params, self.grads = params, grads
        self.state1 = state1 if state1 is not None else params[:0]
        self.state2 = state2 if state2 is not None else params[:0]
        self.classify = classify
        self.dtype = dtype

    def _bound(self, kernel, X, y, preds):
        if self.classify:
            labels, targets = y, np.zeros((1, 1), self.dtype)
        else:
            labels, targets, preds = np.zeros(1, np.int64), y, np.zeros(1, np.int64)
        return functools.partial(kernel, self.params, self.grads, self.state1, self.state2, self.work, self.sums,
                                 self.layers, self.products, self.loss, self.optimizer, self.workspace, X, labels,
                                 targets, preds)

    def bind(self, X, y, preds):
        return self._bound(_mlp_step, X, y, preds)

    def bind_steps(self, X, y, preds):
        return self._bound(_mlp_steps, X, y, preds)

