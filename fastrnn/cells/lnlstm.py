"""The layer-normalised LSTM (Ba, Kiros & Hinton 2016, "Layer Normalization", section 3.1): the lstm's gates i, f, o,
g with layer normalisation of the input and recurrent pre-activations and of the cell state.

    ax = x_t @ Wxh;  ah = h_{t-1} @ Whh                                   (4H values each, no bias)
    a = gx * LN(ax) + gh * LN(ah) + bh;  i, f, o = sigmoid(a_i, a_f, a_o);  g = tanh(a_g)
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(gc * LN(c_t) + bc)

LN(v) = (v - mean(v)) / sqrt(var(v) + EPS) over the 4H (or H) values of one sequence's vector. The learned gains
gx, gh (4H each) and gc (H) start at 1 and the biases at 0, but for the forget gate's (1, as the lstm's). The
paper writes a bias beside each gain, LN(ah; a1, b1) + LN(ax; a2, b2) + b: the three only ever appear summed,
so one bias bh carries them (the same functions, three fewer vectors). The state is h and c (c before its LN).

Parameters of layer l: Wxh, Whh, bh as the lstm's, then gx, gh, gc, bc (Cell.extras). PyTorch has no such module:
export writes npz only. Kernels: fastrnn/kernels/lnlstm.py.
"""

import numpy as np

from fastrnn.cells.base import Cell, register
from fastrnn.reference import input_backward, input_forward, sigmoid

EPS = 1e-5  # added to the variance (PyTorch's LayerNorm default)


def layer_norm(v):
    """(LN(v) over the last axis, 1/sqrt(var + EPS) with a trailing axis of 1)."""
    d = v - v.mean(axis=-1, keepdims=True)
    r = 1.0 / np.sqrt((d * d).mean(axis=-1, keepdims=True) + EPS)
    return d * r, r


def layer_norm_backward(dn, n, r):
    """The gradient w.r.t. v of n = LN(v) (n and r from layer_norm), given dn, the gradient w.r.t. n."""
    return r * (dn - dn.mean(axis=-1, keepdims=True) - n * (dn * n).mean(axis=-1, keepdims=True))


def lnlstm_forward(ax, h0, c0, Whh, bh, gx, gh, gc, bc):
    """The layer over T steps from the input side ax: (T, N, 4H) (x_t @ Wxh, no bias); h0, c0: (N, H).
    Returns hs, cs: (T, N, H) and the cache (xn, rx, hn, rh, gates, cn, rc, ty): LN(ax), LN(ah), the gates after
    their nonlinearities, LN(c_t), their 1/sqrt(var + EPS), and tanh(gc * LN(c_t) + bc)."""
    T, N, H4 = ax.shape
    H = H4 // 4
    xn, rx = layer_norm(ax)  # the input side: all positions at once
    hn, gates = np.empty_like(ax), np.empty_like(ax)
    rh = np.empty((T, N, 1), ax.dtype)
    hs, cs, cn, ty = (np.empty((T, N, H), ax.dtype) for _ in range(4))
    rc = np.empty((T, N, 1), ax.dtype)
    h, c = h0, c0
    for t in range(T):
        hn[t], rh[t] = layer_norm(h @ Whh)
        a = gx * xn[t] + gh * hn[t] + bh  # (N, 4H)
        gt = gates[t]
        gt[:, :3 * H] = sigmoid(a[:, :3 * H])
        gt[:, 3 * H:] = np.tanh(a[:, 3 * H:])
        c = cs[t] = gt[:, H:2 * H] * c + gt[:, :H] * gt[:, 3 * H:]
        cn[t], rc[t] = layer_norm(c)
        ty[t] = np.tanh(gc * cn[t] + bc)
        h = hs[t] = gt[:, 2 * H:3 * H] * ty[t]
    return hs, cs, (xn, rx, hn, rh, gates, cn, rc, ty)


