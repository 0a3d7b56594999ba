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
from fastrnn.params import arch_of, layer_names

# ---------------------------------------------------------------------------------------------------------------
# layers


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


def lstm_forward(xa, h0, c0, Whh):
    """LSTM over a minibatch, from the input side already computed.

    xa: (T, N, 4H) input-side pre-activations of every position (x_t @ Wxh + bh), gates in the order
    i (input), f (forget), o (output), g (candidate); h0, c0: (N, H); Whh: (H, 4H).
        a = xa[t] + h_{t-1} @ Whh;  i, f, o = sigmoid(a_i, a_f, a_o);  g = tanh(a_g)
        c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)
    Returns hs: (T, N, H), cs: (T, N, H), gates: (T, N, 4H) (i, f, o, g after their nonlinearities).
    """
    T, N, H4 = xa.shape
    H = H4 // 4
    gates = np.empty_like(xa)  # (T, N, 4H)
    hs = np.empty((T, N, H), dtype=xa.dtype)  # (T, N, H)
    cs = np.empty((T, N, H), dtype=xa.dtype)  # (T, N, H)
    h, c = h0, c0
    for t in range(T):
        a = xa[t] + h @ Whh  # (N, 4H)
        gt = gates[t]
        gt[:, :3 * H] = sigmoid(a[:, :3 * H])
        gt[:, 3 * H:] = np.tanh(a[:, 3 * H:])
        c = gt[:, H:2 * H] * c + gt[:, :H] * gt[:, 3 * H:]
        cs[t] = c
        h = hs[t]
        np.tanh(c, out=h)
        h *= gt[:, 2 * H:3 * H]
    return hs, cs, gates


def lstm_backward(dhs, h0, c0, hs, cs, gates, Whh, dWhh):
    """Backpropagation through time for `lstm_forward`.

    dhs: (T, N, H) gradient w.r.t. each h_t from above. Adds into dWhh: (H, 4H).
    Returns dxa: (T, N, 4H) (the gradient w.r.t. the pre-activations, = w.r.t. the input side), dh0, dc0: (N, H).
    """
    T, N, H = hs.shape
    dxa = np.empty_like(gates)  # (T, N, 4H)
    dh_next = np.zeros((N, H), dtype=hs.dtype)
    dc_next = np.zeros((N, H), dtype=hs.dtype)
    for t in range(T - 1, -1, -1):
        i, f, o, g = (gates[t][:, k * H:(k + 1) * H] for k in range(4))
        c_prev = cs[t - 1] if t > 0 else c0
        tc = np.tanh(cs[t])
        dh = dhs[t] + dh_next
        dc = dc_next + dh * o * (1.0 - tc * tc)
        da = dxa[t]
        da[:, :H] = dc * g * i * (1.0 - i)
        da[:, H:2 * H] = dc * c_prev * f * (1.0 - f)
        da[:, 2 * H:3 * H] = dh * tc * o * (1.0 - o)
        da[:, 3 * H:] = dc * i * (1.0 - g * g)
        dc_next = dc * f
        dh_next = da @ Whh.T
    hprev = np.concatenate([h0[None], hs[:-1]], axis=0)  # (T, N, H)
    dWhh += hprev.reshape(T * N, H).T @ dxa.reshape(T * N, 4 * H)
    return dxa, dh_next, dc_next


def gru_forward(xa, h0, Whh):
    """GRU (Cho et al. 2014) over a minibatch, from the input side already computed.

    xa: (T, N, 3H) input-side pre-activations (x_t @ Wxh + bh), gates in the order r (reset), z (update),
    n (candidate); h0: (N, H); Whh: (H, 3H). The reset gate multiplies the recurrent product (the variant of
    cuDNN and PyTorch, which keeps one (N, H) x (H, 3H) product per step):
        ha = h_{t-1} @ Whh;  r = sigmoid(xa_r + ha_r);  z = sigmoid(xa_z + ha_z);  n = tanh(xa_n + r * ha_n)
        h_t = (1 - z) * n + z * h_{t-1}
    Returns hs: (T, N, H), gates: (T, N, 3H) (r, z, n after their nonlinearities), hn: (T, N, H) (ha_n).
    """
    T, N, H3 = xa.shape
    H = H3 // 3
    gates = np.empty_like(xa)  # (T, N, 3H)
    hn = np.empty((T, N, H), dtype=xa.dtype)  # (T, N, H)
    hs = np.empty((T, N, H), dtype=xa.dtype)  # (T, N, H)
    h = h0
    for t in range(T):
        ha = h @ Whh  # (N, 3H)
        gt = gates[t]
        gt[:, :2 * H] = sigmoid(xa[t][:, :2 * H] + ha[:, :2 * H])
        hn[t] = ha[:, 2 * H:]
        gt[:, 2 * H:] = np.tanh(xa[t][:, 2 * H:] + gt[:, :H] * hn[t])
        z, n = gt[:, H:2 * H], gt[:, 2 * H:]
        hs[t] = n + z * (h - n)
        h = hs[t]
    return hs, gates, hn


