"""The NumPy reference for every cell (rnn, gru, lstm, lnlstm), 1 and 2 layers, with dropout, against central finite
differences in float64; and the carried state of a stacked model across minibatches."""

import numpy as np
import pytest

from fastrnn import reference as ref
from fastrnn.dropout import make_masks
from fastrnn.model import Model
from fastrnn.params import arch_of, state_size


def make_problem(cell, L, N, T, V, H, seed=0, carried=True, dropout=0.0):
    rng = np.random.default_rng(seed)
    model = Model(V, H, "float64", cell, L).init(rng, 0.5, "xavier")
    model.flat[...] += rng.standard_normal(model.flat.size) * 0.1  # biases non-zero too
    x = rng.integers(0, V, size=(N, T)).astype(np.int32)
    y = rng.integers(0, V, size=(N, T)).astype(np.int32)
    S = state_size(cell, H, L)
    h0 = rng.standard_normal((N, S)) * 0.5 if carried else np.zeros((N, S))
    masks = make_masks(rng, dropout, L, T, N, H, np.float64)
    return model, x, y, h0, masks


def rel_error(a, b):
    return np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b)))


def assert_gradients_close(num, grad):
    """Relative error < 1e-6 on every entry large enough for it to mean something (|g| > 1e-5: below that,
    the central difference's rounding error, ~1e-11, dominates), absolute error < 1e-9 on the rest."""
    mask = np.abs(num) + np.abs(grad) > 1e-5
    assert np.all(np.abs(num[~mask] - grad[~mask]) < 1e-9)
    assert mask.sum() > 0.5 * mask.size
    assert rel_error(num[mask], grad[mask]) < 1e-6


def numeric_gradient(f, flat, eps=1e-5):
    num = np.zeros_like(flat)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        lp = f()
        flat[i] = old - eps
        lm = f()
        flat[i] = old
        num[i] = (lp - lm) / (2 * eps)
    return num


CELLS = ("rnn", "gru", "lstm", "lnlstm")
CASES = [(cell, L, carried) for cell in CELLS for L in (1, 2) for carried in (False, True)]


@pytest.mark.parametrize("cell,L,carried", CASES)
def test_gradients_match_finite_differences(cell, L, carried):
    model, x, y, h0, _ = make_problem(cell, L, N=2, T=4, V=5, H=3, carried=carried)
    assert arch_of(model.P) == (cell, L, 3)
    gflat = model.layout.zeros(np.float64)
    ref.forward_backward(model.P, model.layout.views(gflat), x, y, h0)
    num = numeric_gradient(lambda: ref.forward_loss(model.P, x, y, h0)[0], model.flat)
    assert_gradients_close(num, gflat)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("N,T", [(1, 1), (3, 1), (1, 5)])
def test_gradients_edge_shapes(cell, N, T):
    # (the layer norm of an lnlstm's H = 2 cell values is about +-1 with a steep step between: central differences
    # cannot follow it, so its H is 3)
    model, x, y, h0, _ = make_problem(cell, 2, N=N, T=T, V=4, H=3 if cell == "lnlstm" else 2, seed=5)
    gflat = model.layout.zeros(np.float64)
    ref.forward_backward(model.P, model.layout.views(gflat), x, y, h0)
    num = numeric_gradient(lambda: ref.forward_loss(model.P, x, y, h0)[0], model.flat)
    assert_gradients_close(num, gflat)


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_with_dropout(cell):
    model, x, y, h0, masks = make_problem(cell, 2, N=3, T=4, V=5, H=3, seed=2, dropout=0.4)
    assert masks is not None and set(np.unique(masks)) <= {0.0, 1 / 0.6}
    gflat = model.layout.zeros(np.float64)
    ref.forward_backward(model.P, model.layout.views(gflat), x, y, h0, masks)
    num = numeric_gradient(lambda: ref.forward_loss(model.P, x, y, h0, masks)[0], model.flat)
    assert_gradients_close(num, gflat)


