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

import time

import numpy as np

from fastrnn.backend import blas_threads as threads, no_thread_count as thread_count  # noqa: F401 (the protocol's)

# ---------------------------------------------------------------------------------------------------------------
# layers (the rnn's, and the parts every cell shares: the cells are fastrnn.cells, each file with its own pair)


def rnn_forward(x, h0, Wxh, Whh, bh):
    """Vanilla RNN over a minibatch.

    x: (N, T) int token ids; h0: (N, H) initial state; Wxh: (V, H); Whh: (H, H); bh: (H,).
    Returns hs: (T, N, H), hs[t] = tanh(Wxh[x[:, t]] + hs[t-1] @ Whh + bh).
    """
    return rnn_cell_forward(input_forward(x, Wxh, bh), h0, Whh)


def rnn_cell_forward(xa, h0, Whh):
    """The tanh recurrence from the input side xa: (T, N, H) (x_t @ Wxh + bh), made into hs: (T, N, H) in place."""
    h = h0
    for t in range(xa.shape[0]):
        a = xa[t]
        a += h @ Whh
        np.tanh(a, out=a)
        h = a
    return xa


def rnn_backward(dhs, x, h0, hs, Whh, dWxh, dWhh, dbh):
    """Backpropagation through time for `rnn_forward`.

    dhs: (T, N, H) gradient of the loss w.r.t. each hs[t] from above (not including the recurrence).
    Adds into dWxh: (V, H), dWhh: (H, H), dbh: (H,). Returns dh0: (N, H), the gradient w.r.t. h0.
    """
    dz, dh0 = rnn_cell_backward(dhs, h0, hs, Whh, dWhh)
    input_backward(dz, x, None, dWxh, dbh)  # token input: Wxh is not needed
    return dh0


def rnn_cell_backward(dhs, h0, hs, Whh, dWhh):
    """Backpropagation through the tanh recurrence: adds into dWhh: (H, H).

    Returns dz: (T, N, H) (the gradient w.r.t. the pre-activations, = w.r.t. the input side) and dh0: (N, H).
    """
    T, N, H = hs.shape
    dz = np.empty_like(hs)  # (T, N, H)
    dh_next = np.zeros((N, H), dtype=hs.dtype)
    for t in range(T - 1, -1, -1):
        dh = dhs[t] + dh_next
        dz[t] = dh * (1.0 - hs[t] * hs[t])
        dh_next = dz[t] @ Whh.T
    hprev = np.concatenate([h0[None], hs[:-1]], axis=0)  # (T, N, H)
    dWhh += hprev.reshape(T * N, H).T @ dz.reshape(T * N, H)
    return dz, dh_next


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


def sigmoid(a):
    """Logistic function, computed through tanh (no overflow for large |a|): 1/(1+e^-a) = (1 + tanh(a/2)) / 2."""
    return 0.5 + 0.5 * np.tanh(0.5 * a)


def input_forward(inp, Wxh, bh):
    """The input side of a layer for all positions at once: xa: (T, N, G*H).

    inp: (N, T) int token ids for layer 0 (row lookup in Wxh: (V, G*H)), or (T, N, H) the layer below's output.
    """
    if inp.ndim == 2:
        return Wxh[inp.T] + bh
    T, N, H = inp.shape
    return (inp.reshape(T * N, H) @ Wxh + bh).reshape(T, N, -1)


def input_backward(dxa, inp, Wxh, dWxh, dbh):
    """Adds into dWxh, dbh. Returns the gradient w.r.t. inp (T, N, H), or None for token input."""
    T, N, GH = dxa.shape
    d2 = dxa.reshape(T * N, GH)
    dbh += d2.sum(axis=0)
    if inp.ndim == 2:
        np.add.at(dWxh, inp.T.reshape(-1), d2)
        return None
    H = inp.shape[2]
    dWxh += inp.reshape(T * N, H).T @ d2
    return (d2 @ Wxh.T).reshape(T, N, H)


# ---------------------------------------------------------------------------------------------------------------
# the model: loss and gradients for one minibatch
#
# A model is L layers of one cell (fastrnn.cells, carried by P: fastrnn.params.Params) under a softmax output
# layer. Layer 0 reads the tokens, layer l the output of layer l-1; with dropout, layer l's output is multiplied by
# masks[l] (inverted dropout: 0 or 1/(1-p), made by fastrnn.dropout) before it feeds layer l+1 or the output
# layer. The carried state is one (N, S) array: for each layer, one block of H columns per vector of the cell's
# state (h, then c for an lstm).


