"""The language model's whole loss and gradient as one njit call each (no Python between layers).

Composes the layers of rnn.py and softmax_xent.py in the order of fastrnn.reference.forward_backward; one call
per minibatch keeps the per-call overhead (which dominates at batch 1) to a single dispatch.
"""

from fastrnn.kernels import mathfn
from fastrnn.kernels.blas import gemm
from fastrnn.kernels.jit import kernel
from fastrnn.kernels.rnn import matmul_small, rnn_backward, rnn_forward
from fastrnn.kernels.softmax_xent import affine_backward, softmax_xent


@kernel
def check_tokens(x, y, V):
    """Raise IndexError unless every id in x and y: (N, T) int32 is in [0, V) (the kernels index without checks)."""
    N, T = x.shape
    bad = 0
    for n in range(N):
        for t in range(T):
            bad |= (x[n, t] < 0) | (x[n, t] >= V) | (y[n, t] < 0) | (y[n, t] >= V)
    if bad:
        raise IndexError("token id out of range of the vocabulary")


@kernel
def lm_forward_backward(dWxh, dWhh, dbh, dWhy, dby, hs, logits, dz, tmp, acc, rowloss,
                        x, y, Wxh, Whh, bh, Why, by, scale, loops):
    """Loss and gradients (overwritten) of one minibatch; returns the mean loss in nats.

    Gradients: dWxh (V, H), dWhh (H, H), dbh (H,), dWhy (H, V), dby (V,).
    Scratch: hs (T+1, N, H) with hs[0] = h0 on entry (hs[T] is the final state on exit); logits (T*N, V);
    dz (T, N, H); tmp (N, H); acc (max(H, V),) float64; rowloss (T*N,) float64.
    Inputs: x, y (N, T) int32 C-order; parameters Wxh (V, H), Whh (H, H), bh (H,), Why (H, V), by (V,);
    scale = 1/(T*N) in the parameters' dtype; loops: hand loops for the per-step recurrent products (a
    dispatch.Plan's loops).
    """
    T = hs.shape[0] - 1
    N, H = hs.shape[1], hs.shape[2]
    check_tokens(x, y, Wxh.shape[0])
    rnn_forward(hs, tmp, x, Wxh, Whh, bh, loops)
    h2 = hs[1:].reshape(T * N, H)  # (T*N, H)
    gemm(logits, h2, False, Why, False, 1.0, 0.0)  # (T*N, V), without the bias
    loss = softmax_xent(logits, rowloss, by, y, scale, True)
    affine_backward(dWhy, dby, dz.reshape(T * N, H), logits, h2, Why, acc)
    rnn_backward(dWxh, dWhh, dbh, dz, tmp, acc, x, hs, Whh, loops)
    return loss


@kernel
def lm_forward_loss(hs, logits, tmp, rowloss, x, y, Wxh, Whh, bh, Why, by, scale, loops):
    """Mean loss only (evaluation); same arguments as lm_forward_backward."""
    T = hs.shape[0] - 1
    N, H = hs.shape[1], hs.shape[2]
    check_tokens(x, y, Wxh.shape[0])
    rnn_forward(hs, tmp, x, Wxh, Whh, bh, loops)
    gemm(logits, hs[1:].reshape(T * N, H), False, Why, False, 1.0, 0.0)
    return softmax_xent(logits, rowloss, by, y, scale, False)


@kernel
def lm_step(h_new, logits, h, token, Wxh, Whh, bh, Why, by):
    """One generation step: h_new: (N, H) = tanh(Wxh[token] + h @ Whh + bh); logits: (N, V) = h_new @ Why + by.
    h: (N, H); token: (N,) int32."""
    N, H = h.shape
    V = by.shape[0]
    matmul_small(h_new, h, Whh)
    for n in range(N):
        wx = Wxh[token[n]]
        for j in range(H):
            h_new[n, j] = mathfn.tanh(h_new[n, j] + wx[j] + bh[j])
    matmul_small(logits, h_new, Why)
    for n in range(N):
        for v in range(V):
            logits[n, v] += by[v]
