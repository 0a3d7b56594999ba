"""Generation in numba: a whole run of sampled characters per call, no Python between characters.

`sample_streams` does exactly what fastrnn.sample.generate does with a backend, one character at a time, for every
model (any cell of fastrnn.cells; any number of layers L), for B independent streams at once, each with its own
sampling options (each weight is read once per character for all the streams a thread runs):

    p = probabilities(logits, temperature, top_k, top_p)   (float64: softmax of logits / temperature, top-k,
    token = draw(p, u)                                      top-p; then the inverse CDF at u * total mass)
    for each layer l, bottom up (as fastrnn.reference.model_forward, without dropout):
        xa = Wxh[token] (layer 0) or h_{l-1} @ Wxh_l (above)                  (G*H,)
        a = h_l @ Whh_l                                                       (G*H,)
        the layer's state (h_l, and c_l for an lstm) = the cell's update from xa, a, bh_l and its extras
    logits = h_{L-1} @ Why + by                             (the products by tiles.matmul_packed)

with the uniform numbers u given in `uniforms` (drawn by the caller from each stream's numpy Generator, one per
character, so a seed gives the same text as the NumPy path up to float rounding). Greedy takes the argmax instead.

Each cell's kernel module (kernels/rnn.py, lstm.py, gru.py, ...) has the loop above as its own parallel kernel,
`<cell>_sample_streams`, a few lines built of the helpers here (scratch, choose_tokens, layer_products,
output_logits) around the cell's update:

    update(h, c, g, xa, a, b, ex)    h, c: (H,) the layer's state, in place (c is h for a cell without a c);
                                     xa: (G*H,) the input side, without the bias, and a: (G*H,) the recurrent
                                     product, both scratch; b: (G*H,) the bias; ex: the layer's extras (its
                                     sample_extras, 0 values for most cells); g: (G*H,) scratch

(Handing the update to one shared kernel as a function argument would do, but numba then caches no kernel that
allocates or can raise: every process would compile generation anew.)
"""

import numpy as np

from fastrnn.kernels.jit import kernel
from fastrnn.kernels.tiles import matmul_packed


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
def scratch(state, Wx0, logits):
    """One group's scratch: z (V,) float64, xa and a (R, G*H) the input side and the recurrent product, g (G*H,)
    the gates, hin (R, H) a layer's h (or the layer below's), contiguous."""
    R, H, GH = state.shape[0], state.shape[3], Wx0.shape[1]
    return (np.empty(logits.shape[1], np.float64), np.empty((R, GH), state.dtype), np.empty((R, GH), state.dtype),
            np.empty(GH, state.dtype), np.empty((R, H), state.dtype))


@kernel
def choose_tokens(out, logits, uniforms, temperature, top_k, top_p, greedy, z, i):
    """out[:, i]: each row's token drawn from its logits with its uniform number i (_choose)."""
    for r in range(out.shape[0]):
        out[r, i] = _choose(logits[r], uniforms[r, i], temperature[r], top_k[r], top_p[r], greedy, z)


@kernel
def layer_products(xa, a, hin, state, out, i, l, Wx0, Wxp, Whp):
    """Layer l's products for each row: xa = Wx0[out[r, i]] (layer 0) or h_{l-1} @ Wxh_l (above, Wxp packed);
    a = h_l @ Whh_l (Whp packed)."""
    R = xa.shape[0]
    if l == 0:
        for r in range(R):
            xa[r] = Wx0[out[r, i]]
    else:
        for r in range(R):
            hin[r] = state[r, l - 1, 0]  # the new h of the layer below
        matmul_packed(xa, hin, Wxp)
    for r in range(R):
        hin[r] = state[r, l, 0]
    matmul_packed(a, hin, Whp)


@kernel
def output_logits(logits, hin, state, Whyp, by):
    """logits = the top layer's h @ Why + by, for each row."""
    R, L = state.shape[0], state.shape[1]
    for r in range(R):
        hin[r] = state[r, L - 1, 0]
    matmul_packed(logits, hin, Whyp)
    V = logits.shape[1]
    for r in range(R):
        for j in range(V):
            logits[r, j] += by[j]


class Streams:
    """The cell's part of sample_streams's arguments: its parallel kernel and the extras of each layer."""

    def __init__(self, kernel, extras):
        self.kernel, self.extras = kernel, extras


def sample_streams(out, state, logits, uniforms, Wx0, Wxp, Whp, bh, Whyp, by, cell, temperature, top_k, top_p,
                   greedy, groups):
    """Generate out.shape[1] tokens for each of B streams into out (B, n) int32, updating state and logits (B, V)
    in place.

    state: (B, L, K, H), each stream's carried state (1, S) of fastrnn.reference reshaped: state[b, l, k] is layer
    l's vector k of its cell's state (h, and c for an lstm); uniforms: (B, n) float64 in [0, 1), one per character
    of each stream; temperature, top_k, top_p: (B,) float64, int64, float64, each stream's sampling options (top_k
    at most V; 0: off); cell: a Streams (the cell's kernel and extras). Wx0: layer 0's Wxh (V, G*H) (rows looked
    up); Wxp, Whp, bh: tuples over the layers of tiles.pack(Wxh) ((H, G*H) above layer 0; an empty tiles.no_pack
    for layer 0), tiles.pack(Whh) and bh (G*H,); Whyp: tiles.pack(Why (H, V)); by (V,). backend.sample_params
    makes them from a model.

    The streams are cut into `groups` contiguous groups, one per thread, each generating all n characters of its
    streams with no exchange between threads (each thread reads every weight once per character for its rows).
    A stream's tokens do not depend on B, on `groups` or on the thread count.
    """
    cell.kernel(out, state, logits, uniforms, Wx0, Wxp, Whp, bh, cell.extras, Whyp, by, temperature, top_k, top_p,
                greedy, groups)
