"""The GRU (Cho et al. 2014), gates r (reset), z (update), n (candidate); the reset gate multiplies the recurrent
product, as cuDNN and PyTorch do:

    ha = h_{t-1} @ Whh;  r, z = sigmoid(xa_r + ha_r, xa_z + ha_z);  n = tanh(xa_n + r * ha_n)
    h_t = (1 - z) * n + z * h_{t-1}

with xa = x_t @ Wxh + bh. The state is h. Kernels: fastrnn/kernels/gru.py.
"""

import numpy as np

from fastrnn.cells.base import Cell, register
from fastrnn.reference import input_backward, input_forward, sigmoid


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


def forward(inp, W, state0):
    """The reference layer (fastrnn.cells.base): seqs (hs,), cache (gates, hn)."""
    Wxh, Whh, bh = W
    hs, gates, hn = gru_forward(input_forward(inp, Wxh, bh), state0[0], Whh)
    return (hs,), (gates, hn)


def backward(dhs, inp, W, dW, state0, seqs, cache):
    dxa, dh0 = gru_backward(dhs, state0[0], seqs[0], cache[0], cache[1], W[1], dW[1])
    return input_backward(dxa, inp, W[0], dW[0], dW[2]), (dh0,)


def kernels():
    from fastrnn.kernels import gru

    return gru.LAYER


GRU = register(Cell(name="gru", gates=3, forward=forward, backward=backward, kernels=kernels, torch=("GRU", (0, 1, 2)),
                    summary="reset gate on the recurrent product"))
