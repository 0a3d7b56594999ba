"""Generation in numba: a whole run of sampled characters per call, no Python between characters.

`sample_streams` does exactly what fastrnn.sample.generate does with a backend, one character at a time, for every
model (cells rnn, lstm, gru; any number of layers L), for B independent streams at once, each with its own sampling
options (each weight is read once per character for all the streams a thread runs):

    p = probabilities(logits, temperature, top_k, top_p)   (float64: softmax of logits / temperature, top-k,
    token = draw(p, u)                                      top-p; then the inverse CDF at u * total mass)
    for each layer l, bottom up (as fastrnn.reference.model_forward, without dropout):
        xa = Wxh[token] + bh (layer 0) or h_{l-1} @ Wxh_l + bh_l (above)      (G*H,)
        a = h_l @ Whh_l                                                       (G*H,)
        h_l (and c_l) = the cell's update from xa and a (`_cell_update`)
    logits = h_{L-1} @ Why + by                             (the products by tiles.matmul_packed)

with the uniform numbers u given in `uniforms` (drawn by the caller from each stream's numpy Generator, one per
character, so a seed gives the same text as the NumPy path up to float rounding). Greedy takes the argmax instead.

The cells (gates in blocks of H columns, in the order of fastrnn.reference):
    rnn   h = tanh(xa + a)
    lstm  i, f, o = sigmoid(xa + a) (blocks 0-2), g = tanh(xa + a) (block 3); c = f * c + i * g; h = o * tanh(c)
    gru   r, z = sigmoid(xa + a) (blocks 0-1); n = tanh(xa_n + r * a_n); h = n + z * (h - n)
with sigmoid(x) = 1/2 + tanh(x/2)/2, and mathfn's vectorizable tanh in float32 (np.tanh in float64).
"""

import numpy as np

from fastrnn.kernels import mathfn
from numba import prange

from fastrnn.kernels.jit import kernel, parallel_kernel
from fastrnn.kernels.lstm import lstm_cell
from fastrnn.kernels.tiles import matmul_packed

CELL_CODES = {"rnn": 0, "lstm": 1, "gru": 2}  # the `cell` argument of sample_chunk
RNN, LSTM, GRU = CELL_CODES["rnn"], CELL_CODES["lstm"], CELL_CODES["gru"]


@kernel
def _choose(logits, u, temperature, top_k, top_p, greedy, z):
    """The token drawn from logits (V,) with the uniform number u. z: (V,) float64 scratch."""
    V = logits.shape[0]
    m = -np.inf
    if not greedy:
        for j in range(V):
            z[j] = np.float64(logits[j]) / temperature
            if z[j] > m:
                m = z[j]
    if greedy or not np.isfinite(m):  # (a temperature so small that logits / temperature overflow: its limit,
        # the most probable symbol, as the NumPy path; top-k and top-p always keep it)
        best = 0
        for j in range(1, V):
            if logits[j] > logits[best]:
                best = j
        return best
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
def _sample_rows(out, state, logits, uniforms, Wx0, Wxp, Whp, bh, Whyp, by, cell, temperature, top_k, top_p,
                 greedy):
    """sample_streams for one group of R streams (all arrays, the sampling options too, already cut to the group's
    rows), on one thread."""
    R, L, K, H = state.shape
    n = out.shape[1]
    GH = Wx0.shape[1]
    V = logits.shape[1]
    z = np.empty(V, np.float64)  # (V,)
    xa = np.empty((R, GH), state.dtype)  # (R, G*H) input side
    a = np.empty((R, GH), state.dtype)  # (R, G*H) recurrent product
    g = np.empty(GH, state.dtype)  # (G*H,) gates
    hin = np.empty((R, H), state.dtype)  # (R, H) a layer's h (or the layer below's), contiguous
    for i in range(n):
        for r in range(R):
            out[r, i] = _choose(logits[r], uniforms[r, i], temperature[r], top_k[r], top_p[r], greedy, z)
        for l in range(L):
            b = bh[l]
            if l == 0:
                for r in range(R):
                    wx = Wx0[out[r, i]]
                    for j in range(GH):
                        xa[r, j] = wx[j] + b[j]
            else:
                for r in range(R):
                    hin[r] = state[r, l - 1, 0]  # the new h of the layer below
                matmul_packed(xa, hin, Wxp[l])
                for r in range(R):
                    for j in range(GH):
                        xa[r, j] += b[j]
            for r in range(R):
                hin[r] = state[r, l, 0]
            matmul_packed(a, hin, Whp[l])
            for r in range(R):
                _cell_update(state[r, l, 0], state[r, l, K - 1], g, xa[r], a[r], cell)
        for r in range(R):
            hin[r] = state[r, L - 1, 0]
        matmul_packed(logits, hin, Whyp)
        for r in range(R):
            for j in range(V):
                logits[r, j] += by[j]


@parallel_kernel
def sample_streams(out, state, logits, uniforms, Wx0, Wxp, Whp, bh, Whyp, by, cell, temperature, top_k, top_p,
                   greedy, groups):
    """Generate out.shape[1] tokens for each of B streams into out (B, n) int32, updating state and logits (B, V)
    in place.

    state: (B, L, K, H), each stream's carried state (1, S) of fastrnn.reference reshaped: state[b, l, 0] is layer
    l's h and, for an lstm (K = 2), state[b, l, 1] its c; uniforms: (B, n) float64 in [0, 1), one per character of
    each stream; temperature, top_k, top_p: (B,) float64, int64, float64, each stream's sampling options (top_k
    at most V; 0: off); cell: a CELL_CODES value. Wx0: layer 0's Wxh (V, G*H) (rows looked up); Wxp, Whp, bh: tuples over
    the layers of tiles.pack(Wxh) ((H, G*H) above layer 0; an empty tiles.no_pack for layer 0), tiles.pack(Whh)
    and bh (G*H,); Whyp: tiles.pack(Why (H, V)); by (V,). backend.sample_params makes them from a model.

    The streams are cut into `groups` contiguous groups, one per thread, each generating all n characters of its
    streams with no exchange between threads (each thread reads every weight once per character for its rows).
    A stream's tokens do not depend on B, on `groups` or on the thread count.
    """
    B = out.shape[0]
    groups = max(1, min(groups, B))
    for q in prange(groups):
        r0, r1 = q * B // groups, (q + 1) * B // groups
        _sample_rows(out[r0:r1], state[r0:r1], logits[r0:r1], uniforms[r0:r1], Wx0, Wxp, Whp, bh, Whyp, by, cell,
                     temperature[r0:r1], top_k[r0:r1], top_p[r0:r1], greedy)
