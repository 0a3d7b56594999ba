"""Layer-normalised LSTM layer: forward and backward through time (numba), mirroring fastrnn.cells.lnlstm.

    ax = in_t (x_t @ Wxh, no bias);  ah = h_{t-1} @ Whh                                   (N, 4H)
    a = gx * LN(ax) + gh * LN(ah) + bh;  i, f, o = sigmoid(a_i, a_f, a_o);  g = tanh(a_g)
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(gc * LN(c_t) + bc)

LN(v) = (v - mean(v)) * r, r = 1/sqrt(var(v) + EPS), over one row's 4H (or H) values, the sums in float64.

The layer follows the general interface of rnn.py, as lstm.py does: one product per step for the recurrence (hand
loops, BLAS or tiles, as the plan says: every plan runs it), the normalisations, gates and cell update in short
passes around it; the `_split` kernels run the recurrence as blocks of rows, one per thread (each row's
normalisation is its own). Beside hs, cs and gates (the input side, then the gates after their nonlinearities),
a layer keeps xn, hn: (T, N, 4H) LN(ax), LN(ah), cn: (T, N, H) LN(c_t) and rs: (T, N, 3) their r. Backward keeps
da (the gradient w.r.t. the gates' pre-activations a), dax and dah (w.r.t. ax and ah: the input side's and the
recurrent product's gradients, as a gru's dxa and dha), dy (w.r.t. gc * LN(c) + bc); the weight gradients are
rnn.weight_gradients's products over all positions, the gains' and biases' gradients column sums over all
positions in position order (ln_gradients, float64 sums).
"""

import numpy as np
from numba import prange

from fastrnn.kernels import mathfn
from fastrnn.kernels.jit import kernel, parallel_kernel
from fastrnn.kernels.mathfn import cast_like
from fastrnn.kernels.rnn import TILES, Layer, apply_mask, input_side, recurrent_gradient, recurrent_product, \
    row_block, weight_gradients
from fastrnn.kernels.sample import choose_tokens, layer_products, output_logits, scratch
from fastrnn.kernels.tiles import no_pack

EPS = 1e-5  # fastrnn.cells.lnlstm.EPS


@kernel
def layer_norm(out, v):
    """out = LN(v) (v's n values; out may be v); returns r = 1/sqrt(var(v) + EPS). Sums in float64."""
    n = v.shape[0]
    s = 0.0
    for j in range(n):
        s += v[j]
    mu = s / n
    q = 0.0
    for j in range(n):
        d = v[j] - mu
        q += d * d
    r = 1.0 / np.sqrt(q / n + EPS)
    for j in range(n):
        out[j] = (v[j] - mu) * r
    return r


@kernel
def layer_norm_backward(dv, d, gain, nrm, r):
    """dv = the gradient w.r.t. v of LN(v) = nrm (r its 1/sqrt(var + EPS)), given gain * d, the gradient w.r.t.
    nrm: r * (e - mean(e) - nrm * mean(e * nrm)), e = gain * d. Sums in float64."""
    n = d.shape[0]
    s1 = 0.0
    s2 = 0.0
    for j in range(n):
        e = gain[j] * d[j]
        s1 += e
        s2 += e * nrm[j]
    m1, m2 = s1 / n, s2 / n
    for j in range(n):
        dv[j] = r * (gain[j] * d[j] - m1 - nrm[j] * m2)


@kernel
def lnlstm_cell(a, g, c0, c1, h1, cn, gc, bc):
    """From the pre-activations a: (4H,) (gates i, f, o, g): g = the gates, c1 = f*c0 + i*g, cn = LN(c1),
    h1 = o * tanh(gc * cn + bc); returns LN's r. (c1 may be c0: each c0[j] is read before c1[j] is written.)"""
    H = c0.shape[0]
    for j in range(3 * H):
        g[j] = mathfn.sigmoid(a[j])
    for j in range(3 * H, 4 * H):
        g[j] = mathfn.tanh_call(a[j])
    for j in range(H):
        c1[j] = g[H + j] * c0[j] + g[j] * g[3 * H + j]
    r = layer_norm(cn, c1)
    for j in range(H):
        h1[j] = g[2 * H + j] * mathfn.tanh_call(gc[j] * cn[j] + bc[j])
    return r


