"""Generation in numba: a whole run of sampled characters per call, no Python between characters.

`sample_chunk` does exactly what fastrnn.sample.generate does with a backend, one character at a time:

    p = probabilities(logits, temperature, top_k, top_p)   (float64: softmax of logits / temperature, top-k,
    token = draw(p, u)                                      top-p; then the inverse CDF at u * total mass)
    h = tanh(Wxh[token] + h @ Whh + bh); logits = h @ Why + by   (the products as rnn.matmul_small)

with the uniform numbers u given in `uniforms` (drawn by the caller from its numpy Generator, one per character,
so a seed gives the same text as the NumPy path up to float rounding). Greedy takes the argmax instead.
"""

import numpy as np

from fastrnn.kernels.jit import kernel
from fastrnn.kernels.mathfn import tanh
from fastrnn.kernels.rnn import matmul_small


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
def sample_chunk(out, h, logits, uniforms, Wxh, Whh, bh, Why, by, temperature, top_k, top_p, greedy):
    """Generate out.shape[0] tokens into out (n,) int32, updating h (H,) and logits (V,) in place.

    uniforms: (n,) float64 in [0, 1); Wxh (V, H), Whh (H, H), bh (H,), Why (H, V), by (V,).
    """
    H = h.shape[0]
    V = logits.shape[0]
    z = np.empty(V, np.float64)  # (V,)
    a = np.empty(H, h.dtype)  # (H,) pre-activation
    h1, a1, l1 = h.reshape(1, H), a.reshape(1, H), logits.reshape(1, V)
    for i in range(out.shape[0]):
        token = _choose(logits, uniforms[i], temperature, top_k, top_p, greedy, z)
        out[i] = token
        matmul_small(a1, h1, Whh)  # a = h @ Whh, four rows of Whh at a time
        wx = Wxh[token]
        for j in range(H):
            h[j] = tanh(a[j] + wx[j] + bh[j])
        matmul_small(l1, h1, Why)
        for j in range(V):
            logits[j] += by[j]
