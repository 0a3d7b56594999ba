"""A cell added from outside the package: a ReLU rnn, h_t = max(0, x_t @ Wxh + h_{t-1} @ Whh + bh), declared and
registered here (its NumPy reference pair and its numba kernel pair written in this file, no package file
changed), passes a float64 gradient check against finite differences, its kernels match its reference, and it
trains through the normal training path; and the registry's own rules."""

import json
import os

import numba
import numpy as np
import pytest

from fastrnn import cells
from fastrnn import kernels as K
from fastrnn import reference as ref
from fastrnn.kernels import dispatch
from fastrnn.kernels.rnn import Layer, apply_mask, input_side, recurrent_gradient, recurrent_product, \
    weight_gradients
from fastrnn.kernels.tiles import no_pack
from fastrnn.model import Model

from test_reference_cells import assert_gradients_close, numeric_gradient


# ---------------------------------------------------------------------------------------------------------------
# the ReLU rnn: reference pair (fastrnn.cells.base's layer interface)


def relu_forward(inp, W, state0):
    Wxh, Whh, bh = W
    xa = ref.input_forward(inp, Wxh, bh)  # (T, N, H)
    h = state0[0]
    for t in range(xa.shape[0]):
        xa[t] = np.maximum(xa[t] + h @ Whh, 0.0)
        h = xa[t]
    return (xa,), ()


def relu_backward(dhs, inp, W, dW, state0, seqs, cache):
    Wxh, Whh, bh = W
    dWxh, dWhh, dbh = dW
    hs = seqs[0]
    dz = np.empty_like(hs)
    dh_next = np.zeros_like(state0[0])
    for t in range(hs.shape[0] - 1, -1, -1):
        dz[t] = (dhs[t] + dh_next) * (hs[t] > 0)
        dh_next = dz[t] @ Whh.T
    T, N, H = hs.shape
    hprev = np.concatenate([state0[0][None], hs[:-1]])
    dWhh += hprev.reshape(T * N, H).T @ dz.reshape(T * N, H)
    return ref.input_backward(dz, inp, Wxh, dWxh, dbh), (dh_next,)


# ---------------------------------------------------------------------------------------------------------------
# its numba pair, built of the general layer interface of fastrnn/kernels/rnn.py


@numba.njit
def relu_layer_forward(hs, out, x, inp, Wxh, Whh, Wp, bh, mask, xin, how):
    input_side(xin, inp, Wxh, False)
    T, N, H = xin.shape
    for t in range(T):
        recurrent_product(hs[t + 1], hs[t], Whh, how, Wp)
        for n in range(N):
            src = Wxh[x[n, t]] if inp.shape[0] == 0 else xin[t, n]
            for j in range(H):
                hs[t + 1, n, j] = max(hs[t + 1, n, j] + src[j] + bh[j], 0.0)
    apply_mask(out, hs, mask)


@numba.njit
def relu_layer_backward(dWxh, dWhh, dbh, dout, dz, rec, acc, x, inp, hs, Wxh, Whh, WTp, mask, how):
    T, N, H = dz.shape
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            recurrent_gradient(rec, dz[t + 1], Whh, how, WTp)
        else:
            rec[:] = 0
        for n in range(N):
            for j in range(H):
                d = dout[t, n, j] * (mask[t, n, j] if mask.shape[0] > 0 else 1.0) + rec[n, j]
                dz[t, n, j] = d if hs[t + 1, n, j] > 0 else 0.0
    weight_gradients(dWxh, dWhh, dbh, dout, dz, dz, acc, x, inp, hs, Wxh)


class ReluLayer(Layer):
    """The numba side: every plan runs the one serial kernel pair (the tiles plan's products too, by its tiles)."""

    sample_streams = None  # no generation kernel: this test does not sample

    def forward(self, b, ws, x, inp, W, Wp, mask, out, plan, groups):
        Wxh, Whh, bh = W
        relu_layer_forward(b["hs"], out, x, inp, Wxh, Whh, no_pack(Whh) if Wp is None else Wp, bh, mask,
                           b["gates"], plan.how)

    def backward(self, b, ws, dW, x, inp, W, WTp, mask, plan, groups):
        relu_layer_backward(*dW, ws["dout"], ws["da"], ws["rec"], ws["acc"], x, inp, b["hs"], W[0], W[1],
                            no_pack(W[1]) if WTp is None else WTp, mask, plan.how)


