"""GRU layer: forward and backward through time (numba), mirroring fastrnn.reference.gru_forward/backward.

Gates in the order r (reset), z (update), n (candidate); the reset gate multiplies the recurrent product (cuDNN and
PyTorch's variant), so each step is one (N, H) x (H, 3H) product ha = h_{t-1} @ Whh:
    r = sigmoid(in_r + bh_r + ha_r);  z = sigmoid(in_z + bh_z + ha_z);  n = tanh(in_n + bh_n + r * ha_n)
    h_t = n + z * (h_{t-1} - n)
with sigmoid(a) = 1/2 + tanh(a/2)/2 (as the reference). The layer follows the general interface of rnn.py.
Backward keeps two gradients of the pre-activations: dxa w.r.t. the input side (for dWxh, dbh and the input
gradient) and dha w.r.t. the recurrent product (for dWhh and the recurrence), equal except in the n block. The `_split` kernels run the recurrence as blocks of rows, one per thread, with tile products (see
rnn.py).
"""

import numpy as np
from numba import prange

from fastrnn.kernels import mathfn
from fastrnn.kernels.mathfn import cast_like
from fastrnn.kernels.jit import kernel, parallel_kernel
from fastrnn.kernels.rnn import TILES, Layer, apply_mask, input_side, recurrent_gradient, recurrent_product, \
    row_block, weight_gradients
from fastrnn.kernels.sample import choose_tokens, layer_products, output_logits, scratch
from fastrnn.kernels.tiles import no_pack


@kernel
def gru_forward(hs, gates, hn, out, tmp, x, inp, Wxh, Whh, bh, mask, loops, positions_loops):
    """hs: (T+1, N, H) with hs[0] = h0 on entry, hs[1:] written; gates: (T, N, 3H) out: r, z, n after their
    nonlinearities; hn: (T, N, H) out: the n block of the recurrent product; out: (T, N, H) = hs[1:] * mask
    (only with a mask); tmp: (N, 3H) scratch; x: (N, T) int32 tokens (layer 0); inp: (T, N, H) or 0 rows
    (layer 0); Wxh: (V or H, 3H); Whh: (H, 3H); bh: (3H,); mask: (T, N, H) or 0 rows; loops, positions_loops: hand loops
    for the recurrent and the input-side products."""
    input_side(gates, inp, Wxh, positions_loops)
    gru_steps(hs, gates, hn, tmp, x, Wxh, Whh, no_pack(Whh), bh, inp.shape[0] == 0, 0, hs.shape[1], loops)
    apply_mask(out, hs, mask)


@parallel_kernel
def gru_forward_split(hs, gates, hn, out, tmp, x, inp, Wxh, Whh, Wp, bh, mask, positions_loops, groups):
    """gru_forward with the recurrence as `groups` blocks of rows, one per thread, products by tiles over Wp (Whh
    packed; rnn.rnn_layer_forward_split)."""
    N = hs.shape[1]
    input_side(gates, inp, Wxh, positions_loops, groups)
    lookup = inp.shape[0] == 0
    for q in prange(groups):
        r0, r1 = row_block(N, groups, q)
        gru_steps(hs, gates, hn, tmp, x, Wxh, Whh, Wp, bh, lookup, r0, r1, TILES)
    apply_mask(out, hs, mask)


