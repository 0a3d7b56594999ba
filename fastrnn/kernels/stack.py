"""Any model of fastrnn.params (L stacked layers of any cell of fastrnn.cells, dropout masks) on the numba kernels.

Python composes the per-layer kernels (each cell's numba side: rnn.py, gru.py, lstm.py, ..., reached through the
cell the parameters carry) and the output layer, a few njit calls per minibatch (2L + 2 for forward_backward):
each call does O(T) BLAS products and fused elementwise passes, so the dispatch cost is negligible beside the
work, and each kernel compiles once per dtype whatever L is.

Per layer l the workspace holds hs: (T+1, N, H) (hs[0] the carried h) and one such array per further vector of
the cell's state (cs for an lstm's c), gates: (T, N, G*H) (the input side, then the gates after their
nonlinearities), with dropout out: (T, N, H) (hs[1:] * masks[l], what the layer above and the output layer
read), and the cell's own arrays (a gru's hn: (T, N, H)). Scratch shared by the layers: tmp (N, G*H), rec and
carry (N, H), da (T, N, G*H), dout (T, N, H) (the gradient flowing down), logits (T*N, V), acc, rowloss, and the
cell's own (a gru's dha). Buffers are kept across calls of the same shape.
"""

import contextlib
import time

import numpy as np

from fastrnn.kernels import lm, workspace as scratch
from fastrnn.kernels.blas import gemm_on, one_thread
from fastrnn.kernels.jit import kernel
from fastrnn.kernels.rnn import matmul_small
from fastrnn.kernels.softmax_xent import affine_backward, softmax_xent_on
from fastrnn.kernels.tiles import pack, pack_bf16
from fastrnn.kernels.workspace import Grads


@kernel
def output_layer(dWhy, dby, dtop, logits, rowloss, acc, top, y, Why, by, scale, grad, groups):
    """The output layer over all positions: logits = top @ Why + by, softmax cross-entropy (mean, returned) and,
    if grad, dWhy, dby (overwritten) and dtop: (T, N, H) = dlogits @ Why.T. top: (T, N, H); y: (N, T) int32;
    groups: blas.gemm_on's (the tiles plan's threads, else 0)."""
    T, N, H = top.shape
    top2 = top.reshape(T * N, H)
    gemm_on(logits, top2, False, Why, False, 1.0, 0.0, groups)
    loss = softmax_xent_on(logits, rowloss, by, y, scale, grad, groups)
    if grad:
        affine_backward(dWhy, dby, dtop.reshape(T * N, H), logits, top2, Why, acc, groups)
    return loss


@kernel
def output_step(logits, h, Why, by):
    """logits: (N, V) = h: (N, H) @ Why + by (generation: N small, hand loops)."""
    matmul_small(logits, h, Why)
    N, V = logits.shape
    for n in range(N):
        for v in range(V):
            logits[n, v] += by[v]


def workspace(cell, L, T, N, H, V, dtype):
    """The scratch arrays of the module docstring for this shape (kept across calls); `cell` a fastrnn.cells.Cell,
    whose numba side adds its own (rnn.Layer.buffers and scratch)."""
    def build():
        GH = cell.gates * H
        side = cell.numba
        layers = []
        for _ in range(L):
            b = dict(gates=np.empty((T, N, GH), dtype), out=None)
            b.update({name + "s": np.empty((T + 1, N, H), dtype) for name in cell.state})  # hs, and cs for an lstm
            b.update(side.buffers(T, N, H, dtype))
            layers.append(b)
        ws = dict(layers=layers, tmp=np.empty((N, GH), dtype), rec=np.empty((N, H), dtype),
                  carry=np.empty((N, H), dtype), da=np.empty((T, N, GH), dtype), dout=np.empty((T, N, H), dtype),
                  logits=np.empty((T * N, V), dtype), acc=np.empty(max(GH, V), np.float64),
                  rowloss=np.empty(T * N, np.float64), none=np.empty((0, N, H), dtype))
        ws.update(side.scratch(T, N, H, dtype))
        return ws

    return scratch.cached(("layers", cell.name, id(cell), L, T, N, H, V, np.dtype(dtype).str), build)


def _params(P):
    """The parameters as the kernels take them: (dtype, a tuple per layer in the cell's order, Why, by)."""
    dtype = P["Whh"].dtype
    layers = [tuple(np.ascontiguousarray(P[k], dtype=dtype) for k in P.cell.layer_names(l))
              for l in range(P.layers)]
    return dtype, layers, np.ascontiguousarray(P["Why"], dtype=dtype), np.ascontiguousarray(P["by"], dtype=dtype)


def _masks(masks, L, T, N, H, dtype):
    if masks is None:
        return None
    masks = np.ascontiguousarray(masks, dtype=dtype)
    if masks.shape != (L, T, N, H):
        raise ValueError(f"dropout masks of shape {masks.shape}, the model needs {(L, T, N, H)}")
    return masks


def _blas_threads(plan):
    """The tiles plan keeps OpenBLAS on one thread for the call (its products are split over numba's threads);
    the others leave it as set."""
    return one_thread() if plan.tiles else contextlib.nullcontext()


def _packed(W, plan):
    """W packed for the tiles plan's products: bf16 pairs (tiles.pack_bf16) at precision bf16, else tiles.pack
    (once per call: W does not change within a minibatch)."""
    return pack_bf16(W) if plan.precision == "bf16" else pack(W)


def _groups(plan, N):
    """The thread blocks of the tiles plan (the recurrences' row blocks, the position products' column blocks), 0
    for the other plans."""
    return min(plan.threads, N) if plan.tiles else 0


