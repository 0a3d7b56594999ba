"""Vanilla tanh RNN layer: forward and backward through time (numba), mirroring fastrnn.reference.

Letters: N batch, T time, H hidden, V vocabulary. Hidden states are time-major and carry the initial state in
front: hs: (T+1, N, H), hs[0] = h0, hs[t+1] = tanh(Wxh[x[:, t]] + hs[t] @ Whh + bh). With the initial state in the
same buffer, hs[:-1] is the "previous state" of every position as one contiguous (T*N, H) block (no concatenate)
and hs[1:] is the layer's output.

How the per-step recurrent products hs[t] @ Whh and dz[t+1] @ Whh.T run is the caller's dispatch.Plan, passed
down as `how` (or the bool `loops`, which means the same: True hand loops, False BLAS): LOOPS hand loops, BLAS
blas.gemm, TILES tiles.matmul_packed. With tiles the recurrences run as `*_split` kernels: the batch rows cut into
one block per thread (the rows of a recurrence never meet), each thread stepping its block through all T steps
with no exchange, the products over all positions (input side, weight gradients) on BLAS before and after.
The input lookup, the bias and tanh are fused into one pass after the product; backward fuses the recurrence add
and tanh' the same way, and the weight gradients over all T*N positions are one product each (dWhh) or one serial
pass (dWxh, dbh).
"""

import numpy as np
from numba import prange

from fastrnn.kernels import mathfn
from fastrnn.kernels.blas import gemm, gemm_on
from fastrnn.kernels.jit import kernel, parallel_kernel
from fastrnn.kernels.sample import choose_tokens, layer_products, output_logits, scratch
from fastrnn.kernels.softmax_xent import column_sums
from fastrnn.kernels.tiles import TILE_ROWS, no_pack, tile_product

BLAS, LOOPS, TILES = 0, 1, 2  # how the per-step recurrent products run (dispatch.Plan.how)


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
def forward_step(hs, tmp, x, Wxh, Whh, bh, loops, t):
    """Time step t of rnn_forward: hs[t+1] = tanh(Wxh[x[:, t]] + hs[t] @ Whh + bh)."""
    N, H = hs.shape[1], hs.shape[2]
    recurrent_product(tmp, hs[t], Whh, loops, no_pack(Whh))
    out = hs[t + 1]
    for n in range(N):
        wx = Wxh[x[n, t]]
        o = out[n]
        r = tmp[n]
        for j in range(H):
            o[j] = mathfn.tanh(r[j] + wx[j] + bh[j])


@kernel
def rnn_forward(hs, tmp, x, Wxh, Whh, bh, loops):
    """hs: (T+1, N, H) in/out: hs[0] = h0 on entry, hs[1:] written; tmp: (N, H) scratch; x: (N, T) int32 C-order;
    Wxh: (V, H); Whh: (H, H); bh: (H,); loops: hand loops for the recurrent product (module docstring)."""
    for t in range(hs.shape[0] - 1):
        forward_step(hs, tmp, x, Wxh, Whh, bh, loops, t)


@kernel
def backward_step(dz, tmp, hs, Whh, loops, t):
    """Time step t of the backward recurrence (t from T-1 down): dz[t] += dz[t+1] @ Whh.T (not at T-1), then
    times tanh' = 1 - hs[t+1]^2; dz[t] arrives as the gradient w.r.t. hs[t+1] and leaves as the gradient w.r.t.
    the pre-activation."""
    T, N, H = dz.shape
    h = hs[t + 1]
    d = dz[t]
    if t < T - 1 and not loops:
        gemm(d, dz[t + 1], False, Whh, True, 1.0, 1.0)
    if t < T - 1 and loops:
        matmul_nt_small(tmp, dz[t + 1], Whh)
        for n in range(N):
            dn, rn, hn = d[n], tmp[n], h[n]
            for j in range(H):
                g = dn[j] + rn[j]
                dn[j] = g - g * hn[j] * hn[j]
    else:
        for n in range(N):
            dn, hn = d[n], h[n]
            for j in range(H):
                g = dn[j]
                dn[j] = g - g * hn[j] * hn[j]