@kernel
def gru_steps(hs, gates, hn, tmp, x, Wxh, Whh, Wp, bh, lookup, r0, r1, how):
    """The T steps of gru_forward for the rows r0:r1 (all, or one thread's block; whole arrays and a row range,
    see rnn.rnn_layer_steps); the input side is the row Wxh[x[n, t]] (lookup) or gates[t, n]."""
    T = gates.shape[0]
    H = hs.shape[2]
    for t in range(T):
        recurrent_product(tmp[r0:r1], hs[t, r0:r1], Whh, how, Wp)
        for n in range(r0, r1):
            # short passes that each write one array: LLVM vectorizes them (a fused pass writing several streams
            # needs too many runtime alias checks and stays scalar)
            src = Wxh[x[n, t]] if lookup else gates[t, n]
            a, g, h0, h1, hnt = tmp[n], gates[t, n], hs[t, n], hs[t + 1, n], hn[t, n]
            for j in range(2 * H):
                g[j] = mathfn.sigmoid(src[j] + bh[j] + a[j])
            for j in range(H):
                hnt[j] = a[2 * H + j]
            for j in range(H):  # (reading g[j] and writing g[2H + j] in one loop would not vectorize)
                a[2 * H + j] = src[2 * H + j] + bh[2 * H + j] + g[j] * hnt[j]
            for j in range(2 * H, 3 * H):
                g[j] = mathfn.tanh_call(a[j])
            for j in range(H):
                nn = g[2 * H + j]
                h1[j] = nn + g[H + j] * (h0[j] - nn)


@kernel
def gru_backward(dWxh, dWhh, dbh, dout, dxa, dha, rec, carry, acc, x, inp, hs, gates, hn, Wxh, Whh, mask, loops):
    """Backpropagation through time; overwrites the gradients dWxh, dWhh, dbh.

    dout: (T, N, H) in: gradient w.r.t. the layer's output (before the mask); out (above layer 0): gradient
    w.r.t. inp. dxa, dha: (T, N, 3H) scratch; rec, carry: (N, H) scratch; acc: (3H,) float64 scratch.
    """
    gru_back_steps(dout, dxa, dha, rec, carry, hs, gates, hn, Whh, no_pack(Whh), mask, 0, hs.shape[1], loops)
    weight_gradients(dWxh, dWhh, dbh, dout, dxa, dha, acc, x, inp, hs, Wxh)


@parallel_kernel
def gru_backward_split(dWxh, dWhh, dbh, dout, dxa, dha, rec, carry, acc, x, inp, hs, gates, hn, Wxh, Whh, WTp,
                       mask, groups):
    """gru_backward with the recurrence as `groups` blocks of rows, one per thread, products by tiles over WTp
    (Whh.T packed)."""
    N = hs.shape[1]
    for q in prange(groups):
        r0, r1 = row_block(N, groups, q)
        gru_back_steps(dout, dxa, dha, rec, carry, hs, gates, hn, Whh, WTp, mask, r0, r1, TILES)
    weight_gradients(dWxh, dWhh, dbh, dout, dxa, dha, acc, x, inp, hs, Wxh, groups)


@kernel
def gru_back_steps(dout, dxa, dha, rec, carry, hs, gates, hn, Whh, WTp, mask, r0, r1, how):
    """The backward recurrence of gru_backward for the rows r0:r1 (all, or one thread's block)."""
    T, N, H = dout.shape
    masked = mask.shape[0] > 0
    one = cast_like(1.0, Whh)
    carry[r0:r1] = 0
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            recurrent_gradient(rec[r0:r1], dha[t + 1, r0:r1], Whh, how, WTp)
        else:
            rec[r0:r1] = 0
        for n in range(r0, r1):
            # short passes writing one array each (vectorized; see gru_forward)
            d, dh, cr, g, h0, hnt = dout[t, n], rec[n], carry[n], gates[t, n], hs[t, n], hn[t, n]
            dx, dr_h = dxa[t, n], dha[t, n]
            if masked:
                m = mask[t, n]
                for j in range(H):
                    dh[j] = d[j] * m[j] + (dh[j] + cr[j])
            else:
                for j in range(H):
                    dh[j] = d[j] + (dh[j] + cr[j])
            for j in range(H):  # dn, w.r.t. n's pre-activation
                z, nn = g[H + j], g[2 * H + j]
                dx[2 * H + j] = dh[j] * (one - z) * (one - nn * nn)
            for j in range(H):  # dz
                z, nn = g[H + j], g[2 * H + j]
                dx[H + j] = dh[j] * (h0[j] - nn) * z * (one - z)
            for j in range(H):  # dr (dn recomputed: reading dx[2H + j] while writing dx[j] would not vectorize)
                r, z, nn = g[j], g[H + j], g[2 * H + j]
                dx[j] = dh[j] * (one - z) * (one - nn * nn) * hnt[j] * r * (one - r)
            for j in range(2 * H):
                dr_h[j] = dx[j]
            for j in range(H):
                dr_h[2 * H + j] = dx[2 * H + j] * g[j]
            for j in range(H):  # the direct path to h_{t-1}
                cr[j] = dh[j] * g[H + j]