@pytest.mark.parametrize("cell", CELLS)
def test_gradient_wrt_carried_state(cell):
    model, x, y, h0, _ = make_problem(cell, 2, N=2, T=3, V=4, H=3, seed=7)
    logits, fwd, _ = ref.model_forward(model.P, x, h0)
    _, dlogits = ref.softmax_xent(logits, y)
    G = model.layout.views(model.layout.zeros(np.float64))
    dstate = ref.model_backward(dlogits, model.P, G, x, h0, fwd)
    num = numeric_gradient(lambda: ref.forward_loss(model.P, x, y, h0)[0], h0.reshape(-1)).reshape(h0.shape)
    assert_gradients_close(num, dstate)


@pytest.mark.parametrize("cell", CELLS)
def test_carried_state_equals_one_long_sequence(cell):
    model, x, y, h0, _ = make_problem(cell, 2, N=3, T=8, V=6, H=4, seed=4)
    logits_long, _, state_long = ref.model_forward(model.P, x, h0)
    la, _, mid = ref.model_forward(model.P, x[:, :5], h0)
    lb, _, end = ref.model_forward(model.P, x[:, 5:], mid)
    np.testing.assert_allclose(np.concatenate([la, lb]), logits_long, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(end, state_long, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_step_equals_forward(cell):
    model, x, y, h0, _ = make_problem(cell, 2, N=2, T=5, V=6, H=3, seed=8)
    logits, _, state = ref.model_forward(model.P, x, h0)
    h = h0
    for t in range(5):
        h, lt = ref.step(model.P, h, x[:, t])
        np.testing.assert_allclose(lt, logits[t], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h, state, rtol=1e-12, atol=1e-12)


def test_one_layer_rnn_is_the_vanilla_rnn():
    model, x, y, h0, _ = make_problem("rnn", 1, N=2, T=4, V=5, H=3)
    hs = ref.rnn_forward(x, h0, model.P["Wxh"], model.P["Whh"], model.P["bh"])
    loss, _ = ref.softmax_xent(ref.affine_forward(hs, model.P["Why"], model.P["by"]), y)
    assert loss == pytest.approx(ref.forward_loss(model.P, x, y, h0)[0], rel=1e-14)


def test_lstm_forget_bias_and_inits():
    rng = np.random.default_rng(0)
    m = Model(10, 4, "float64", "lstm", 2).init(rng, 0.01)
    np.testing.assert_array_equal(m.P["bh"][4:8], 1.0)
    np.testing.assert_array_equal(m.P["bh1"][4:8], 1.0)
    assert np.all(m.P["bh"][:4] == 0) and np.all(m.P["bh"][8:] == 0)
    o = Model(10, 4, "float64", "gru", 1).init(rng, 0.01, "orthogonal")
    for k in range(3):
        block = o.P["Whh"][:, 4 * k:4 * (k + 1)]
        np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-12)
    n = Model(10, 4, "float64", "rnn", 1).init(np.random.default_rng(1), 0.01, "normal")
    assert 0.005 < n.P["Whh"].std() < 0.02
    # auto is xavier for every cell (benchmarks/init_choice.py measured it best for rnn)
    for cell in ("rnn", "lstm", "gru"):
        auto = Model(10, 4, "float64", cell, 1).init(np.random.default_rng(2), 0.01)
        xavier = Model(10, 4, "float64", cell, 1).init(np.random.default_rng(2), 0.01, "xavier")
        np.testing.assert_array_equal(auto.flat, xavier.flat)
        assert auto.P["Whh"].std() > 0.1


def test_dropout_masks_reproducible():
    a = make_masks(np.random.default_rng(3), 0.5, 2, 4, 3, 5, np.float32)
    b = make_masks(np.random.default_rng(3), 0.5, 2, 4, 3, 5, np.float32)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 4, 3, 5) and a.dtype == np.float32
    assert make_masks(np.random.default_rng(3), 0.0, 2, 4, 3, 5, np.float32) is None