def _forward(cell, layers, ws, x, state, masks, plan):
    """All layers forward from the carried state (N, S). Returns (top: (T, N, H) the output layer's input,
    the new state (N, S))."""
    N, T = x.shape
    H = layers[0][1].shape[0]
    K = len(cell.state)
    side = cell.numba
    groups = _groups(plan, N)
    new_state = np.empty((N, len(layers) * K * H), ws["tmp"].dtype)
    inp = ws["none"]
    for l, W in enumerate(layers):
        b = ws["layers"][l]
        seqs = [b[name + "s"] for name in cell.state]  # hs (and cs): (T+1, N, H), [0] the carried state
        for k, seq in enumerate(seqs):
            seq[0] = state[:, (l * K + k) * H:(l * K + k + 1) * H]
        if masks is None:
            mask, out = ws["none"], ws["none"]
        else:
            mask = masks[l]
            if b["out"] is None:
                b["out"] = np.empty((T, N, H), seqs[0].dtype)
            out = b["out"]
        side.forward(b, ws, x, inp, W, _packed(W[1], plan) if groups else None, mask, out, plan, groups)
        for k, seq in enumerate(seqs):
            new_state[:, (l * K + k) * H:(l * K + k + 1) * H] = seq[T]
        inp = b["hs"][1:] if masks is None else out
    return inp, new_state


def _backward(cell, layers, grads, ws, x, masks, plan):
    """All layers backward from ws["dout"] (the gradient w.r.t. the top layer's output); writes grads."""
    side = cell.numba
    groups = _groups(plan, x.shape[0])
    for l in range(len(layers) - 1, -1, -1):
        W = layers[l]
        b = ws["layers"][l]
        mask = ws["none"] if masks is None else masks[l]
        if l == 0:
            inp = ws["none"]
        else:
            below = ws["layers"][l - 1]
            inp = below["hs"][1:] if masks is None else below["out"]
        WTp = _packed(W[1].T, plan) if groups else None
        side.backward(b, ws, grads[l], x, inp, W, WTp, mask, plan, groups)


def _prepare(P, x, y, masks):
    """What forward_backward and forward_loss need: the architecture, contiguous parameters and tokens (checked
    in range), the masks in the parameters' dtype and the workspace."""
    cell, L, H = P.cell, P.layers, P.hidden_size
    dtype, layers, Why, by = _params(P)
    x, y = lm_tokens(x), lm_tokens(y)
    N, T = x.shape
    V = by.shape[0]
    lm.check_tokens(x, y, V)
    masks = _masks(masks, L, T, N, H, dtype)
    return cell, L, dtype, layers, Why, by, x, y, masks, workspace(cell, L, T, N, H, V, dtype)


def forward_backward(P, G, x, y, state, masks, plan, clock=None):
    """Loss and gradients of any model on one minibatch (see fastrnn.reference.forward_backward), as `plan`
    (dispatch.Plan, path "layers") says.

    P, G: dicts of parameter and gradient arrays (G overwritten); x, y: (N, T) int; state: (N, S) carried state;
    masks: (L, T, N, H) dropout masks or None. clock: a dict that receives the seconds of the phases forward
    (all layers), output (output layer, loss and its gradient) and backward (all layers), or None.
    Returns (loss, the new state (N, S) as a new array).
    """
    cell, L, dtype, layers, Why, by, x, y, masks, ws = _prepare(P, x, y, masks)
    T, N = x.shape[1], x.shape[0]
    names = [cell.layer_names(l) for l in range(L)]
    grads = Grads(G, [k for layer in names for k in layer] + ["Why", "by"], dtype)
    direct = grads.direct
    with _blas_threads(plan):
        t0 = time.perf_counter()
        top, new_state = _forward(cell, layers, ws, x, state, masks, plan)
        t1 = time.perf_counter()
        loss = output_layer(direct[-2], direct[-1], ws["dout"], ws["logits"], ws["rowloss"], ws["acc"], top, y,
                            Why, by, dtype.type(1.0 / (T * N)), True, _groups(plan, N))
        t2 = time.perf_counter()
        n = len(names[0])
        _backward(cell, layers, [direct[n * l:n * l + n] for l in range(L)], ws, x, masks, plan)
    grads.copy_back()
    if clock is not None:
        clock.update(forward=t1 - t0, output=t2 - t1, backward=time.perf_counter() - t2)
    return float(loss), new_state


def forward_loss(P, x, y, state, masks, plan):
    """Loss only (evaluation): returns (loss, new state (N, S))."""
    cell, L, dtype, layers, Why, by, x, y, masks, ws = _prepare(P, x, y, masks)
    T, N = x.shape[1], x.shape[0]
    with _blas_threads(plan):
        top, new_state = _forward(cell, layers, ws, x, state, masks, plan)
        loss = output_layer(Why, by, ws["dout"], ws["logits"], ws["rowloss"], ws["acc"], top, y, Why, by,
                            dtype.type(1.0 / (T * N)), False, _groups(plan, N))
    return float(loss), new_state


def step(P, state, token, plan):
    """One generation step of any model: state (N, S), token (N,) int32. Returns (new state (N, S), logits
    (N, V))."""
    cell, L, H = P.cell, P.layers, P.hidden_size
    dtype, layers, Why, by = _params(P)
    N = state.shape[0]
    V = by.shape[0]
    x = token.reshape(N, 1)
    lm.check_tokens(x, x, V)  # IndexError (one njit call: cheaper than two NumPy reductions at this size)
    ws = workspace(cell, L, 1, N, H, V, dtype)
    with _blas_threads(plan):
        top, new_state = _forward(cell, layers, ws, x, state, None, plan)
    logits = np.empty((N, V), dtype)  # (N, V)
    output_step(logits, top[0], Why, by)
    return new_state, logits


def lm_tokens(x):
    return np.ascontiguousarray(x, dtype=np.int32)
