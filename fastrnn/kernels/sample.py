"""Generation in numba: a whole run of sampled characters per call, no Python between characters.

`sample_chunk` does exactly what fastrnn.sample.generate does with a backend, one character at a time, for every
model (cells rnn, lstm, gru; any number of layers L):

    p = probabilities(logits, temperature, top_k, top_p)   (float64: softmax of logits / temperature, top-k,
    token = draw(p, u)                                      top-p; then the inverse CDF at u * total mass)
    for each layer l, bottom up (as fastrnn.reference.model_forward, without dropout):
        xa = Wxh[token] + bh (layer 0) or h_{l-1} @ Wxh_l + bh_l (above)      (G*H,)
        a = h_l @ Whh_l                                                       (G*H,)
        h_l (and c_l) = the cell's update from xa and a (`_cell_update`)
    logits = h_{L-1} @ Why + by                             (the products as rnn.matmul_small)

with the uniform numbers u given in `uniforms` (drawn by the caller from its numpy Generator, one per character,
so a seed gives the same text as the NumPy path up to float rounding). Greedy takes the argmax instead.

The cells (gates in blocks of H columns, in the order of fastrnn.reference):
    rnn   h = tanh(xa + a)
    lstm  i, f, o = sigmoid(xa + a) (blocks 0-2), g = tanh(xa + a) (block 3); c = f * c + i * g; h = o * tanh(c)
    gru   r, z = sigmoid(xa + a) (blocks 0-1); n = tanh(xa_n + r * a_n); h = n + z * (h - n)
with sigmoid(x) = 1/2 + tanh(x/2)/2, and mathfn's vectorizable tanh in float32 (np.tanh in float64).
"""

import numpy as np

from fastrnn.kernels import mathfn
from fastrnn.kernels.jit import kernel
from fastrnn.kernels.lstm import lstm_cell
from fastrnn.kernels.rnn import matmul_small

CELL_CODES = {"rnn": 0, "lstm": 1, "gru": 2}  # the `cell` argument of sample_chunk
RNN, LSTM, GRU = CELL_CODES["rnn"], CELL_CODES["lstm"], CELL_CODES["gru"]


@kernel
def _choose(logits, u, temperature, top_k, top_p, greedy, z):
    """The token drawn from logits (V,) with the uniform number u. z: (V,) float64 scratch."""
    V = logits.shape[0]
    if greedy:
        best = 0
        for j in range(1, V):
            if logits[j] > logits[best]:
                best = j
        return best
    m = -np.inf
    for j in range(V):
        z[j] = np.float64(logits[j]) / temperature
        if z[j] > m:
            m = z[j]
    for j in range(V):
        z[j] = np.exp(z[j] - m)
    if top_k > 0 and top_k < V:
        cutoff = np.sort(z)[V - top_k]
        for j in range(V):
            if z[j] < cutoff:
                z[j] = 0.0
    if top_p < 1.0:
        order = np.argsort(-z, kind="mergesort")  # stable, as the NumPy path
        total = 0.0
        for j in range(V):
            total += z[j]
        target = top_p * total * (1 - 1e-12)
        c = 0.0
        keep = V
        for r in range(V):
            c += z[order[r]]
            if c >= target:
                keep = r + 1
                break
        for r in range(keep, V):
            z[order[r]] = 0.0
    total = 0.0
    for j in range(V):
        total += z[j]
    x = u * total
    c = 0.0
    for j in range(V):
        c += z[j]
        if c > x:
            return j
    return V - 1


@kernel
def _cell_update(h, c, g, xa, a, cell):
    """One layer's step, in place: h, c: (H,) the layer's state (c is used by lstm only); xa: (G*H,) the input
    side with the bias; a: (G*H,) the recurrent product h @ Whh, overwritten (lstm); g: (G*H,) scratch, the gates."""
    H = h.shape[0]
    if cell == RNN:
        for j in range(H):
            h[j] = mathfn.tanh_call(xa[j] + a[j])
    elif cell == LSTM:
        for j in range(4 * H):
            a[j] = xa[j] + a[j]
        lstm_cell(a, g, c, c, h)  # c updated in place: each c[j] is read before it is written
    else:  # GRU: the reset gate multiplies the recurrent product a_n
        for j in range(2 * H):
            g[j] = mathfn.sigmoid(xa[j] + a[j])
        for j in range(H):
            g[2 * H + j] = mathfn.tanh_call(xa[2 * H + j] + g[j] * a[2 * H + j])
        for j in range(H):
            h[j] = g[2 * H + j] + g[H + j] * (h[j] - g[2 * H + j])


@kernel
def sample_chunk(out, state, logits, uniforms, Wxh, Whh, bh, Why, by, cell, temperature, top_k, top_p, greedy):
    """Generate out.shape[0] tokens into out (n,) int32, updating state and logits (V,) in place.

    state: (L, K, H), the carried state (1, S) of fastrnn.reference reshaped: state[l, 0] is layer l's h and, for
    an lstm (K = 2), state[l, 1] its c; uniforms: (n,) float64 in [0, 1); cell: a CELL_CODES value.
    Wxh, Whh, bh: tuples over the layers of Wxh (V, G*H) for layer 0, (H, G*H) above; Whh (H, G*H); bh (G*H,).
    Why (H, V), by (V,).
    """
    L, K, H = state.shape
    GH = Whh[0].shape[1]
    V = logits.shape[0]
    z = np.empty(V, np.float64)  # (V,)
    xa = np.empty((1, GH), state.dtype)  # (1, G*H) input side
    a = np.empty((1, GH), state.dtype)  # (1, G*H) recurrent product
    g = np.empty(GH, state.dtype)  # (G*H,) gates
    l1 = logits.reshape(1, V)
    for i in range(out.shape[0]):
        token = _choose(logits, uniforms[i], temperature, top_k, top_p, greedy, z)
        out[i] = token
        for l in range(L):
            b = bh[l]
            if l == 0:
                wx = Wxh[0][token]
                for j in range(GH):
                    xa[0, j] = wx[j] + b[j]
            else:
                matmul_small(xa, state[l - 1, 0:1], Wxh[l])  # the new h of the layer below
                for j in range(GH):
                    xa[0, j] += b[j]
            matmul_small(a, state[l, 0:1], Whh[l])  # four rows of Whh at a time
            _cell_update(state[l, 0], state[l, K - 1], g, xa[0], a[0], cell)
        matmul_small(l1, state[L - 1, 0:1], Why)
        for j in range(V):
            logits[j] += by[j]
