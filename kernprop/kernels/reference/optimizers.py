"""Reference optimizer updates, with PyTorch's torch.optim semantics (in place)."""

import numpy as np


def sgd_step(param, grad, velocity, lr, momentum, nesterov, weight_decay):
    g = grad + weight_decay * param if weight_decay else grad
    if momentum:
        velocity *= momentum
        velocity += g
        g = g + momentum * velocity if nesterov else velocity
    param -= (lr * g).astype(param.dtype)


def adam_step(
    param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled
):
    if weight_decay and decoupled:  # AdamW: decay the weights, not the gradient
        param *= 1 - lr * weight_decay
    g = grad + weight_decay * param if weight_decay and not decoupled else grad
    exp_avg *= beta1
    exp_avg += (1 - beta1) * g
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = np.sqrt(exp_avg_sq) / np.sqrt(bias_correction2) + eps
    param -= ((lr / bias_correction1) * exp_avg / denom).astype(param.dtype)