RELU = cells.Cell(name="relu", gates=1, forward=relu_forward, backward=relu_backward, kernels=ReluLayer,
                  summary="ReLU rnn (a test's)")


@pytest.fixture(autouse=True)
def relu_cell():
    cells.register(RELU)
    yield RELU
    cells.unregister("relu")


def problem(L, N=3, T=5, V=6, H=4, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    model = Model(V, H, dtype, "relu", L).init(rng, 0.5, "xavier")
    model.flat[...] += (rng.standard_normal(model.flat.size) * 0.1).astype(dtype)  # biases non-zero too
    x, y = (rng.integers(0, V, size=(N, T)).astype(np.int32) for _ in range(2))
    h0 = np.abs(rng.standard_normal((N, model.state_size))).astype(dtype)  # a carried state, as a ReLU's
    return model, x, y, h0


@pytest.mark.parametrize("L", [1, 2])
def test_the_reference_pair_passes_a_gradient_check(L):
    model, x, y, h0 = problem(L)
    assert model.P.cell is RELU and model.layout.names[:3] == ["Wxh", "Whh", "bh"]
    gflat = model.layout.zeros(np.float64)
    ref.forward_backward(model.P, model.layout.views(gflat), x, y, h0)
    num = numeric_gradient(lambda: ref.forward_loss(model.P, x, y, h0)[0], model.flat)
    assert_gradients_close(num, gflat)


@pytest.mark.parametrize("way", ["loops", "blas", "tiles"])
@pytest.mark.parametrize("L,dropout", [(1, False), (2, True)])
def test_the_kernel_pair_matches_the_reference(L, dropout, way):
    model, x, y, h0 = problem(L, N=5, T=4, V=7, H=9)
    masks = (np.random.default_rng(3).random((L, 4, 5, 9)) > 0.3) / 0.7 if dropout else None
    plan = dispatch.variant(K.plan_for(model.P, 5, 4, dropout), loops=way == "loops", tiles=way == "tiles")
    assert plan.path == "layers" and plan.cell == "relu"
    g_ref, g_nb = model.layout.zeros(np.float64), model.layout.zeros(np.float64)
    loss_ref, s_ref = ref.forward_backward(model.P, model.layout.views(g_ref), x, y, h0, masks)
    loss_nb, s_nb = K.forward_backward(model.P, model.layout.views(g_nb), x, y, h0, masks, plan=plan)
    assert loss_nb == pytest.approx(loss_ref, rel=1e-12)
    np.testing.assert_allclose(s_nb, s_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g_nb, g_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_it_trains_five_steps_through_the_training_path(small_corpus, tmp_path, backend):
    from fastrnn.api import load_model
    from fastrnn.train import train

    run = tmp_path / "relu"
    train(small_corpus, run, dict(model="relu", num_layers=2, hidden_size=16, seq_len=8, batch_size=4, max_steps=5,
                                  log_every=1, eval_every=0, checkpoint_every=0, backend=backend, dtype="float64"))
    with open(os.path.join(run, "log.jsonl")) as f:
        losses = [json.loads(line)["batch_loss"] for line in f]
    assert len(losses) == 5 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    model, _, ckpt = load_model(run)
    assert model.cell is RELU and ckpt.config["model"] == "relu" and ckpt.state["step"] == 5


def test_the_registry():
    assert cells.names()[:3] == ("rnn", "lstm", "gru") and "relu" in cells.names()
    assert cells.get("relu") is RELU and cells.get(RELU) is RELU
    cells.register(RELU)  # the same cell again: nothing happens
    with pytest.raises(ValueError, match="registered already"):
        cells.register(cells.Cell(name="relu", gates=1, forward=None, backward=None, kernels=None))
    with pytest.raises(ValueError, match="unknown cell 'nope'"):
        cells.get("nope")
    with pytest.raises(ValueError, match="starts with h"):
        cells.Cell(name="odd", gates=1, forward=None, backward=None, kernels=None, state=("c",))
    lstm = cells.get("lstm")
    assert (lstm.gates, lstm.state, lstm.state_size(8, 2)) == (4, ("h", "c"), 32)
    assert lstm.layer_names(1) == ("Wxh1", "Whh1", "bh1")