@kernel
def rnn_backward(dWxh, dWhh, dbh, dz, tmp, acc, x, hs, Whh, loops):
    """Backpropagation through time; overwrites the gradients.

    dWxh: (V, H), dWhh: (H, H), dbh: (H,) out (overwritten); dz: (T, N, H) in/out: on entry the gradient w.r.t. the
    outputs hs[1:] from above, on exit the gradient w.r.t. the pre-activations; tmp: (N, H) scratch; acc: (H,)
    float64 scratch; x: (N, T) int32; hs: (T+1, N, H) from rnn_forward; Whh: (H, H); loops: hand loops for the
    recurrence (module docstring).
    The gradient w.r.t. h0 is not needed by the trainer and is not computed.
    """
    T, N, H = dz.shape
    for t in range(T - 1, -1, -1):
        backward_step(dz, tmp, hs, Whh, loops, t)
    gemm(dWhh, hs[:T].reshape(T * N, H), True, dz.reshape(T * N, H), False, 1.0, 0.0)
    # dbh: column sums (float64 accumulator); dWxh: scatter-add of rows by token, in position order
    scatter_columns(dWxh, dbh, acc, dz, x, 0, H)


@kernel
def scatter_columns(dWxh, dbh, acc, dz, x, j0, j1):
    """Layer 0's input-side gradients for the columns j0:j1, overwritten: the rows of dWxh scatter-added by token
    and dbh = the column sums of dz: (T, N, GH) (float64 acc), in position order. (Slices, and two loops each
    writing one array: LLVM vectorizes those; a loop over range(j0, j1) writing both stays scalar, 4x slower.
    One thread: at T*N = 3,200, H = 512 it reads dz at memory speed, 0.4 ms, and two threads split by columns
    took 0.7.)"""
    T, N = dz.shape[0], dz.shape[1]
    a = acc[j0:j1]
    a[:] = 0.0
    dWxh[:, j0:j1] = 0
    for t in range(T):
        for n in range(N):
            row = dz[t, n, j0:j1]
            dw = dWxh[x[n, t], j0:j1]
            for j in range(row.shape[0]):
                a[j] += row[j]
            for j in range(row.shape[0]):
                dw[j] += row[j]
    for j in range(j0, j1):
        dbh[j] = acc[j]


# ---------------------------------------------------------------------------------------------------------------
# the general layer interface, shared by rnn (here), gru.py and lstm.py, composed by stack.py
#
# A layer of G gate blocks reads either the tokens (layer 0: the input side is a row lookup of Wxh: (V, G*H), and
# `inp` has 0 rows) or the layer below's output inp: (T, N, H) (one (T*N, H) x (H, G*H) product into `gates`
# before the recurrence). hs: (T+1, N, H) carries the initial state in hs[0]. With dropout, `mask`: (T, N, H)
# (0 rows without), the layer also writes out = hs[1:] * mask, its output as seen from above. Backward gets
# dout: (T, N, H), the gradient w.r.t. that output, and on exit (l > 0) leaves in it the gradient w.r.t. inp.


@kernel
def recurrent_product(out, h, W, how, Wp):
    """out: (N, G*H) = h: (N, H) @ W: (H, G*H), as `how` says (LOOPS, BLAS or TILES; a bool: True LOOPS); Wp:
    W packed, read by TILES only: tiles.pack(W), or tiles.pack_bf16(W) for bf16 products (tiles.no_pack(W) for
    the other ways)."""
    if how == TILES:
        tile_product(out, h, Wp)
    elif how == LOOPS:
        matmul_small(out, h, W)
    else:
        gemm(out, h, False, W, False, 1.0, 0.0)