@kernel
def lnlstm_steps(hs, cs, gates, norm, rs, tmp, x, Wxh, Whh, Wp, bh, ln, lookup, r0, r1, how):
    """The T steps of lnlstm_forward for the rows r0:r1 (all, or one thread's block; see rnn.rnn_layer_steps);
    the input side is the row Wxh[x[n, t]] (lookup) or gates[t, n]. norm: (xn, hn, cn); ln: (gx, gh, gc, bc)."""
    xn, hn, cn = norm
    gx, gh, gc, bc = ln
    T = gates.shape[0]
    H4 = gates.shape[2]
    for t in range(T):
        recurrent_product(tmp[r0:r1], hs[t, r0:r1], Whh, how, Wp)
        for n in range(r0, r1):
            src = Wxh[x[n, t]] if lookup else gates[t, n]
            a, xnt, hnt = tmp[n], xn[t, n], hn[t, n]
            rs[t, n, 0] = layer_norm(xnt, src)  # src read whole before gates[t, n] is written below
            rs[t, n, 1] = layer_norm(hnt, a)
            for j in range(H4):
                a[j] = gx[j] * xnt[j] + gh[j] * hnt[j] + bh[j]
            rs[t, n, 2] = lnlstm_cell(a, gates[t, n], cs[t, n], cs[t + 1, n], hs[t + 1, n], cn[t, n], gc, bc)


@kernel
def lnlstm_forward(hs, cs, gates, norm, rs, out, tmp, x, inp, Wxh, Whh, bh, ln, mask, loops, positions_loops):
    """hs, cs: (T+1, N, H) with hs[0], cs[0] = h0, c0 on entry, hs[1:], cs[1:] written; gates: (T, N, 4H) out:
    i, f, o, g after their nonlinearities; norm: (xn, hn, cn), rs: (T, N, 3) out (module docstring); out, tmp, x,
    inp, Wxh, Whh, mask, loops, positions_loops as lstm.lstm_forward; bh (4H,); ln: (gx, gh, gc, bc)."""
    input_side(gates, inp, Wxh, positions_loops)
    lnlstm_steps(hs, cs, gates, norm, rs, tmp, x, Wxh, Whh, no_pack(Whh), bh, ln, inp.shape[0] == 0, 0,
                 hs.shape[1], loops)
    apply_mask(out, hs, mask)


@parallel_kernel
def lnlstm_forward_split(hs, cs, gates, norm, rs, out, tmp, x, inp, Wxh, Whh, Wp, bh, ln, mask, positions_loops,
                         groups):
    """lnlstm_forward with the recurrence as `groups` blocks of rows, one per thread, products by tiles over Wp
    (Whh packed; rnn.rnn_layer_forward_split)."""
    N = hs.shape[1]
    input_side(gates, inp, Wxh, positions_loops, groups)
    lookup = inp.shape[0] == 0
    for q in prange(groups):
        r0, r1 = row_block(N, groups, q)
        lnlstm_steps(hs, cs, gates, norm, rs, tmp, x, Wxh, Whh, Wp, bh, ln, lookup, r0, r1, TILES)
    apply_mask(out, hs, mask)


@kernel
def lnlstm_back_steps(dout, grads, rec, dc, gates, cs, norm, rs, Whh, WTp, ln, mask, r0, r1, how):
    """The backward recurrence for the rows r0:r1 (all, or one thread's block): grads = (da, dax, dah, dy) out
    (module docstring); rec, dc: (N, H) scratch."""
    da, dax, dah, dy = grads
    xn, hn, cn = norm
    gx, gh, gc, bc = ln
    T, N, H = dout.shape
    masked = mask.shape[0] > 0
    one = cast_like(1.0, Whh)
    dc[r0:r1] = 0
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            recurrent_gradient(rec[r0:r1], dah[t + 1, r0:r1], Whh, how, WTp)
        else:
            rec[r0:r1] = 0
        for n in range(r0, r1):
            d, dh, g, c0, cnt, dcn, dan, dyn = dout[t, n], rec[n], gates[t, n], cs[t, n], cn[t, n], dc[n], \
                da[t, n], dy[t, n]
            if masked:
                m = mask[t, n]
                for j in range(H):
                    dh[j] = d[j] * m[j] + dh[j]
            else:
                for j in range(H):
                    dh[j] = d[j] + dh[j]
            for j in range(H):  # do, and dy (w.r.t. gc * LN(c) + bc)
                ty = mathfn.tanh(gc[j] * cnt[j] + bc[j])
                o = g[2 * H + j]
                dan[2 * H + j] = dh[j] * ty * o * (one - o)
                dyn[j] = dh[j] * o * (one - ty * ty)
            dl = rec[n]  # dh is used up: its row takes the gradient w.r.t. c_t through LN(c_t)
            layer_norm_backward(dl, dyn, gc, cnt, rs[t, n, 2])
            for j in range(H):
                dcn[j] = dcn[j] + dl[j]
            _gate_gradients(dan, dcn, g, c0, H, one)
            layer_norm_backward(dax[t, n], dan, gx, xn[t, n], rs[t, n, 0])
            layer_norm_backward(dah[t, n], dan, gh, hn[t, n], rs[t, n, 1])


