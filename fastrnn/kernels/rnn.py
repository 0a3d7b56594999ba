"""Vanilla tanh RNN layer: forward and backward through time (numba), mirroring fastrnn.reference.

Letters: N batch, T time, H hidden, V vocabulary. Hidden states are time-major and carry the initial state in
front: hs: (T+1, N, H), hs[0] = h0, hs[t+1] = tanh(Wxh[x[:, t]] + hs[t] @ Whh + bh). With the initial state in the
same buffer, hs[:-1] is the "previous state" of every position as one contiguous (T*N, H) block (no concatenate)
and hs[1:] is the layer's output.

The recurrent product hs[t] @ Whh goes to BLAS (blas.gemm) when `small` is False; for small problems (one
sequence, small H) a hand-written loop avoids the BLAS call overhead. The input lookup, the bias
and tanh are fused into one pass after the product; backward fuses the recurrence add and tanh' the same way, and
the weight gradients over all T*N positions are one product each (dWhh) or one serial pass (dWxh, dbh).
"""

import numpy as np

from fastrnn.kernels import mathfn
from fastrnn.kernels.blas import gemm
from fastrnn.kernels.jit import kernel


@kernel
def matmul_small(out, a, W):
    """out: (N, M) = a: (N, K) @ W: (K, M), as rank-1 updates four rows of W at a time (vectorized over M)."""
    N, K = a.shape
    M = W.shape[1]
    K4 = K - K % 4
    for n in range(N):
        o = out[n]
        for j in range(M):
            o[j] = 0
        for k in range(0, K4, 4):
            a0, a1, a2, a3 = a[n, k], a[n, k + 1], a[n, k + 2], a[n, k + 3]
            w0, w1, w2, w3 = W[k], W[k + 1], W[k + 2], W[k + 3]
            for j in range(M):
                o[j] += a0 * w0[j] + a1 * w1[j] + a2 * w2[j] + a3 * w3[j]
        for k in range(K4, K):
            ak = a[n, k]
            wk = W[k]
            for j in range(M):
                o[j] += ak * wk[j]


@kernel
def matmul_nt_small(out, a, W):
    """out: (N, K) = a: (N, M) @ W.T, W: (K, M), as dot products four rows of W at a time (vectorized over M)."""
    N, M = a.shape
    K = W.shape[0]
    K4 = K - K % 4
    zero = np.zeros(1, a.dtype)[0]
    for n in range(N):
        an = a[n]
        for k in range(0, K4, 4):
            w0, w1, w2, w3 = W[k], W[k + 1], W[k + 2], W[k + 3]
            s0, s1, s2, s3 = zero, zero, zero, zero
            for j in range(M):
                aj = an[j]
                s0 += aj * w0[j]
                s1 += aj * w1[j]
                s2 += aj * w2[j]
                s3 += aj * w3[j]
            out[n, k], out[n, k + 1], out[n, k + 2], out[n, k + 3] = s0, s1, s2, s3
        for k in range(K4, K):
            wk = W[k]
            s = zero
            for j in range(M):
                s += an[j] * wk[j]
            out[n, k] = s


@kernel
def rnn_forward(hs, tmp, x, Wxh, Whh, bh, small):
    """hs: (T+1, N, H) in/out: hs[0] = h0 on entry, hs[1:] written; tmp: (N, H) scratch; x: (N, T) int32 C-order;
    Wxh: (V, H); Whh: (H, H); bh: (H,); small: hand loop instead of BLAS for the recurrent product."""
    T = hs.shape[0] - 1
    N, H = hs.shape[1], hs.shape[2]
    for t in range(T):
        if small:
            matmul_small(tmp, hs[t], Whh)
        else:
            gemm(tmp, hs[t], False, Whh, False, 1.0, 0.0)
        out = hs[t + 1]
        for n in range(N):
            wx = Wxh[x[n, t]]
            o = out[n]
            r = tmp[n]
            for j in range(H):
                o[j] = mathfn.tanh(r[j] + wx[j] + bh[j])


@kernel
def rnn_backward(dWxh, dWhh, dbh, dz, tmp, acc, x, hs, Whh, small):
    """Backpropagation through time; overwrites the gradients.

    dWxh: (V, H), dWhh: (H, H), dbh: (H,) out (overwritten); dz: (T, N, H) in/out: on entry the gradient w.r.t. the
    outputs hs[1:] from above, on exit the gradient w.r.t. the pre-activations; tmp: (N, H) scratch; acc: (H,)
    float64 scratch; x: (N, T) int32; hs: (T+1, N, H) from rnn_forward; Whh: (H, H).
    The gradient w.r.t. h0 is not needed by the trainer and is not computed.
    """
    T, N, H = dz.shape
    for t in range(T - 1, -1, -1):
        h = hs[t + 1]
        d = dz[t]
        if t < T - 1:  # the recurrence: dz[t] arrived as dhs[t], add dz[t+1] @ Whh.T
            if small:
                matmul_nt_small(tmp, dz[t + 1], Whh)
                for n in range(N):
                    for j in range(H):
                        d[n, j] += tmp[n, j]
            else:
                gemm(d, dz[t + 1], False, Whh, True, 1.0, 1.0)
        for n in range(N):
            for j in range(H):
                g = d[n, j]
                d[n, j] = g - g * h[n, j] * h[n, j]
    gemm(dWhh, hs[:T].reshape(T * N, H), True, dz.reshape(T * N, H), False, 1.0, 0.0)
    # dbh: column sums (float64 accumulator); dWxh: scatter-add of rows by token, serial and in position order
    for j in range(H):
        acc[j] = 0.0
    dWxh[:, :] = 0
    for t in range(T):
        for n in range(N):
            row = dz[t, n]
            dw = dWxh[x[n, t]]
            for j in range(H):
                acc[j] += row[j]
                dw[j] += row[j]
    for j in range(H):
        dbh[j] = acc[j]
