"""The LSTM (Hochreiter & Schmidhuber 1997, with a forget gate): four gate blocks i, f, o, g in one matrix.

    a = x_t @ Wxh + h_{t-1} @ Whh + bh;  i, f, o = sigmoid(a_i, a_f, a_o);  g = tanh(a_g)
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

The state is h and c; the forget-gate biases start at 1 (Jozefowicz et al. 2015), whatever the init. PyTorch's
nn.LSTM packs i, f, g, o (export swaps the last two blocks). Kernels: fastrnn/kernels/lstm.py.
"""

import numpy as np

from fastrnn.cells.base import Cell, register
from fastrnn.reference import input_backward, input_forward, sigmoid


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


def forward(inp, W, state0):
    """The reference layer (fastrnn.cells.base): seqs (hs, cs), cache (gates,)."""
    Wxh, Whh, bh = W
    hs, cs, gates = lstm_forward(input_forward(inp, Wxh, bh), state0[0], state0[1], Whh)
    return (hs, cs), (gates,)


def backward(dhs, inp, W, dW, state0, seqs, cache):
    dxa, dh0, dc0 = lstm_backward(dhs, state0[0], state0[1], seqs[0], seqs[1], cache[0], W[1], dW[1])
    return input_backward(dxa, inp, W[0], dW[0], dW[2]), (dh0, dc0)


def init(layer, H):
    """The forget gate's biases (block 1 of i, f, o, g) start at 1."""
    layer["bh"][H:2 * H] = 1.0


def kernels():
    from fastrnn.kernels import lstm

    return lstm.LAYER


LSTM = register(Cell(name="lstm", gates=4, state=("h", "c"), forward=forward, backward=backward, kernels=kernels,
                     init=init, torch=("LSTM", (0, 1, 3, 2)), summary="gates i, f, o, g"))