def split_state(state, cell, L, H):
    """Views of the carried state (N, S) of L layers of `cell` (a fastrnn.cells.Cell): a list over layers of a
    tuple of (N, H) views, one per name of cell.state (h first)."""
    K = len(cell.state)
    return [tuple(state[:, (l * K + k) * H:(l * K + k + 1) * H] for k in range(K)) for l in range(L)]


def model_forward(P, x, state, masks=None):
    """Forward pass of the whole model. Returns (logits: (T, N, V), (caches, top), new state (N, S)); caches[l]
    is (the layer's input, its seqs: hs and the cell's other state vectors at every step, the cell's cache)."""
    cell, L, H = P.cell, P.layers, P.hidden_size
    inp = x
    caches = []
    new_state = np.empty_like(state)
    for l, (s0, sT) in enumerate(zip(split_state(state, cell, L, H), split_state(new_state, cell, L, H))):
        seqs, cache = cell.forward(inp, tuple(P[k] for k in cell.layer_names(l)), s0)
        for end, seq in zip(sT, seqs):
            end[...] = seq[-1]
        hs = seqs[0]
        out = hs if masks is None else hs * masks[l]
        caches.append((inp, seqs, cache))
        inp = out
    logits = affine_forward(inp, P["Why"], P["by"])
    return logits, (caches, inp), new_state


def model_backward(dlogits, P, G, x, state, fwd, masks=None):
    """Backward pass of the whole model: adds into G. Returns the gradient w.r.t. the carried state (N, S)."""
    cell, L, H = P.cell, P.layers, P.hidden_size
    caches, top = fwd
    dout = affine_backward(dlogits, top, P["Why"], G["Why"], G["by"])  # (T, N, H)
    dstate = np.zeros_like(state)
    starts = split_state(state, cell, L, H)
    dstarts = split_state(dstate, cell, L, H)
    for l in range(L - 1, -1, -1):
        names = cell.layer_names(l)
        inp, seqs, cache = caches[l]
        if masks is not None:
            dout = dout * masks[l]
        dout, dstart = cell.backward(dout, inp, tuple(P[k] for k in names), tuple(G[k] for k in names), starts[l],
                                     seqs, cache)
        for d, got in zip(dstarts[l], dstart):
            d[...] = got
    return dstate


class Plan:
    """The reference's plan: there is one path (the backends' common interface: plan_for, plan=)."""

    path = way = "reference"
    precision = "float32"
    refused = ""  # why bf16 products asked for were not granted (the reference has none)

    def describe(self):
        return "NumPy reference"


PLAN = Plan()


def plan_for(P, N, T, dropout=False, threads=None, precision="float32", way=None):
    """The plan for calls of this shape: the reference has one path (float32 or float64, never bf16), whatever
    `way` a run recorded."""
    return PLAN


def forward_backward(P, G, x, y, h0, masks=None, plan=None, clock=None):
    """Loss and gradients of the language model on one minibatch.

    P: dict of parameter arrays (see fastrnn.params); G: dict of gradient arrays of the same shapes, overwritten
    (zeroed, then the backward pass adds into them). x, y: (N, T) int inputs and targets; h0: (N, S) carried
    state; masks: (L, T, N, H) dropout masks or None; plan: ignored (one path). clock: a dict that receives the
    seconds of the phases forward (layers and output layer), loss and backward, or None.
    Returns (loss, the new state (N, S) as a new array).
    """
    t0 = time.perf_counter()
    logits, fwd, state = model_forward(P, x, h0, masks)
    t1 = time.perf_counter()
    loss, dlogits = softmax_xent(logits, y)
    t2 = time.perf_counter()
    for g in G.values():
        g[...] = 0
    model_backward(dlogits, P, G, x, h0, fwd, masks)
    if clock is not None:
        clock.update(forward=t1 - t0, loss=t2 - t1, backward=time.perf_counter() - t2)
    return loss, state


def profile_step(P, G, x, y, h0, masks=None, plan=None):
    """forward_backward timed by phase: returns (loss, new state, {phase: seconds})."""
    clock = {}
    loss, state = forward_backward(P, G, x, y, h0, masks, plan, clock)
    return loss, state, clock


def forward_loss(P, x, y, h0, masks=None, plan=None):
    """Loss only (evaluation): returns (loss, new state)."""
    logits, _, state = model_forward(P, x, h0, masks)
    loss, _ = softmax_xent(logits, y)
    return loss, state


