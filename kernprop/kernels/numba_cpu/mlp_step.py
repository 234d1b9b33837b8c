"""A whole training step of a small MLP as one serial Numba kernel.

For a model of a few thousand parameters at a small batch (the digits MLP, 64-32-10 at
batch 32) the arithmetic of a step takes a few microseconds, and the separate kernel
calls of the layer-by-layer path (forward, loss, backward, optimizer: 7 calls of at
least 2.5 us each, plus their allocations) cost more than the math.  ``mlp_step`` does
forward through every ``Linear`` (+ ReLU / Sigmoid / Tanh), softmax cross-entropy (or
MSE) with its gradient, backward, and the SGD (momentum, nesterov, weight decay) or
Adam(W) update in place, in one call, over buffers allocated once per fit.  Serial on
purpose: at these sizes a thread fork costs more than the work it would split, and a
serial step is deterministic whatever the thread count.

Semantics: those of the layer-by-layer kernels (``matmul.linear_forward`` /
``linear_backward``, ``activations``, ``losses.cross_entropy_with_grad`` /
``mse_forward`` / ``mse_backward``, ``optimizers.sgd_step`` / ``adam_step``); sums may
round in another order, so results agree to float tolerance, not bit for bit.

Layout (what ``Trainer.fit`` keeps during a fit, see ``kernprop.train._packed``):
``params`` and ``grads`` are flat buffers of every layer's weight (IN, OUT) row-major
then its bias (OUT,); ``state1`` / ``state2`` the flat optimizer state (SGD velocity;
Adam exp_avg, exp_avg_sq).  ``meta`` (int64) holds the settings and the layer table,
one row per layer: in, out, weight offset, bias offset (-1: no bias), activation code
(``activations.ACTIVATION_CODES``), offset of the layer's output in ``work``.
``work`` holds every layer's output (batch, OUT), two gradient buffers (batch, widest
layer) that backward ping-pongs between, and the GEMM's pack buffers.

The GEMMs are the GEMM engine's serial driver (``gemm.drivers.serial``) over the step's
own buffers, always fp32: at these sizes packing and edge tiles cost about as much as
the multiply-adds, so a bf16 conversion would not pay.  A product whose output is
narrower than a tile (the logits) runs transposed (``gemm.drivers.narrow``).  Measured per
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
from numba import njit

from ._jit import FASTMATH
from .gemm import KC as _KC, MR, tile_cols
from ._math import fast_exp
from .activations import ACTIVATION_CODES, RELU, SIGMOID, TANH, activate
from .losses import scale_row, target_grad_p, weighted_sum
from .gemm.drivers import serial as _serial_gemm

__all__ = ["mlp_step", "MLPStep"]

# meta (int64): these slots, then the (L, 6) layer table from _HEADER on
(_I_LOSS, _I_MEAN, _I_IGNORE, _I_WEIGHTED, _I_OPT, _I_NESTEROV, _I_DECOUPLED, _I_DA, _I_DB,
 _I_CLASSIFY, _I_MAXES, _I_APACK, _I_BPACK, _I_TILE, _I_WEIGHT, _I_LAYERS) = range(16)
_HEADER = 16
# hyper (float64): these slots, then the float64 column sums of db from _F_SUMS on
_F_SMOOTHING, _F_MOMENTUM, _F_WD, _F_BETA1, _F_BETA2, _F_EPS = range(6)
_F_SUMS = 8
CROSS_ENTROPY, MSE = 0, 1
SGD, ADAM = 0, 1


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _activation_backward(y, activation, dz):
    # dz (B, OUT) *= activation'(.) from the forward output y (B, OUT), in place
    # (constants of the dtype: an integer literal makes Numba compute float32 in float64)
    b, n = dz.shape
    zero, one = dz.dtype.type(0), dz.dtype.type(1)
    for i in range(b):
        yr = y[i]
        dr = dz[i]
        if activation == RELU:
            for j in range(n):
                g = dr[j]
                dr[j] = g if yr[j] > zero else zero
        elif activation == SIGMOID:
            for j in range(n):
                dr[j] = dr[j] * yr[j] * (one - yr[j])
        elif activation == TANH:
            for j in range(n):
                dr[j] = dr[j] * (one - yr[j] * yr[j])


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _cross_entropy(z, labels, weight, weighted, ignore_index, smoothing, mean, classify, preds, g,
                   maxes):
    # z (B, C) logits, labels (B,) -> the summed (or mean) loss, g (B, C) its gradient
    # (C-contiguous), preds (B,) the argmax of each row (when classify); maxes (B,) scratch.  Formulas as
    # losses._cross_entropy_short: e = exp(z - m) stored in g, s = sum e in float64,
    # loss = (1-eps) w_y ((m - z_y) + log s) + (eps/C)(W (m + log s) - sum w z),
    # gradient p_coef e / s - w_coef w, the target's entry recomputed in float64 so
    # that a one-class row gets exactly 0.  "mean" divides by the summed target weights
    # of the rows not ignored (0 / 0 = nan when all are ignored; their gradient is 0).
    b, num_classes = z.shape
    denominator = 0.0
    weight_total = 0.0
    if weighted:
        for c in range(num_classes):
            weight_total += weight[c]
    else:
        weight_total = num_classes
    if mean:
        for i in range(b):
            label = labels[i]
            if label != ignore_index:
                denominator += weight[label] if weighted else 1.0
        grad_scale = 1.0 / denominator
    else:
        denominator = 1.0
        grad_scale = 1.0
    uniform = smoothing / num_classes
    total = 0.0
    for i in range(b):
        row = z[i]
        gr = g[i]
        m = row[0]
        best = 0
        for c in range(1, num_classes):
            if row[c] > m or (row[c] != row[c] and m == m):  # first NaN wins, as argmax
                m = row[c]
                best = c
        if classify:
            preds[i] = best
        maxes[i] = m
        for c in range(num_classes):
            gr[c] = row[c] - m
    # e = exp(z - m) for the whole batch in one flat loop: it vectorises (fast_exp)
    flat = g.reshape(-1)
    for k in range(flat.shape[0]):
        flat[k] = fast_exp(flat[k])
    for i in range(b):
        row = z[i]
        gr = g[i]
        label = labels[i]
        m = maxes[i]
        if label == ignore_index:
            for c in range(num_classes):
                gr[c] = 0
            continue
        s = 0.0
        for c in range(num_classes):
            s += gr[c]
        log_s = np.log(s)
        target_weight = weight[label] if weighted else 1.0
        hard = (1 - smoothing) * target_weight
        loss = hard * ((np.float64(m) - np.float64(row[label])) + log_s)
        if smoothing > 0:
            wz = weighted_sum(row, weight, weighted)
            loss += uniform * (weight_total * (np.float64(m) + log_s) - wz)
        total += loss
        p_target = np.float64(gr[label]) / s
        p_coef = grad_scale * (hard + uniform * weight_total)
        scale = z.dtype.type(p_coef / s)
        w_coef = z.dtype.type(grad_scale * uniform)
        scale_row(gr, gr, scale, w_coef, weight, weighted, smoothing > 0)
        gr[label] = target_grad_p(p_target, grad_scale, hard, uniform, weight_total,
                                  np.float64(target_weight))
    return total / denominator


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _mse(pred, target, mean, g):
    # pred, target (B, OUT) -> the summed (or mean) squared error, g its gradient
    b, n = pred.shape
    size = b * n
    scale = 2.0 / size if mean else 2.0
    total = 0.0
    for i in range(b):
        pr = pred[i]
        tr = target[i]
        gr = g[i]
        for j in range(n):
            d = pr[j] - tr[j]
            total += np.float64(d) * np.float64(d)
            gr[j] = scale * d
    return total / size if mean else total


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _sgd(param, grad, velocity, lr, momentum, nesterov, weight_decay):
    # param, grad, velocity (n,): as optimizers._sgd, scalars in the parameters' dtype
    n = param.shape[0]
    if momentum != 0:
        if nesterov:
            for i in range(n):
                g = grad[i] + weight_decay * param[i]
                v = momentum * velocity[i] + g
                velocity[i] = v
                param[i] -= lr * (g + momentum * v)
        else:
            for i in range(n):
                g = grad[i] + weight_decay * param[i]
                v = momentum * velocity[i] + g
                velocity[i] = v
                param[i] -= lr * v
    else:
        for i in range(n):
            param[i] -= lr * (grad[i] + weight_decay * param[i])


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _adam(param, grad, exp_avg, exp_avg_sq, step_size, beta1, beta2, eps, weight_decay,
          decoupled, bias_correction2_sqrt, one_minus_beta1, one_minus_beta2, decay):
    # param, grad, exp_avg, exp_avg_sq (n,): as optimizers._adam
    n = param.shape[0]
    if decoupled:
        for i in range(n):
            p = param[i] * decay
            g = grad[i]
            m = beta1 * exp_avg[i] + one_minus_beta1 * g
            v = beta2 * exp_avg_sq[i] + one_minus_beta2 * g * g
            exp_avg[i] = m
            exp_avg_sq[i] = v
            param[i] = p - step_size * m / (np.sqrt(v) / bias_correction2_sqrt + eps)
    else:
        for i in range(n):
            p = param[i]
            g = grad[i] + weight_decay * p
            m = beta1 * exp_avg[i] + one_minus_beta1 * g
            v = beta2 * exp_avg_sq[i] + one_minus_beta2 * g * g
            exp_avg[i] = m
            exp_avg_sq[i] = v
            param[i] = p - step_size * m / (np.sqrt(v) / bias_correction2_sqrt + eps)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _mlp_step(params, grads, state1, state2, work, hyper, meta, x_all, labels_all, targets_all,
              preds_all, lo, hi, lr, step):
    # x = x_all[lo:hi] (B, IN0) -> one step: forward, loss and gradient, backward, update
    # in place.  Returns the batch loss, reduced as the loss's reduction, rounded to the
    # dtype.  Rows lo:hi of whole arrays: slicing here costs nothing, in Python a few
    # hundred ns per array; and every buffer lives in work / hyper / meta, since each
    # array argument costs ~65 ns of dispatch.
    classify = meta[_I_CLASSIFY] != 0
    x = x_all[lo:hi]
    labels = labels_all[lo:hi] if classify else labels_all
    preds = preds_all[lo:hi] if classify else preds_all
    targets = targets_all if classify else targets_all[lo:hi]
    b = x.shape[0]
    num_layers = meta[_I_LAYERS]
    layers = meta[_HEADER:_HEADER + 6 * num_layers].reshape((num_layers, 6))
    t = params.dtype.type
    nr = tile_cols(params.itemsize)
    apack = work[meta[_I_APACK]:meta[_I_BPACK]]
    bpack = work[meta[_I_BPACK]:meta[_I_TILE]]
    tile = work[meta[_I_TILE]:meta[_I_TILE] + MR * nr].reshape((MR, nr))
    sums = hyper[_F_SUMS:]
    bias0 = params[0:0]
    # forward: layer l reads x (l = 0) or layer l-1's output, writes its own
    for l in range(num_layers):
        n_in, n_out, w_off = layers[l, 0], layers[l, 1], layers[l, 2]
        b_off, activation, a_off = layers[l, 3], layers[l, 4], layers[l, 5]
        if l == 0:
            inp = x
        else:
            p_out, p_off = layers[l - 1, 1], layers[l - 1, 5]
            inp = work[p_off:p_off + b * p_out].reshape((b, p_out))
        w = params[w_off:w_off + n_in * n_out].reshape((n_in, n_out))
        bias = params[b_off:b_off + n_out] if b_off >= 0 else bias0
        y = work[a_off:a_off + b * n_out].reshape((b, n_out))
        _serial_gemm(inp, w, y, False, bias, b_off >= 0, activation, apack, bpack, tile, sums, False, _KC, 1,
                     params, w_off)
    # loss and its gradient into the first gradient buffer
    last_out, last_off = layers[num_layers - 1, 1], layers[num_layers - 1, 5]
    out = work[last_off:last_off + b * last_out].reshape((b, last_out))
    da, db = meta[_I_DA], meta[_I_DB]
    dz = work[da:da + b * last_out].reshape((b, last_out))
    if meta[_I_LOSS] == CROSS_ENTROPY:
        weight = work[meta[_I_WEIGHT]:meta[_I_WEIGHT] + last_out]
        loss = _cross_entropy(out, labels, weight, meta[_I_WEIGHTED] != 0, meta[_I_IGNORE],
                              hyper[_F_SMOOTHING], meta[_I_MEAN] != 0, classify, preds, dz,
                              work[meta[_I_MAXES]:meta[_I_MAXES] + b])
    else:
        loss = _mse(out, targets, meta[_I_MEAN] != 0, dz)
    # backward, last layer first; dz and dx alternate between the two buffers
    cur, other = da, db
    for l in range(num_layers - 1, -1, -1):
        n_in, n_out, w_off = layers[l, 0], layers[l, 1], layers[l, 2]
        b_off, activation, a_off = layers[l, 3], layers[l, 4], layers[l, 5]
        dz = work[cur:cur + b * n_out].reshape((b, n_out))
        if activation != 0:
            _activation_backward(work[a_off:a_off + b * n_out].reshape((b, n_out)), activation, dz)
        if l == 0:
            inp = x
        else:
            p_out, p_off = layers[l - 1, 1], layers[l - 1, 5]
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
        _serial_gemm(inp.T, dz, dw, False, bias0, False, 0, apack, bpack, tile, sums, b_off >= 0, _KC, 1,
                     work, cur)
        if b_off >= 0:
            for j in range(n_out):
                dbias[j] = sums[j]
        if l > 0:
            _serial_gemm(dz, w.T, dx, False, bias0, False, 0, apack, bpack, tile, sums, False, _KC, 1,
                         bpack, -1)
        cur, other = other, cur
    # update, every parameter in one pass over the flat buffers
    if meta[_I_OPT] == SGD:
        _sgd(params, grads, state1, t(lr), t(hyper[_F_MOMENTUM]), meta[_I_NESTEROV] != 0,
             t(hyper[_F_WD]))
    else:
        beta1, beta2, wd = hyper[_F_BETA1], hyper[_F_BETA2], hyper[_F_WD]
        _adam(params, grads, state1, state2, t(lr) / t(1 - beta1**step), t(beta1), t(beta2),
              t(hyper[_F_EPS]), t(wd), meta[_I_DECOUPLED] != 0, t(np.sqrt(1 - beta2**step)),
              t(1 - beta1), t(1 - beta2), t(1 - lr * wd))
    return t(loss)  # rounded as the layer-by-layer losses return it


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _mlp_steps(params, grads, state1, state2, work, hyper, meta, x_all, labels_all, targets_all,
               preds_all, bounds, lr, first_step, losses):
    # consecutive steps, step s on rows bounds[s, 0]:bounds[s, 1] with step count
    # first_step + s; losses[s] receives its loss.  A whole epoch in one call: from
    # Python each step costs ~2 us of dispatch and bookkeeping, 20% of the digits step.
    for s in range(bounds.shape[0]):
        losses[s] = _mlp_step(params, grads, state1, state2, work, hyper, meta, x_all, labels_all,
                              targets_all, preds_all, bounds[s, 0], bounds[s, 1], lr, first_step + s)


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
    arithmetic as S calls of ``step``, in one call.
    """

    def __init__(self, layers, batch_size, dtype, params, grads, state1, state2, *, loss,
                 reduction, ignore_index=-100, label_smoothing=0.0, weight=None,
                 optimizer, momentum=0.0, nesterov=False, weight_decay=0.0, betas=(0.9, 0.999),
                 eps=1e-8, decoupled=False):
        dtype = np.dtype(dtype)
        table = np.zeros((len(layers), 6), dtype=np.int64)
        offset = 0
        for l, (n_in, n_out, w_off, b_off, activation) in enumerate(layers):
            table[l] = (n_in, n_out, w_off, b_off, ACTIVATION_CODES[activation], offset)
            offset += batch_size * n_out
        widest = max(max(n_in, n_out) for n_in, n_out, *_ in layers)
        # work: layer outputs, two gradient buffers, the logits' row maxima, then the
        # pack buffers of _gemm, big enough for every product of the step ((B, in) @
        # (in, out), (in, B) @ (B, out), (B, out) @ (out, in)), its edge tile, and the
        # class weights
        nr = tile_cols.py_func(dtype.itemsize)
        big = max(batch_size, widest)
        depth = min(big, _KC)
        da = offset
        db = da + batch_size * widest
        maxes = db + batch_size * widest
        apack = maxes + batch_size
        bpack = apack + (-(-big // MR) * MR) * depth
        tile = bpack + (-(-big // nr) * nr) * depth
        weight_at = tile + MR * nr
        num_classes = layers[-1][1]
        self.work = np.zeros(weight_at + num_classes, dtype=dtype)
        if weight is not None:
            self.work[weight_at:] = weight
        classify = loss == "cross_entropy"
        header = [
            CROSS_ENTROPY if classify else MSE, reduction == "mean", ignore_index,
            weight is not None, SGD if optimizer == "sgd" else ADAM, bool(nesterov),
            bool(decoupled), da, db, classify, maxes, apack, bpack, tile, weight_at, len(layers),
        ]
        self.meta = np.concatenate([np.array(header, dtype=np.int64), table.ravel()])
        self.hyper = np.zeros(_F_SUMS + widest, dtype=np.float64)
        self.hyper[:6] = (label_smoothing, momentum, weight_decay, betas[0], betas[1], eps)
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
        return functools.partial(kernel, self.params, self.grads, self.state1, self.state2,
                                 self.work, self.hyper, self.meta, X, labels, targets, preds)

    def bind(self, X, y, preds):
        return self._bound(_mlp_step, X, y, preds)

    def bind_steps(self, X, y, preds):
        return self._bound(_mlp_steps, X, y, preds)


def mlp_step(plan, x, y, lr, step, preds=None):
    """One fused step of ``plan`` (an ``MLPStep``) on all rows of ``x``; returns the
    loss; ``preds`` (cross-entropy) receives the argmax of each row."""
    if preds is None:
        preds = np.zeros(x.shape[0], np.int64)
    return plan.bind(x, y, preds)(0, x.shape[0], lr, step)
