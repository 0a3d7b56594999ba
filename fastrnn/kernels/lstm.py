"""LSTM layer: forward and backward through time (numba), mirroring fastrnn.reference.lstm_forward/backward.

Gates in the order i (input), f (forget), o (output), g (candidate), each a block of H columns of the (N, 4H)
pre-activations a = in_t + h_{t-1} @ Whh + bh:
    i, f, o = sigmoid(a_i, a_f, a_o);  g = tanh(a_g);  c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)
with sigmoid(a) = 1/2 + tanh(a/2)/2 (as the reference; mathfn.tanh vectorizes in float32).

The layer follows the general interface of rnn.py (layer 0 reads tokens as a row lookup, layers above one
(T*N, H) x (H, 4H) product over all positions; dropout masks on the output): one BLAS product per step for the
recurrence, the bias, nonlinearities, cell update and mask fused into one pass around it; backward likewise, then
the weight gradients as one product each over all T*N positions (rnn.weight_gradients). The `_split` kernels run
the recurrence as blocks of rows, one per thread, with tile products (see rnn.py).
"""

from numba import prange

from fastrnn.kernels import mathfn
from fastrnn.kernels.mathfn import cast_like
from fastrnn.kernels.jit import kernel, parallel_kernel
from fastrnn.kernels.rnn import TILES, Layer, apply_mask, input_side, recurrent_gradient, recurrent_product, \
    row_block, weight_gradients
from fastrnn.kernels.sample import choose_tokens, layer_products, output_logits, scratch
from fastrnn.kernels.tiles import no_pack


@kernel
def lstm_forward(hs, cs, gates, out, tmp, x, inp, Wxh, Whh, bh, mask, loops, positions_loops):
    """hs, cs: (T+1, N, H) with hs[0], cs[0] = h0, c0 on entry, hs[1:], cs[1:] written; gates: (T, N, 4H) out:
    i, f, o, g after their nonlinearities; out: (T, N, H) = hs[1:] * mask (only with a mask); tmp: (N, 4H)
    scratch; x: (N, T) int32 tokens (used by layer 0); inp: (T, N, H) the input from below, or 0 rows for
    layer 0; Wxh: (V or H, 4H); Whh: (H, 4H); bh: (4H,); mask: (T, N, H) or 0 rows; loops, positions_loops: hand loops
    for the recurrent and the input-side products."""
    input_side(gates, inp, Wxh, positions_loops)
    lstm_steps(hs, cs, gates, tmp, x, Wxh, Whh, no_pack(Whh), bh, inp.shape[0] == 0, 0, hs.shape[1], loops)
    apply_mask(out, hs, mask)


@parallel_kernel
def lstm_forward_split(hs, cs, gates, out, tmp, x, inp, Wxh, Whh, Wp, bh, mask, positions_loops, groups):
    """lstm_forward with the recurrence as `groups` blocks of rows, one per thread, products by tiles over Wp
    (Whh packed; rnn.rnn_layer_forward_split)."""
    N = hs.shape[1]
    input_side(gates, inp, Wxh, positions_loops, groups)
    lookup = inp.shape[0] == 0
    for q in prange(groups):
        r0, r1 = row_block(N, groups, q)
        lstm_steps(hs, cs, gates, tmp, x, Wxh, Whh, Wp, bh, lookup, r0, r1, TILES)
    apply_mask(out, hs, mask)


@kernel
def lstm_steps(hs, cs, gates, tmp, x, Wxh, Whh, Wp, bh, lookup, r0, r1, how):
    """The T steps of lstm_forward for the rows r0:r1 (all, or one thread's block; whole arrays and a row range,
    see rnn.rnn_layer_steps); the input side is the row Wxh[x[n, t]] (lookup) or gates[t, n]."""
    T = gates.shape[0]
    H = hs.shape[2]
    for t in range(T):
        recurrent_product(tmp[r0:r1], hs[t, r0:r1], Whh, how, Wp)
        for n in range(r0, r1):
            # short passes that each write one array: LLVM vectorizes them (one fused pass writing seven streams
            # needs too many runtime alias checks and stays scalar, ~5x slower)
            src = Wxh[x[n, t]] if lookup else gates[t, n]
            a, g, c0, c1, h1 = tmp[n], gates[t, n], cs[t, n], cs[t + 1, n], hs[t + 1, n]
            for j in range(4 * H):
                a[j] = a[j] + src[j] + bh[j]
            lstm_cell(a, g, c0, c1, h1)


@kernel
def lstm_cell(a, g, c0, c1, h1):
    """The cell from its pre-activations a: (4H,) (gates i, f, o, g): g (4H,) = the gates, c1 = f*c0 + i*g,
    h1 = o*tanh(c1); c0, c1, h1: (H,). Short passes that each write one array (see lstm_forward)."""
    H = c0.shape[0]
    for j in range(3 * H):
        g[j] = mathfn.sigmoid(a[j])
    for j in range(3 * H, 4 * H):
        g[j] = mathfn.tanh_call(a[j])
    for j in range(H):
        c1[j] = g[H + j] * c0[j] + g[j] * g[3 * H + j]
    for j in range(H):
        h1[j] = g[2 * H + j] * mathfn.tanh_call(c1[j])