def step(P, h, token, plan=None):
    """One generation step: h: (N, S) state, token: (N,) int. Returns (new state (N, S), logits: (N, V))."""
    logits, _, state = model_forward(P, np.asarray(token).reshape(-1, 1), h)
    return state, logits[0]


# ---------------------------------------------------------------------------------------------------------------
# sampling


def probabilities(logits, temperature=1.0, top_k=0, top_p=1.0):
    """Sampling distribution over symbols from logits (V,), in float64."""
    with np.errstate(over="ignore"):
        z = np.asarray(logits, dtype=np.float64) / temperature
    if not np.isfinite(z.max()):  # a temperature so small that logits / temperature overflow: its limit, the most
        p = np.zeros(z.size)       # probable symbol (as greedy; top-k and top-p always keep it)
        p[int(np.argmax(logits))] = 1.0
        return p
    z -= z.max()
    p = np.exp(z)
    if top_k and top_k < p.size:
        cutoff = np.partition(p, p.size - top_k)[p.size - top_k]
        p[p < cutoff] = 0.0
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        c = np.cumsum(p[order])
        keep = np.searchsorted(c, top_p * c[-1] * (1 - 1e-12)) + 1  # smallest prefix reaching top_p of the mass
        p[order[keep:]] = 0.0
    p /= p.sum()
    return p


def draw(p, rng):
    """One index drawn from the distribution p (V,) with one uniform number from rng."""
    c = np.cumsum(p)
    return int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), len(p) - 1))


def generate(P, h, logits, length, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rng=None):
    """Yield `length` sampled token ids from the state h: (1, S) and its logits: (1, V) (after the prime): one
    step per character, one uniform number from rng per character (none if greedy)."""
    rng = rng if rng is not None else np.random.default_rng()
    for _ in range(length):
        if greedy:
            token = int(np.argmax(logits[0]))
        else:
            token = draw(probabilities(logits[0], temperature, top_k, top_p), rng)
        yield token
        h, logits = step(P, h, np.array([token], dtype=np.int32))


def stream_weights(P):
    """What advance_streams reads of the model, prepared once (here: the parameters as they are)."""
    return P


def advance_streams(P, h, logits, n, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rngs=None, threads=None,
                    weights=None):
    """Generate the next n tokens of B streams: a (B, n) int32 array, one batched step per character. h: (B, S)
    and logits: (B, V), the streams' states and next-character logits, are updated in place; stream b draws one
    uniform number per character from rngs[b]. `threads` and `weights` are ignored (the numba backend's
    interface). temperature, top_k, top_p: one value for all the streams, or (B,) values, one per stream. A
    stream's tokens depend only on its own state, options and generator."""
    B = np.shape(h)[0]
    rngs = list(rngs) if rngs is not None else [np.random.default_rng() for _ in range(B)]
    if len(rngs) != B:
        raise ValueError(f"advance_streams: {len(rngs)} generators for {B} streams")
    options = []
    for value, name in ((temperature, "temperature"), (top_k, "top_k"), (top_p, "top_p")):
        a = np.asarray(value)
        if a.ndim and a.shape != (B,):
            raise ValueError(f"advance_streams: {name} has {a.size} values for {B} streams")
        options.append(np.broadcast_to(a, (B,)))
    block = np.empty((B, n), dtype=np.int32)
    for i in range(n):
        for b in range(B):
            if greedy:
                block[b, i] = np.argmax(logits[b])
            else:
                t, k, p = (o[b] for o in options)
                block[b, i] = draw(probabilities(logits[b], float(t), int(k), float(p)), rngs[b])
        h_next, logits_next = step(P, h, block[:, i])
        h[...], logits[...] = h_next, logits_next
    return block


def generate_streams(P, h, logits, length, temperature=1.0, top_k=0, top_p=1.0, greedy=False, rngs=None,
                     chunk=64, threads=None):
    """Yield (B, n) arrays of sampled token ids, `length` per stream in all, from the states h: (B, S) and their
    logits: (B, V): one batched step per character, stream b drawing one uniform number per character from rngs[b].
    `chunk` is the n of the blocks yielded; `threads` is ignored (the interface of the numba backend's)."""
    B = np.shape(h)[0]
    rngs = list(rngs) if rngs is not None else [np.random.default_rng() for _ in range(B)]
    h, logits = np.array(h), np.array(logits)  # copies: updated in place
    done = 0
    while done < length:
        n = min(chunk, length - done)
        yield advance_streams(P, h, logits, n, temperature, top_k, top_p, greedy, rngs)
        done += n


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
