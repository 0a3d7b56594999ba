"""The seed-style trainer: min-char-rnn as the seeds write it, one sequence at a time with column vectors.

This is contender (c) of the throughput benchmark: what a learner's NumPy RNN does (seed 002's `lossFun`, seed
004's Asimov run). It is kept faithful rather than fast: one-hot column vectors, a Python loop over time, one
sequence per update, Adagrad. Loss is summed over the sequence, as in min-char-rnn.
"""

import numpy as np


class SeedRNN:
    """min-char-rnn's model: Wxh (H, V), Whh (H, H), Why (V, H), bh (H, 1), by (V, 1)."""

    def __init__(self, vocab_size, hidden_size, seed=0, dtype=np.float64, lr=0.1):
        rng = np.random.default_rng(seed)
        V, H = vocab_size, hidden_size
        self.Wxh = (rng.standard_normal((H, V)) * 0.01).astype(dtype)
        self.Whh = (rng.standard_normal((H, H)) * 0.01).astype(dtype)
        self.Why = (rng.standard_normal((V, H)) * 0.01).astype(dtype)
        self.bh = np.zeros((H, 1), dtype=dtype)
        self.by = np.zeros((V, 1), dtype=dtype)
        self.params = [self.Wxh, self.Whh, self.Why, self.bh, self.by]
        self.mem = [np.zeros_like(p) for p in self.params]
        self.lr = lr
        self.V = V

    def loss_fun(self, inputs, targets, hprev):
        """Forward and backward over one sequence (lists of ints), as min-char-rnn's lossFun."""
        xs, hs, ps = {}, {}, {}
        hs[-1] = np.copy(hprev)
        loss = 0.0
        for t in range(len(inputs)):
            xs[t] = np.zeros((self.V, 1), dtype=hprev.dtype)
            xs[t][inputs[t]] = 1
            hs[t] = np.tanh(self.Wxh @ xs[t] + self.Whh @ hs[t - 1] + self.bh)
            ys = self.Why @ hs[t] + self.by
            e = np.exp(ys - ys.max())
            ps[t] = e / e.sum()
            loss += -np.log(ps[t][targets[t], 0])
        dWxh, dWhh, dWhy = np.zeros_like(self.Wxh), np.zeros_like(self.Whh), np.zeros_like(self.Why)
        dbh, dby = np.zeros_like(self.bh), np.zeros_like(self.by)
        dhnext = np.zeros_like(hs[0])
        for t in reversed(range(len(inputs))):
            dy = np.copy(ps[t])
            dy[targets[t]] -= 1
            dWhy += dy @ hs[t].T
            dby += dy
            dh = self.Why.T @ dy + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh
            dbh += dhraw
            dWxh += dhraw @ xs[t].T
            dWhh += dhraw @ hs[t - 1].T
            dhnext = self.Whh.T @ dhraw
        grads = [dWxh, dWhh, dWhy, dbh, dby]
        for g in grads:
            np.clip(g, -5, 5, out=g)
        return loss, grads, hs[len(inputs) - 1]

    def train_step(self, inputs, targets, hprev):
        """One Adagrad update on one sequence. Returns (loss, h)."""
        loss, grads, h = self.loss_fun(inputs, targets, hprev)
        for p, g, m in zip(self.params, grads, self.mem):
            m += g * g
            p += -self.lr * g / np.sqrt(m + 1e-8)
        return loss, h