@kernel
def recurrent_gradient(out, d, W, how, WTp):
    """out: (N, H) = d: (N, G*H) @ W.T, W: (H, G*H), as `how` says; WTp: W.T packed as recurrent_product's Wp,
    read by TILES only."""
    if how == TILES:
        tile_product(out, d, WTp)
    elif how == LOOPS:
        matmul_nt_small(out, d, W)
    else:
        gemm(out, d, False, W, True, 1.0, 0.0)


@kernel
def row_block(N, groups, q):
    """Rows [r0, r1) of block q of `groups` over N rows: contiguous, the inner boundaries on multiples of
    TILE_ROWS (the tiles' row count) where N allows."""
    r0 = TILE_ROWS * ((q * N) // (TILE_ROWS * groups)) if q > 0 else 0
    r1 = TILE_ROWS * (((q + 1) * N) // (TILE_ROWS * groups)) if q < groups - 1 else N
    return r0, max(r0, r1)


@kernel
def input_side(gates, inp, Wxh, loops, groups=0):
    """gates: (T, N, G*H) = inp: (T, N, H) @ Wxh: (H, G*H) as one product over all positions (not for layer 0);
    hand loops if `loops` (a plan's positions "loops": a generation step of one or two rows, for which OpenBLAS's
    sgemm would pack all of Wxh), else BLAS (over `groups` numba threads: blas.gemm_on)."""
    T, N, GH = gates.shape
    if inp.shape[0] > 0:
        if loops:
            matmul_small(gates.reshape(T * N, GH), inp.reshape(T * N, inp.shape[2]), Wxh)
        else:
            gemm_on(gates.reshape(T * N, GH), inp.reshape(T * N, inp.shape[2]), False, Wxh, False, 1.0, 0.0,
                    groups)


@kernel
def apply_mask(out, hs, mask):
    """out: (T, N, H) = hs[1:] * mask (no-op when mask has 0 rows)."""
    if mask.shape[0] > 0:
        T, N, H = out.shape
        for t in range(T):
            for n in range(N):
                o, h, m = out[t, n], hs[t + 1, n], mask[t, n]
                for j in range(H):
                    o[j] = h[j] * m[j]


@kernel
def weight_gradients(dWxh, dWhh, dbh, dinp, dxa, dha, acc, x, inp, hs, Wxh, groups=0):
    """The products over all T*N positions after a layer's backward recurrence; overwrites the gradients.

    dxa: (T, N, G*H) gradient w.r.t. the input side (pre-activations); dha: (T, N, G*H) w.r.t. the recurrent
    product (the same array except for a gru); hs: (T+1, N, H); acc: (G*H,) float64 scratch.
    dWhh = hs[:T].T @ dha; dbh = column sums of dxa; layer 0 (inp has 0 rows): dWxh rows scatter-added by token
    (serial, in position order); above: dWxh = inp.T @ dxa and dinp: (T, N, H) = dxa @ Wxh.T. The products over
    `groups` numba threads (blas.gemm_on).
    """
    T, N, GH = dxa.shape
    H = hs.shape[2]
    d2 = dxa.reshape(T * N, GH)
    gemm_on(dWhh, hs[:T].reshape(T * N, H), True, dha.reshape(T * N, GH), False, 1.0, 0.0, groups)
    if inp.shape[0] == 0:  # dbh and the scatter-add of dWxh in one pass over the positions
        scatter_columns(dWxh, dbh, acc, dxa, x, 0, GH)
    else:
        column_sums(dbh, d2, acc)
        i2 = inp.reshape(T * N, H)
        gemm_on(dWxh, i2, True, d2, False, 1.0, 0.0, groups)
        gemm_on(dinp.reshape(T * N, H), d2, False, Wxh, True, 1.0, 0.0, groups)


@kernel
def rnn_layer_forward(hs, out, x, inp, Wxh, Whh, bh, mask, tmp, loops, positions_loops):
    """One tanh layer forward (general interface above): hs[t+1] = tanh(in_t + hs[t] @ Whh + bh).

    hs: (T+1, N, H); out: (T, N, H) (written only with a mask); x: (N, T) int32; inp: (T, N, H) or 0 rows;
    Wxh: (V or H, H); Whh: (H, H); bh: (H,); mask: (T, N, H) or 0 rows; tmp: (T, N, H) scratch for the input
    side (used above layer 0); loops, positions_loops: hand loops for the recurrent and the input-side products. The recurrent product of step t goes straight to hs[t+1], then tanh in place.
    """
    input_side(tmp, inp, Wxh, positions_loops)
    rnn_layer_steps(hs, x, tmp, Wxh, Whh, no_pack(Whh), bh, inp.shape[0] == 0, 0, hs.shape[1], loops)
    apply_mask(out, hs, mask)


@parallel_kernel
def rnn_layer_forward_split(hs, out, x, inp, Wxh, Whh, Wp, bh, mask, tmp, positions_loops, groups):
    """rnn_layer_forward with the recurrence as `groups` blocks of rows, one per thread, products by tiles over
    Wp, Whh packed (tiles.pack, or pack_bf16 for bf16 products)."""
    N = hs.shape[1]
    input_side(tmp, inp, Wxh, positions_loops, groups)
    lookup = inp.shape[0] == 0
    for q in prange(groups):
        r0, r1 = row_block(N, groups, q)
        rnn_layer_steps(hs, x, tmp, Wxh, Whh, Wp, bh, lookup, r0, r1, TILES)
    apply_mask(out, hs, mask)


@kernel
def rnn_layer_steps(hs, x, xin, Wxh, Whh, Wp, bh, lookup, r0, r1, how):
    """The T steps of rnn_layer_forward for the rows r0:r1 (all, or one thread's block): the input side is the
    row Wxh[x[n, t]] (lookup) or xin[t, n]. (Whole arrays and a row range, not row slices: a slice hs[:, r0:r1]
    is a strided array to numba, and the passes over its rows would not vectorize.)"""
    T = hs.shape[0] - 1
    H = hs.shape[2]
    for t in range(T):
        # the product goes to the output rows, then tanh in place
        recurrent_product(hs[t + 1, r0:r1], hs[t, r0:r1], Whh, how, Wp)
        for n in range(r0, r1):
            src = Wxh[x[n, t]] if lookup else xin[t, n]
            o = hs[t + 1, n]
            for j in range(H):
                o[j] = mathfn.tanh(o[j] + src[j] + bh[j])


@kernel
def rnn_layer_backward(dWxh, dWhh, dbh, dout, dz, rec, acc, x, inp, hs, Wxh, Whh, mask, loops):
    """One tanh layer backward (general interface above); overwrites the gradients.

    dout: (T, N, H) in: gradient w.r.t. the layer's output; out (above layer 0): gradient w.r.t. inp.
    dz: (T, N, H) scratch (gradient w.r.t. the pre-activations); rec: (N, H) scratch; acc: (H,) float64.
    """
    rnn_layer_back_steps(dout, dz, rec, hs, Whh, no_pack(Whh), mask, 0, hs.shape[1], loops)
    weight_gradients(dWxh, dWhh, dbh, dout, dz, dz, acc, x, inp, hs, Wxh)


@parallel_kernel
def rnn_layer_backward_split(dWxh, dWhh, dbh, dout, dz, rec, acc, x, inp, hs, Wxh, Whh, WTp, mask, groups):
    """rnn_layer_backward with the recurrence as `groups` blocks of rows, one per thread, products by tiles over
    WTp, Whh.T packed."""
    N = hs.shape[1]
    for q in prange(groups):
        r0, r1 = row_block(N, groups, q)
        rnn_layer_back_steps(dout, dz, rec, hs, Whh, WTp, mask, r0, r1, TILES)
    weight_gradients(dWxh, dWhh, dbh, dout, dz, dz, acc, x, inp, hs, Wxh, groups)


@kernel
def rnn_layer_back_steps(dout, dz, rec, hs, Whh, WTp, mask, r0, r1, how):
    """The backward recurrence of rnn_layer_backward for the rows r0:r1 (all, or one thread's block)."""
    T, N, H = dz.shape
    masked = mask.shape[0] > 0
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            recurrent_gradient(rec[r0:r1], dz[t + 1, r0:r1], Whh, how, WTp)
        else:
            rec[r0:r1] = 0
        for n in range(r0, r1):
            d, h, r, g = dout[t, n], hs[t + 1, n], rec[n], dz[t, n]
            if masked:
                m = mask[t, n]
                for j in range(H):
                    v = d[j] * m[j] + r[j]
                    g[j] = v - v * h[j] * h[j]
            else:
                for j in range(H):
                    v = d[j] + r[j]
                    g[j] = v - v * h[j] * h[j]


# ---------------------------------------------------------------------------------------------------------------
# the rnn cell's numba side (fastrnn.cells.rnn): the layer as kernels/stack.py composes it, and its generation step


@kernel
def rnn_update(h, c, g, xa, a, b, ex):
    """The rnn's generation step (kernels/sample.py): h = tanh(xa + b + a)."""
    H = h.shape[0]
    for j in range(H):
        xa[j] = xa[j] + b[j]
    for j in range(H):
        h[j] = mathfn.tanh_call(xa[j] + a[j])


@parallel_kernel
def rnn_sample_streams(out, state, logits, uniforms, Wx0, Wxp, Whp, bh, ex, Whyp, by, temperature, top_k, top_p,
                       greedy, groups):
    """kernels.sample.sample_streams with the rnn's update: the streams in `groups` groups, one per thread, each
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
                    rnn_update(st[r, l, 0], st[r, l, K - 1], g, xa[r], a[r], bh[l], ex[l])
            output_logits(lg, hin, st, Whyp, by)


class Layer:
    """A cell's numba side (fastrnn.cells.base), here the rnn's; the other cells' derive from it.

    Each layer's buffers b hold hs: (T+1, N, H) (and one such array per further name of the cell's state: cs for
    an lstm's c), gates: (T, N, G*H), out: (T, N, H) with dropout, plus `buffers`; the shared scratch ws holds tmp
    (N, G*H), rec and carry (N, H), da (T, N, G*H), dout (T, N, H), acc, plus `scratch` (kernels/stack.py).
    """

    sample_streams = staticmethod(rnn_sample_streams)  # the cell's generation kernel (kernels/sample.py)

    def buffers(self, T, N, H, dtype):
        """The cell's own arrays of one layer's buffers, beside those every cell has."""
        return {}

    def scratch(self, T, N, H, dtype):
        """The cell's own scratch arrays, shared by the layers."""
        return {}

    def sample_extras(self, W):
        """The layer's extras as its update reads them in generation (W: its parameters): none here."""
        return np.empty(0, W[2].dtype)

    def forward(self, b, ws, x, inp, W, Wp, mask, out, plan, groups):
        """The layer forward from b["hs"][0]: W its parameters (Wxh, Whh, bh, ...), Wp Whh packed for the tiles
        plan (groups > 0: its threads), mask and out as rnn_layer_forward takes them."""
        Wxh, Whh, bh = W
        if groups:
            rnn_layer_forward_split(b["hs"], out, x, inp, Wxh, Whh, Wp, bh, mask, b["gates"],
                                    plan.positions == "loops", groups)
        else:
            rnn_layer_forward(b["hs"], out, x, inp, Wxh, Whh, bh, mask, b["gates"], plan.loops,
                              plan.positions == "loops")

    def backward(self, b, ws, dW, x, inp, W, WTp, mask, plan, groups):
        """The layer backward from ws["dout"] (left holding the gradient w.r.t. inp above layer 0); overwrites
        the gradients dW (arrays like W). WTp: Whh.T packed for the tiles plan."""
        args = (*dW, ws["dout"], ws["da"], ws["rec"], ws["acc"], x, inp, b["hs"], W[0], W[1])
        if groups:
            rnn_layer_backward_split(*args, WTp, mask, groups)
        else:
            rnn_layer_backward(*args, mask, plan.loops)


LAYER = Layer()
