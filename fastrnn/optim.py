"""Optimizer state over the flat parameter buffer, and the learning-rate schedule.

The math lives in the backend (`fastrnn.reference` or `fastrnn.kernels`): each update is one fused loop over the
flat buffers. This module only owns the state buffers and picks the call; AdamW (a trial) keeps its NumPy reference
here and calls its numba kernel (kernels/optim.py) itself.
"""

import math

import numpy as np

STATE_NAMES = {"sgd": ("vel",), "adagrad": ("mem",), "rmsprop": ("ms",), "adam": ("m", "v"), "adamw": ("m", "v")}


class Optimizer:
    """State of one optimizer: flat buffers shaped like the parameters, and the step count t.

    layout: the parameters' fastrnn.params.Layout (an int: only their number, every value then a weight). AdamW
    decays the weight matrices only, not the biases (segments: its [start, stop) bounds and which decay)."""

    def __init__(self, config, layout, dtype, backend):
        self.config = config
        self.backend = backend
        self.name = config.optimizer
        size = getattr(layout, "size", layout)
        self.state = {name: np.zeros(size, dtype=dtype) for name in STATE_NAMES[self.name]}
        self.t = 0  # updates done
        spans = [(a, b, len(shape) >= 2) for a, b, shape in getattr(layout, "offsets", {}).values()] or \
            [(0, size, True)]
        self.bounds = np.array([a for a, _, _ in spans] + [spans[-1][1]], dtype=np.int64)  # (K + 1,)
        self.decays = np.array([d for _, _, d in spans], dtype=np.bool_)  # (K,)

    def update(self, p, g, lr):
        """Apply one update to the flat parameters p with flat gradients g at learning rate lr."""
        c, b, s = self.config, self.backend, self.state
        self.t += 1
        if self.name == "sgd":
            b.sgd_update(p, g, s["vel"], lr, c.momentum)
        elif self.name == "adagrad":
            b.adagrad_update(p, g, s["mem"], lr, c.eps)
        elif self.name == "rmsprop":
            b.rmsprop_update(p, g, s["ms"], lr, c.rmsprop_decay, c.eps)
        elif self.name == "adam":
            b.adam_update(p, g, s["m"], s["v"], lr, c.beta1, c.beta2, c.eps, self.t)
        else:
            update = adamw_update if c.backend == "numpy" else _adamw_kernel
            update(p, g, s["m"], s["v"], self.bounds, self.decays, lr, c.beta1, c.beta2, c.eps, c.weight_decay,
                   self.t)


def adamw_update(p, g, m, v, bounds, decays, lr, beta1, beta2, eps, weight_decay, t):
    """AdamW (Loshchilov & Hutter 2019), the NumPy reference: decoupled weight decay, p *= 1 - lr * weight_decay on
    the segments [bounds[k], bounds[k + 1]) with decays[k] (the weight matrices), then Adam's step (bias-corrected,
    t the 1-based step number) everywhere. As PyTorch's AdamW, the decay follows the learning rate's schedule."""
    from fastrnn.reference import adam_update

    for k in np.flatnonzero(decays):
        p[bounds[k]:bounds[k + 1]] *= 1.0 - lr * weight_decay
    adam_update(p, g, m, v, lr, beta1, beta2, eps, t)


def _adamw_kernel(p, g, m, v, bounds, decays, lr, beta1, beta2, eps, weight_decay, t):
    """adamw_update in one fused numba loop per segment (kernels/optim.py)."""
    from fastrnn.kernels import optim

    optim.adamw_serial(p, g, m, v, bounds, decays, float(lr), float(beta1), 1.0 - beta1, float(beta2), 1.0 - beta2,
                       1.0 / (1.0 - beta1 ** t), 1.0 / (1.0 - beta2 ** t), float(eps), 1.0 - lr * weight_decay)


def learning_rate(config, step, steps_per_epoch, total_steps=None):
    """Learning rate for update number `step` (0-based).

    The first warmup_steps updates ramp it linearly up to lr (update i at lr * (i + 1) / warmup_steps). Then, with
    lr_schedule 'step': decay by lr_decay every lr_decay_every steps (default: one epoch) after lr_decay_after
    steps, as char-rnn's learning_rate_decay; with 'cosine': floor + (lr - floor) * (1 + cos(pi * t)) / 2, floor =
    lr * lr_floor, t going from 0 after the warmup to 1 at update `total_steps` (the run's step limit, or the step
    --max-time is predicted to end at: fastrnn.choose.horizon), then staying there."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        span = max(1, (total_steps or 0) - config.warmup_steps)
        t = min(1.0, (step - config.warmup_steps) / span)
        floor = config.lr * config.lr_floor
        return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if config.lr_decay == 1.0 or step < config.lr_decay_after:
        return config.lr
    every = config.lr_decay_every or steps_per_epoch
    return config.lr * config.lr_decay ** ((step - config.lr_decay_after) // every)