@kernel
def _gate_gradients(dan, dcn, g, c0, H, one):
    """di, df, dg of the pre-activations from dc (the gradient w.r.t. c_t), then dc times f (w.r.t. c_{t-1})."""
    for j in range(H):  # di
        i = g[j]
        dan[j] = dcn[j] * g[3 * H + j] * i * (one - i)
    for j in range(H):  # df
        f = g[H + j]
        dan[H + j] = dcn[j] * c0[j] * f * (one - f)
    for j in range(H):  # dg
        gg = g[3 * H + j]
        dan[3 * H + j] = dcn[j] * g[j] * (one - gg * gg)
    for j in range(H):
        dcn[j] = dcn[j] * g[H + j]


@kernel
def ln_gradients(dW, grads, norm, acc):
    """The gains' and biases' gradients (overwritten), dW = (dbh, dgx, dgh, dgc, dbc): column sums over all
    positions, in position order, of da, da * xn, da * hn, dy * cn and dy. acc: (14H,) float64 scratch."""
    dbh, dgx, dgh, dgc, dbc = dW
    da, dax, dah, dy = grads
    xn, hn, cn = norm
    T, N, H4 = da.shape
    H = H4 // 4
    acc[:] = 0.0
    for t in range(T):
        for n in range(N):
            d, x_, h_, e, c_ = da[t, n], xn[t, n], hn[t, n], dy[t, n], cn[t, n]
            for j in range(H4):
                acc[j] += d[j]
            for j in range(H4):
                acc[H4 + j] += d[j] * x_[j]
            for j in range(H4):
                acc[2 * H4 + j] += d[j] * h_[j]
            for j in range(H):
                acc[3 * H4 + j] += e[j] * c_[j]
            for j in range(H):
                acc[3 * H4 + H + j] += e[j]
    for j in range(H4):
        dbh[j], dgx[j], dgh[j] = acc[j], acc[H4 + j], acc[2 * H4 + j]
    for j in range(H):
        dgc[j], dbc[j] = acc[3 * H4 + j], acc[3 * H4 + H + j]


@kernel
def lnlstm_backward(dWxh, dWhh, dW, dout, grads, rec, dc, dbx, acc, lnacc, x, inp, hs, cs, gates, norm, rs, Wxh,
                    Whh, ln, mask, loops):
    """Backpropagation through time; overwrites the gradients dWxh, dWhh and dW = (dbh, dgx, dgh, dgc, dbc).

    dout: (T, N, H) in: gradient w.r.t. the layer's output (before the mask); out (above layer 0): gradient w.r.t.
    inp. grads: (da, dax, dah, dy) scratch (module docstring); rec, dc: (N, H) scratch; dbx: (4H,) scratch (the
    input side's column sums, which no parameter takes: bh's gradient is da's); acc: (4H,), lnacc: (14H,) float64
    scratch.
    """
    lnlstm_back_steps(dout, grads, rec, dc, gates, cs, norm, rs, Whh, no_pack(Whh), ln, mask, 0, hs.shape[1], loops)
    weight_gradients(dWxh, dWhh, dbx, dout, grads[1], grads[2], acc, x, inp, hs, Wxh)
    ln_gradients(dW, grads, norm, lnacc)