# ---------------------------------------------------------------------------------------------------------------
# the gru cell's numba side (fastrnn.cells.gru)


@kernel
def gru_update(h, c, g, xa, a, b, ex):
    """The gru's generation step (kernels/sample.py): the reset gate multiplies the recurrent product a_n."""
    H = h.shape[0]
    for j in range(3 * H):
        xa[j] = xa[j] + b[j]
    for j in range(2 * H):
        g[j] = mathfn.sigmoid(xa[j] + a[j])
    for j in range(H):
        g[2 * H + j] = mathfn.tanh_call(xa[2 * H + j] + g[j] * a[2 * H + j])
    for j in range(H):
        h[j] = g[2 * H + j] + g[H + j] * (h[j] - g[2 * H + j])


@parallel_kernel
def gru_sample_streams(out, state, logits, uniforms, Wx0, Wxp, Whp, bh, ex, Whyp, by, temperature, top_k, top_p,
                       greedy, groups):
    """kernels.sample.sample_streams with the gru's update: the streams in `groups` groups, one per thread, each
    generating all its characters (the loop of kernels/sample.py's docstring)."""
    B, n, L, K = out.shape[0], out.shape[1], state.shape[1], state.shape[2]
    groups = max(1, min(groups, B))
    for q in prange(groups):
        r0, r1 = q * B // groups, (q + 1) * B // groups
        o, st, lg = out[r0:r1], state[r0:r1], logits[r0:r1]
        z, xa, a, g, hin = scratch(st, Wx0, lg)
        for i in range(n):
            choose_tokens(o, lg, uniforms[r0:r1], temperature[r0:r1], top_k[r0:r1], top_p[r0:r1], greedy, z, i)
            for l in range(L):
                layer_products(xa, a, hin, st, o, i, l, Wx0, Wxp[l], Whp[l])
                for r in range(r1 - r0):
                    gru_update(st[r, l, 0], st[r, l, K - 1], g, xa[r], a[r], bh[l], ex[l])
            output_logits(lg, hin, st, Whyp, by)


class GruLayer(Layer):
    """The gru as kernels/stack.py composes it (rnn.Layer): its buffers add hn (T, N, H), the n block of the
    recurrent product; the scratch dha (T, N, 3H), the gradient w.r.t. the recurrent product."""

    sample_streams = staticmethod(gru_sample_streams)

    def buffers(self, T, N, H, dtype):
        return dict(hn=np.empty((T, N, H), dtype))

    def scratch(self, T, N, H, dtype):
        return dict(dha=np.empty((T, N, 3 * H), dtype))

    def forward(self, b, ws, x, inp, W, Wp, mask, out, plan, groups):
        Wxh, Whh, bh = W
        if groups:
            gru_forward_split(b["hs"], b["gates"], b["hn"], out, ws["tmp"], x, inp, Wxh, Whh, Wp, bh, mask,
                              plan.positions == "loops", groups)
        else:
            gru_forward(b["hs"], b["gates"], b["hn"], out, ws["tmp"], x, inp, Wxh, Whh, bh, mask, plan.loops,
                        plan.positions == "loops")

    def backward(self, b, ws, dW, x, inp, W, WTp, mask, plan, groups):
        args = (*dW, ws["dout"], ws["da"], ws["dha"], ws["rec"], ws["carry"], ws["acc"], x, inp, b["hs"], b["gates"],
                b["hn"], W[0], W[1])
        if groups:
            gru_backward_split(*args, WTp, mask, groups)
        else:
            gru_backward(*args, mask, plan.loops)


LAYER = GruLayer()