def gru_backward(dhs, h0, hs, gates, hn, Whh, dWhh):
    """Backpropagation through time for `gru_forward`.

    dhs: (T, N, H) gradient w.r.t. each h_t from above. Adds into dWhh: (H, 3H).
    Returns dxa: (T, N, 3H) (the gradient w.r.t. the input side), dh0: (N, H).
    """
    T, N, H = hs.shape
    dxa = np.empty_like(gates)  # (T, N, 3H)
    dha = np.empty_like(gates)  # (T, N, 3H) gradient w.r.t. the recurrent product h_{t-1} @ Whh
    dh_next = np.zeros((N, H), dtype=hs.dtype)
    for t in range(T - 1, -1, -1):
        r, z, n = (gates[t][:, k * H:(k + 1) * H] for k in range(3))
        h_prev = hs[t - 1] if t > 0 else h0
        dh = dhs[t] + dh_next
        dn = dh * (1.0 - z) * (1.0 - n * n)  # w.r.t. n's pre-activation
        dz = dh * (h_prev - n) * z * (1.0 - z)
        dr = dn * hn[t] * r * (1.0 - r)
        dx, dr_h = dxa[t], dha[t]
        dx[:, :H], dx[:, H:2 * H], dx[:, 2 * H:] = dr, dz, dn
        dr_h[:, :H], dr_h[:, H:2 * H], dr_h[:, 2 * H:] = dr, dz, dn * r
        dh_next = dh * z + dr_h @ Whh.T
    hprev = np.concatenate([h0[None], hs[:-1]], axis=0)  # (T, N, H)
    dWhh += hprev.reshape(T * N, H).T @ dha.reshape(T * N, 3 * H)
    return dxa, dh_next


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
# A model is L layers of one cell (rnn, gru or lstm, see fastrnn.params) under a softmax output layer. Layer 0
# reads the tokens, layer l the output of layer l-1; with dropout, layer l's output is multiplied by masks[l]
# (inverted dropout: 0 or 1/(1-p), made by fastrnn.dropout) before it feeds layer l+1 or the output layer.
# The carried state is one (N, S) array: for each layer, h (H columns) and, for an lstm, then c (H columns).


def split_state(state, cell, L, H):
    """Views of the carried state (N, S): a list over layers of (h, c) (c is None unless lstm)."""
    K = 2 if cell == "lstm" else 1
    return [(state[:, l * K * H:l * K * H + H], state[:, l * K * H + H:(l + 1) * K * H] if K == 2 else None)
            for l in range(L)]


def model_forward(P, x, state, masks=None):
    """Forward pass of the whole model. Returns (logits: (T, N, V), caches, new state (N, S))."""
    cell, L, H = arch_of(P)
    inp = x
    caches = []
    new_state = np.empty_like(state)
    for l, ((h0, c0), (hT, cT)) in enumerate(zip(split_state(state, cell, L, H),
                                                  split_state(new_state, cell, L, H))):
        wx, wh, b = layer_names(l)
        xa = input_forward(inp, P[wx], P[b])
        if cell == "rnn":
            hs = rnn_cell_forward(xa, h0, P[wh])
            cache = (hs,)
        elif cell == "lstm":
            hs, cs, gates = lstm_forward(xa, h0, c0, P[wh])
            cache = (hs, cs, gates)
            cT[...] = cs[-1]
        else:
            hs, gates, hn = gru_forward(xa, h0, P[wh])
            cache = (hs, gates, hn)
        hT[...] = hs[-1]
        out = hs if masks is None else hs * masks[l]
        caches.append((inp, cache))
        inp = out
    logits = affine_forward(inp, P["Why"], P["by"])
    return logits, (caches, inp), new_state


def model_backward(dlogits, P, G, x, state, fwd, masks=None):
    """Backward pass of the whole model: adds into G. Returns the gradient w.r.t. the carried state (N, S)."""
    cell, L, H = arch_of(P)
    caches, top = fwd
    dout = affine_backward(dlogits, top, P["Why"], G["Why"], G["by"])  # (T, N, H)
    dstate = np.zeros_like(state)
    starts = split_state(state, cell, L, H)
    dstarts = split_state(dstate, cell, L, H)
    for l in range(L - 1, -1, -1):
        wx, wh, b = layer_names(l)
        inp, cache = caches[l]
        (h0, c0), (dh0, dc0) = starts[l], dstarts[l]
        if masks is not None:
            dout = dout * masks[l]
        if cell == "rnn":
            dxa, dh0[...] = rnn_cell_backward(dout, h0, *cache, P[wh], G[wh])
        elif cell == "lstm":
            dxa, dh0[...], dc0[...] = lstm_backward(dout, h0, c0, *cache, P[wh], G[wh])
        else:
            dxa, dh0[...] = gru_backward(dout, h0, *cache, P[wh], G[wh])
        dout = input_backward(dxa, inp, P[wx], G[wx], G[b])
    return dstate


class Plan:
    """The reference's plan: there is one path (the backends' common interface: plan_for, plan=)."""

    path = "reference"
    precision = "float32"
    refused = ""  # why bf16 products asked for were not granted (the reference has none)

    def describe(self):
        return "NumPy reference"


PLAN = Plan()


def plan_for(P, N, T, dropout=False, threads=None, precision="float32"):
    """The plan for calls of this shape: the reference has one path (float32 or float64, never bf16)."""
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