def lnlstm_backward(dhs, h0, c0, hs, cs, cache, Whh, gx, gh, gc, dW):
    """Backpropagation through time for lnlstm_forward: adds into dW = (dWhh, dbh, dgx, dgh, dgc, dbc).
    Returns dax: (T, N, 4H) (the gradient w.r.t. the input side), dh0, dc0: (N, H)."""
    xn, rx, hn, rh, gates, cn, rc, ty = cache
    dWhh, dbh, dgx, dgh, dgc, dbc = dW
    T, N, H = hs.shape
    da, dah = np.empty_like(gates), np.empty_like(gates)  # w.r.t. the gates' pre-activations, and ah
    dh_next, dc_next = np.zeros((N, H), hs.dtype), np.zeros((N, H), hs.dtype)
    for t in range(T - 1, -1, -1):
        i, f, o, g = (gates[t][:, k * H:(k + 1) * H] for k in range(4))
        c_prev = cs[t - 1] if t > 0 else c0
        dh = dhs[t] + dh_next
        dy = dh * o * (1.0 - ty[t] * ty[t])  # w.r.t. gc * LN(c) + bc
        dgc += (dy * cn[t]).sum(axis=0)
        dbc += dy.sum(axis=0)
        dc = dc_next + layer_norm_backward(dy * gc, cn[t], rc[t])
        d = da[t]
        d[:, :H] = dc * g * i * (1.0 - i)
        d[:, H:2 * H] = dc * c_prev * f * (1.0 - f)
        d[:, 2 * H:3 * H] = dh * ty[t] * o * (1.0 - o)
        d[:, 3 * H:] = dc * i * (1.0 - g * g)
        dc_next = dc * f
        dah[t] = layer_norm_backward(d * gh, hn[t], rh[t])
        dh_next = dah[t] @ Whh.T
    d2 = da.reshape(T * N, 4 * H)
    dbh += d2.sum(axis=0)
    dgx += (d2 * xn.reshape(T * N, 4 * H)).sum(axis=0)
    dgh += (d2 * hn.reshape(T * N, 4 * H)).sum(axis=0)
    hprev = np.concatenate([h0[None], hs[:-1]], axis=0)  # (T, N, H)
    dWhh += hprev.reshape(T * N, H).T @ dah.reshape(T * N, 4 * H)
    return layer_norm_backward(da * gx, xn, rx), dh_next, dc_next


def forward(inp, W, state0):
    """The reference layer (fastrnn.cells.base): seqs (hs, cs), cache lnlstm_forward's."""
    Wxh, Whh, bh, gx, gh, gc, bc = W
    hs, cs, cache = lnlstm_forward(input_forward(inp, Wxh, 0.0), state0[0], state0[1], Whh, bh, gx, gh, gc, bc)
    return (hs, cs), cache


def backward(dhs, inp, W, dW, state0, seqs, cache):
    Wxh, Whh, bh, gx, gh, gc, bc = W
    dax, dh0, dc0 = lnlstm_backward(dhs, state0[0], state0[1], seqs[0], seqs[1], cache, Whh, gx, gh, gc, dW[1:])
    no_bias = np.zeros_like(bh)  # the input side has no bias of its own: bh's gradient came from the gates
    return input_backward(dax, inp, Wxh, dW[0], no_bias), (dh0, dc0)


def init(layer, H):
    """Gains 1, biases 0, but the forget gate's biases (block 1 of i, f, o, g): 1, as the lstm's."""
    for gain in ("gx", "gh", "gc"):
        layer[gain][...] = 1.0
    layer["bc"][...] = 0.0
    layer["bh"][H:2 * H] = 1.0


def kernels():
    from fastrnn.kernels import lnlstm

    return lnlstm.LAYER


LNLSTM = register(Cell(name="lnlstm", gates=4, state=("h", "c"), forward=forward, backward=backward,
                       kernels=kernels, extras=(("gx", 4), ("gh", 4), ("gc", 1), ("bc", 1)), init=init,
                       summary="the lstm with layer normalisation"))
