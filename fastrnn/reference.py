"""Pure-NumPy reference implementation: the test oracle and the `--backend numpy` trainer.

Faithful to min-char-rnn and the seeds (tanh RNN, one-hot input as a lookup, softmax cross-entropy, BPTT,
elementwise clipping, Adagrad with eps 1e-8), vectorized over the minibatch and looping over time only where there
is a recurrence: the input-side lookup, the output-side product and the weight gradients are computed once over
all T*N positions. Every numba kernel is tested against the functions here.

Letters: N batch, T time, H hidden, V vocabulary. Hidden states are time-major, hs: (T, N, H), so that the
state of one step, hs[t], is a contiguous (N, H) block. Token arrays arrive batch-major, x: (N, T), as the batch
stream produces them.

Loss: the mean over the N*T positions of -log p(target), in nats per character; gradients are of that mean.
"""

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# layers


def rnn_forward(x, h0, Wxh, Whh, bh):
    """Vanilla RNN over a minibatch.

    x: (N, T) int token ids; h0: (N, H) initial state; Wxh: (V, H); Whh: (H, H); bh: (H,).
    Returns hs: (T, N, H), hs[t] = tanh(Wxh[x[:, t]] + hs[t-1] @ Whh + bh).
    """
    N, T = x.shape
    H = Whh.shape[0]
    hs = Wxh[x.T] + bh  # (T, N, H): the input side for all positions at once (lookup), then made in place
    h = h0
    for t in range(T):
        a = hs[t]
        a += h @ Whh
        np.tanh(a, out=a)
        h = a
    assert hs.shape == (T, N, H)
    return hs


def rnn_backward(dhs, x, h0, hs, Whh, dWxh, dWhh, dbh):
    """Backpropagation through time for `rnn_forward`.

    dhs: (T, N, H) gradient of the loss w.r.t. each hs[t] from above (not including the recurrence).
    Adds into dWxh: (V, H), dWhh: (H, H), dbh: (H,). Returns dh0: (N, H), the gradient w.r.t. h0.
    """
    T, N, H = hs.shape
    dz = np.empty_like(hs)  # (T, N, H) gradient w.r.t. the pre-activations
    dh_next = np.zeros((N, H), dtype=hs.dtype)
    for t in range(T - 1, -1, -1):
        dh = dhs[t] + dh_next
        dz[t] = dh * (1.0 - hs[t] * hs[t])
        dh_next = dz[t] @ Whh.T
    hprev = np.concatenate([h0[None], hs[:-1]], axis=0)  # (T, N, H)
    dWhh += hprev.reshape(T * N, H).T @ dz.reshape(T * N, H)
    dbh += dz.sum(axis=(0, 1))
    np.add.at(dWxh, x.T.reshape(-1), dz.reshape(T * N, H))
    return dh_next


def affine_forward(hs, W, b):
    """logits: (T, N, V) = hs: (T, N, H) @ W: (H, V) + b: (V,), as one product over all positions."""
    T, N, H = hs.shape
    return (hs.reshape(T * N, H) @ W + b).reshape(T, N, -1)


def affine_backward(dlogits, hs, W, dW, db):
    """Adds into dW: (H, V), db: (V,). Returns dhs: (T, N, H)."""
    T, N, H = hs.shape
    d2 = dlogits.reshape(T * N, -1)
    dW += hs.reshape(T * N, H).T @ d2
    db += d2.sum(axis=0)
    return (d2 @ W.T).reshape(T, N, H)


