"""Optimizer state over the flat parameter buffer, and the learning-rate schedule.

The math lives in the backend (`fastrnn.reference` or `fastrnn.kernels`): each update is one fused loop over the
flat buffers. This module only owns the state buffers and picks the call.
"""

import math

import numpy as np

STATE_NAMES = {"sgd": ("vel",), "adagrad": ("mem",), "rmsprop": ("ms",), "adam": ("m", "v")}


class Optimizer:
    """State of one optimizer: flat buffers shaped like the parameters, and the step count t."""

    def __init__(self, config, size, dtype, backend):
        self.config = config
        self.backend = backend
        self.name = config.optimizer
        self.state = {name: np.zeros(size, dtype=dtype) for name in STATE_NAMES[self.name]}
        self.t = 0  # updates done

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
        else:
            b.adam_update(p, g, s["m"], s["v"], lr, c.beta1, c.beta2, c.eps, self.t)


def learning_rate(config, step, steps_per_epoch, total_steps=None):
    """Learning rate for update number `step` (0-based).

    The first warmup_steps updates ramp it linearly up to lr (update i at lr * (i + 1) / warmup_steps). Then, with
    lr_schedule 'step': decay by lr_decay every lr_decay_every steps (default: one epoch) after lr_decay_after
    steps, as char-rnn's learning_rate_decay; with 'cosine': lr * (1 + cos(pi * t)) / 2, t going from 0 after the
    warmup to 1 at update `total_steps` (the run's step limit)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        span = max(1, (total_steps or 0) - config.warmup_steps)
        t = min(1.0, (step - config.warmup_steps) / span)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if config.lr_decay == 1.0 or step < config.lr_decay_after:
        return config.lr
    every = config.lr_decay_every or steps_per_epoch
    return config.lr * config.lr_decay ** ((step - config.lr_decay_after) // every)