@parallel_kernel
def lnlstm_backward_split(dWxh, dWhh, dW, dout, grads, rec, dc, dbx, acc, lnacc, x, inp, hs, cs, gates, norm, rs,
                          Wxh, Whh, WTp, ln, mask, groups):
    """lnlstm_backward with the recurrence as `groups` blocks of rows, one per thread, products by tiles over WTp
    (Whh.T packed)."""
    N = hs.shape[1]
    for q in prange(groups):
        r0, r1 = row_block(N, groups, q)
        lnlstm_back_steps(dout, grads, rec, dc, gates, cs, norm, rs, Whh, WTp, ln, mask, r0, r1, TILES)
    weight_gradients(dWxh, dWhh, dbx, dout, grads[1], grads[2], acc, x, inp, hs, Wxh, groups)
    ln_gradients(dW, grads, norm, lnacc)


# ---------------------------------------------------------------------------------------------------------------
# the lnlstm cell's numba side (fastrnn.cells.lnlstm)


@kernel
def lnlstm_update(h, c, g, xa, a, b, ex):
    """The lnlstm's generation step (kernels/sample.py): ex = (gx, gh, gc, bc) concatenated (10H,)."""
    H = h.shape[0]
    H4 = 4 * H
    gx, gh, gc, bc = ex[:H4], ex[H4:2 * H4], ex[2 * H4:2 * H4 + H], ex[2 * H4 + H:]
    layer_norm(xa, xa)
    layer_norm(a, a)
    for j in range(H4):
        a[j] = gx[j] * xa[j] + gh[j] * a[j] + b[j]
    lnlstm_cell(a, g, c, c, h, xa[:H], gc, bc)


@parallel_kernel
def lnlstm_sample_streams(out, state, logits, uniforms, Wx0, Wxp, Whp, bh, ex, Whyp, by, temperature, top_k, top_p,
                          greedy, groups):
    """kernels.sample.sample_streams with the lnlstm's update: the streams in `groups` groups, one per thread, each
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
                    lnlstm_update(st[r, l, 0], st[r, l, K - 1], g, xa[r], a[r], bh[l], ex[l])
            output_logits(lg, hin, st, Whyp, by)


class LnLstmLayer(Layer):
    """The lnlstm as kernels/stack.py composes it (rnn.Layer): its buffers add cs (as hs), xn, hn, cn, rs; its
    scratch dax, dah, dy, dbx, lnacc (module docstring)."""

    sample_streams = staticmethod(lnlstm_sample_streams)

    def buffers(self, T, N, H, dtype):
        return dict(xn=np.empty((T, N, 4 * H), dtype), hn=np.empty((T, N, 4 * H), dtype),
                    cn=np.empty((T, N, H), dtype), rs=np.empty((T, N, 3), dtype))

    def scratch(self, T, N, H, dtype):
        return dict(dax=np.empty((T, N, 4 * H), dtype), dah=np.empty((T, N, 4 * H), dtype),
                    dy=np.empty((T, N, H), dtype), dbx=np.empty(4 * H, dtype), lnacc=np.empty(14 * H, np.float64))

    def sample_extras(self, W):
        return np.concatenate(W[3:])  # gx, gh, gc, bc

    def forward(self, b, ws, x, inp, W, Wp, mask, out, plan, groups):
        Wxh, Whh, bh = W[:3]
        norm, ln = (b["xn"], b["hn"], b["cn"]), tuple(W[3:])
        if groups:
            lnlstm_forward_split(b["hs"], b["cs"], b["gates"], norm, b["rs"], out, ws["tmp"], x, inp, Wxh, Whh, Wp,
                                 bh, ln, mask, plan.positions == "loops", groups)
        else:
            lnlstm_forward(b["hs"], b["cs"], b["gates"], norm, b["rs"], out, ws["tmp"], x, inp, Wxh, Whh, bh, ln,
                           mask, plan.loops, plan.positions == "loops")

    def backward(self, b, ws, dW, x, inp, W, WTp, mask, plan, groups):
        grads, norm = (ws["da"], ws["dax"], ws["dah"], ws["dy"]), (b["xn"], b["hn"], b["cn"])
        args = (dW[0], dW[1], tuple(dW[2:]), ws["dout"], grads, ws["rec"], ws["carry"], ws["dbx"], ws["acc"],
                ws["lnacc"], x, inp, b["hs"], b["cs"], b["gates"], norm, b["rs"], W[0], W[1])
        if groups:
            lnlstm_backward_split(*args, WTp, tuple(W[3:]), mask, groups)
        else:
            lnlstm_backward(*args, tuple(W[3:]), mask, plan.loops)


LAYER = LnLstmLayer()