def softmax(logits):
    """Softmax over the last axis, stable."""
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def softmax_xent(logits, y):
    """Mean cross-entropy in nats and its gradient.

    logits: (T, N, V); y: (N, T) int targets. Returns (loss, dlogits: (T, N, V)) with loss the mean over T*N.
    """
    T, N, V = logits.shape
    z = logits - logits.max(axis=-1, keepdims=True)
    logsum = np.log(np.exp(z).sum(axis=-1))  # (T, N)
    yt = y.T  # (T, N)
    picked = np.take_along_axis(z, yt[..., None], axis=-1)[..., 0]
    loss = float(np.mean(logsum - picked))
    dlogits = np.exp(z - logsum[..., None])
    np.put_along_axis(dlogits, yt[..., None], np.take_along_axis(dlogits, yt[..., None], axis=-1) - 1.0, axis=-1)
    dlogits /= T * N
    return loss, dlogits


# ---------------------------------------------------------------------------------------------------------------
# the model: loss and gradients for one minibatch


def forward_backward(P, G, x, y, h0):
    """Loss and gradients of the vanilla RNN language model on one minibatch.

    P: dict of parameter arrays (see fastrnn.params); G: dict of gradient arrays of the same shapes, overwritten.
    x, y: (N, T) int inputs and targets; h0: (N, H) carried state. Returns (loss, hT: (N, H) new array).
    """
    hs = rnn_forward(x, h0, P["Wxh"], P["Whh"], P["bh"])
    logits = affine_forward(hs, P["Why"], P["by"])
    loss, dlogits = softmax_xent(logits, y)
    for g in G.values():
        g[...] = 0
    dhs = affine_backward(dlogits, hs, P["Why"], G["Why"], G["by"])
    rnn_backward(dhs, x, h0, hs, P["Whh"], G["Wxh"], G["Whh"], G["bh"])
    return loss, hs[-1].copy()


def forward_loss(P, x, y, h0):
    """Loss only (evaluation): returns (loss, hT)."""
    hs = rnn_forward(x, h0, P["Wxh"], P["Whh"], P["bh"])
    loss, _ = softmax_xent(affine_forward(hs, P["Why"], P["by"]), y)
    return loss, hs[-1].copy()


def step(P, h, token):
    """One generation step: h: (N, H), token: (N,) int. Returns (h_new: (N, H), logits: (N, V))."""
    h_new = np.tanh(P["Wxh"][token] + h @ P["Whh"] + P["bh"])
    return h_new, h_new @ P["Why"] + P["by"]


# ---------------------------------------------------------------------------------------------------------------
# gradient clipping and optimizers over the flat buffers (fastrnn.params)


def clip_gradients(g, clip, max_norm):
    """Global-norm scaling (if max_norm > 0) then elementwise clipping to [-clip, clip] (if clip > 0), in place.

    Returns the global norm before clipping.
    """
    norm = float(np.sqrt(np.dot(g.astype(np.float64), g.astype(np.float64))))
    if max_norm > 0 and norm > max_norm:
        g *= g.dtype.type(max_norm / norm)
    if clip > 0:
        np.clip(g, -clip, clip, out=g)
    return norm


def sgd_update(p, g, vel, lr, momentum):
    """SGD with (heavy-ball) momentum: vel = momentum * vel - lr * g; p += vel."""
    vel *= momentum
    vel -= lr * g
    p += vel


def adagrad_update(p, g, mem, lr, eps):
    """Adagrad as min-char-rnn: mem += g^2; p -= lr * g / sqrt(mem + eps)."""
    mem += g * g
    p -= lr * g / np.sqrt(mem + eps)


def rmsprop_update(p, g, ms, lr, decay, eps):
    """RMSprop as char-rnn: ms = decay * ms + (1 - decay) * g^2; p -= lr * g / (sqrt(ms) + eps)."""
    ms *= decay
    ms += (1.0 - decay) * g * g
    p -= lr * g / (np.sqrt(ms) + eps)


def adam_update(p, g, m, v, lr, beta1, beta2, eps, t):
    """Adam (Kingma & Ba) with bias correction; t is the 1-based step number."""
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    mhat_scale = 1.0 / (1.0 - beta1**t)
    vhat_scale = 1.0 / (1.0 - beta2**t)
    p -= lr * (m * mhat_scale) / (np.sqrt(v * vhat_scale) + eps)