@kernel
def lstm_backward(dWxh, dWhh, dbh, dout, da, rec, dc, acc, x, inp, hs, cs, gates, Wxh, Whh, mask, loops):
    """Backpropagation through time; overwrites the gradients dWxh, dWhh, dbh.

    dout: (T, N, H) in: gradient w.r.t. the layer's output (before the mask); out (above layer 0): gradient
    w.r.t. inp. da: (T, N, 4H) scratch (gradient w.r.t. the pre-activations); rec: (N, H), dc: (N, H) scratch;
    acc: (4H,) float64 scratch; hs, cs, gates from lstm_forward.
    """
    lstm_back_steps(dout, da, rec, dc, gates, cs, Whh, no_pack(Whh), mask, 0, hs.shape[1], loops)
    weight_gradients(dWxh, dWhh, dbh, dout, da, da, acc, x, inp, hs, Wxh)


@parallel_kernel
def lstm_backward_split(dWxh, dWhh, dbh, dout, da, rec, dc, acc, x, inp, hs, cs, gates, Wxh, Whh, WTp, mask,
                        groups):
    """lstm_backward with the recurrence as `groups` blocks of rows, one per thread, products by tiles over WTp
    (Whh.T packed)."""
    N = hs.shape[1]
    for q in prange(groups):
        r0, r1 = row_block(N, groups, q)
        lstm_back_steps(dout, da, rec, dc, gates, cs, Whh, WTp, mask, r0, r1, TILES)
    weight_gradients(dWxh, dWhh, dbh, dout, da, da, acc, x, inp, hs, Wxh, groups)


@kernel
def lstm_back_steps(dout, da, rec, dc, gates, cs, Whh, WTp, mask, r0, r1, how):
    """The backward recurrence of lstm_backward for the rows r0:r1 (all, or one thread's block)."""
    T, N, H = dout.shape
    masked = mask.shape[0] > 0
    one = cast_like(1.0, Whh)
    dc[r0:r1] = 0
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            recurrent_gradient(rec[r0:r1], da[t + 1, r0:r1], Whh, how, WTp)
        else:
            rec[r0:r1] = 0
        for n in range(r0, r1):
            # short passes writing one array each (vectorized; see lstm_forward)
            d, dh, g, c0, c1, dcn, dan = dout[t, n], rec[n], gates[t, n], cs[t, n], cs[t + 1, n], dc[n], da[t, n]
            if masked:
                m = mask[t, n]
                for j in range(H):
                    dh[j] = d[j] * m[j] + dh[j]
            else:
                for j in range(H):
                    dh[j] = d[j] + dh[j]
            for j in range(H):  # do
                tc = mathfn.tanh(c1[j])
                o = g[2 * H + j]
                dan[2 * H + j] = dh[j] * tc * o * (one - o)
            for j in range(H):  # dc = dc_next + dh * o * tanh'(c)
                tc = mathfn.tanh_call(c1[j])
                dcn[j] = dcn[j] + dh[j] * g[2 * H + j] * (one - tc * tc)
            for j in range(H):  # di
                i = g[j]
                dan[j] = dcn[j] * g[3 * H + j] * i * (one - i)
            for j in range(H):  # df
                f = g[H + j]
                dan[H + j] = dcn[j] * c0[j] * f * (one - f)
            for j in range(H):  # dg
                gg = g[3 * H + j]
                dan[3 * H + j] = dcn[j] * g[j] * (one - gg * gg)
            for j in range(H):  # dc_next = dc * f
                dcn[j] = dcn[j] * g[H + j]


# ---------------------------------------------------------------------------------------------------------------
# the lstm cell's numba side (fastrnn.cells.lstm)


@kernel
def lstm_update(h, c, g, xa, a, b, ex):
    """The lstm's generation step (kernels/sample.py): the pre-activations xa + b + a (into a), then lstm_cell with
    c updated in place (each c[j] is read before it is written)."""
    H4 = a.shape[0]
    for j in range(H4):
        xa[j] = xa[j] + b[j]
    for j in range(H4):
        a[j] = xa[j] + a[j]
    lstm_cell(a, g, c, c, h)


@parallel_kernel
def lstm_sample_streams(out, state, logits, uniforms, Wx0, Wxp, Whp, bh, ex, Whyp, by, temperature, top_k, top_p,
                        greedy, groups):
    """kernels.sample.sample_streams with the lstm's update: the streams in `groups` groups, one per thread, each
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
                    lstm_update(st[r, l, 0], st[r, l, K - 1], g, xa[r], a[r], bh[l], ex[l])
            output_logits(lg, hin, st, Whyp, by)


class LstmLayer(Layer):
    """The lstm as kernels/stack.py composes it (rnn.Layer): its buffers add cs (the cell states, as hs)."""

    sample_streams = staticmethod(lstm_sample_streams)

    def forward(self, b, ws, x, inp, W, Wp, mask, out, plan, groups):
        Wxh, Whh, bh = W
        if groups:
            lstm_forward_split(b["hs"], b["cs"], b["gates"], out, ws["tmp"], x, inp, Wxh, Whh, Wp, bh, mask,
                               plan.positions == "loops", groups)
        else:
            lstm_forward(b["hs"], b["cs"], b["gates"], out, ws["tmp"], x, inp, Wxh, Whh, bh, mask, plan.loops,
                         plan.positions == "loops")

    def backward(self, b, ws, dW, x, inp, W, WTp, mask, plan, groups):
        args = (*dW, ws["dout"], ws["da"], ws["rec"], ws["carry"], ws["acc"], x, inp, b["hs"], b["cs"], b["gates"],
                W[0], W[1])
        if groups:
            lstm_backward_split(*args, WTp, mask, groups)
        else:
            lstm_backward(*args, mask, plan.loops)


LAYER = LstmLayer()
