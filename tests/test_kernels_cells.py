"""The numba backend for every model (rnn, gru, lstm, lnlstm cells; 1 and 2 layers; dropout masks) against the NumPy
reference: loss, every gradient, the new carried state, evaluation and generation steps."""

import numpy as np
import pytest

from fastrnn import kernels as K
from fastrnn import reference as ref
from fastrnn.dropout import make_masks
from fastrnn.kernels import dispatch
from fastrnn.model import Model
from fastrnn.params import arch_of, state_size

CELLS = ("rnn", "gru", "lstm", "lnlstm")


def make_problem(cell, L, N, T, V, H, dtype, seed=0, dropout=0.0):
    rng = np.random.default_rng(seed)
    model = Model(V, H, dtype, cell, L).init(rng, 0.5, "xavier")
    model.flat[...] += (rng.standard_normal(model.flat.size) * 0.1).astype(dtype)  # biases non-zero too
    x = rng.integers(0, V, size=(N, T)).astype(np.int32)
    y = rng.integers(0, V, size=(N, T)).astype(np.int32)
    h0 = (rng.standard_normal((N, state_size(cell, H, L))) * 0.5).astype(dtype)  # a non-zero carried state
    masks = make_masks(rng, dropout, L, T, N, H, dtype)
    return model, x, y, h0, masks


def tol(dtype):
    return 1e-10 if dtype == np.float64 else 1e-4


def assert_close(got, want, dtype, what=""):
    """Within tol(dtype) relative to the largest entry of the reference array."""
    assert got.shape == want.shape and got.dtype == want.dtype, what
    scale = max(float(np.abs(want).max()), 1e-30) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=tol(dtype) * scale, err_msg=what)


# (N, T, V, H, way): the per-step products as hand loops, BLAS or tiles with the rows split over the threads (the
# plan made for the call, varied); the tiles shapes have row blocks of 4 and leftovers, and columns in whole
# vectors and a scalar tail (H = 21: 21, 63 or 84 columns)
SHAPES = [(3, 5, 7, 5, "loops"), (1, 1, 7, 5, "loops"), (4, 6, 11, 32, "blas"), (1, 3, 7, 32, "loops"),
          (9, 5, 7, 21, "tiles"), (2, 3, 7, 16, "tiles")]
CASES = [(cell, L, dropout) for cell in CELLS for L in (1, 2) for dropout in (0.0, 0.4)]


def ids(case):
    cell, L, dropout = case
    return f"{cell}-L{L}" + ("-dropout" if dropout else "")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,T,V,H,way", SHAPES)
@pytest.mark.parametrize("cell,L,dropout", CASES, ids=[ids(c) for c in CASES])
def test_forward_backward_and_loss_match_reference(cell, L, dropout, N, T, V, H, way, dtype):
    model, x, y, h0, masks = make_problem(cell, L, N, T, V, H, dtype, dropout=dropout)
    assert arch_of(model.P) == (cell, L, H) and (masks is None) == (dropout == 0)
    plan = dispatch.variant(K.plan_for(model.P, N, T, masks is not None), loops=way == "loops",
                            tiles=way == "tiles")
    assert plan.tiles == (way == "tiles")
    views = model.layout.views
    g_ref, g_nb = model.layout.zeros(dtype), model.layout.zeros(dtype) + 7  # overwritten, not accumulated
    loss_ref, s_ref = ref.forward_backward(model.P, views(g_ref), x, y, h0, masks)
    loss_nb, s_nb = K.forward_backward(model.P, views(g_nb), x, y, h0, masks, plan=plan)
    assert isinstance(loss_nb, float)
    assert loss_nb == pytest.approx(loss_ref, rel=tol(dtype))
    assert_close(s_nb, s_ref, dtype, "new state")
    for name in model.layout.names:
        assert_close(views(g_nb)[name], views(g_ref)[name], dtype, name)
    loss_ref, s_ref = ref.forward_loss(model.P, x, y, h0, masks)
    loss_nb, s_nb = K.forward_loss(model.P, x, y, h0, masks, plan=plan)
    assert loss_nb == pytest.approx(loss_ref, rel=tol(dtype))
    assert_close(s_nb, s_ref, dtype, "new state (forward_loss)")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,H", [(1, 5), (3, 5), (2, 32)])
@pytest.mark.parametrize("cell,L", [(c, L) for c in CELLS for L in (1, 2)])
def test_step_matches_reference(cell, L, N, H, dtype):
    model, x, y, h0, _ = make_problem(cell, L, N, 4, 7, H, dtype, seed=2)
    s_ref, s_nb = h0, h0
    for t in range(4):  # several steps, each from the previous state
        s_ref, l_ref = ref.step(model.P, s_ref, x[:, t])
        s_nb, l_nb = K.step(model.P, s_nb, x[:, t])
        assert l_nb.shape == (N, 7) and s_nb.shape == h0.shape
        assert_close(l_nb, l_ref, dtype, f"logits at step {t}")
        assert_close(s_nb, s_ref, dtype, f"state at step {t}")


@pytest.mark.parametrize("cell", CELLS)
def test_step_agrees_with_forward(cell):
    model, x, y, h0, _ = make_problem(cell, 2, 2, 6, 7, 8, np.float64, seed=3)
    s = h0
    for t in range(6):
        s, _ = K.step(model.P, s, x[:, t])
    np.testing.assert_allclose(s, K.forward_loss(model.P, x, y, h0)[1], rtol=0, atol=1e-13)


@pytest.mark.parametrize("cell", CELLS)
def test_two_layer_carried_state_equals_one_long_sequence(cell):
    N, T = 3, 8
    model, x, y, h0, _ = make_problem(cell, 2, N, 2 * T, 7, 12, np.float64, seed=7)
    loss_long, s_long = K.forward_loss(model.P, x, y, h0)
    loss_a, s_a = K.forward_loss(model.P, x[:, :T], y[:, :T], h0)
    loss_b, s_b = K.forward_loss(model.P, x[:, T:], y[:, T:], s_a)
    np.testing.assert_allclose(s_b, s_long, rtol=0, atol=1e-14)
    assert (loss_a + loss_b) / 2 == pytest.approx(loss_long, rel=1e-13)
    g = model.layout.zeros(np.float64)
    _, s_c = K.forward_backward(model.P, model.layout.views(g), x[:, :T], y[:, :T], h0)
    _, s_d = K.forward_backward(model.P, model.layout.views(g), x[:, T:], y[:, T:], s_c)
    np.testing.assert_allclose(s_d, s_long, rtol=0, atol=1e-14)


@pytest.mark.parametrize("cell,L", [("gru", 1), ("lstm", 2), ("rnn", 2)])
def test_same_inputs_same_bits(cell, L):
    model, x, y, h0, masks = make_problem(cell, L, 4, 6, 11, 32, np.float32, dropout=0.3)
    runs = []
    for _ in range(2):
        g = model.layout.zeros(np.float32)
        loss, s = K.forward_backward(model.P, model.layout.views(g), x, y, h0, masks)
        runs.append((loss, s, g))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][2], runs[1][2])


def test_noncontiguous_inputs_and_gradients():
    model, x, y, h0, masks = make_problem("lstm", 2, 3, 10, 7, 6, np.float64, dropout=0.3)
    xs, ys, ms = x[:, ::2], y[:, 1::2], np.asfortranarray(masks[:, ::2])  # strided views
    g_ref = model.layout.zeros(np.float64)
    loss_ref, s_ref = ref.forward_backward(model.P, model.layout.views(g_ref), xs, ys, h0, ms)
    G = {k: np.zeros(v.shape[::-1]).T for k, v in model.layout.views(g_ref).items()}  # Fortran-ordered gradients
    loss_nb, s_nb = K.forward_backward(model.P, G, xs, ys, np.asfortranarray(h0), ms)
    assert loss_nb == pytest.approx(loss_ref, rel=1e-12)
    for name, want in model.layout.views(g_ref).items():
        np.testing.assert_allclose(G[name], want, rtol=0, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("cell,L", [("gru", 1), ("lstm", 2), ("rnn", 2), ("rnn", 1)])
def test_out_of_range_tokens_raise(cell, L):
    model, x, y, h0, masks = make_problem(cell, L, 2, 3, 7, 5, np.float64, dropout=0.5)
    g = model.layout.views(model.layout.zeros(np.float64))
    bad_x, bad_y = x.copy(), y.copy()
    bad_x[1, 2] = 7
    bad_y[0, 0] = -1
    with pytest.raises(IndexError):
        K.forward_loss(model.P, bad_x, y, h0)
    with pytest.raises(IndexError):
        K.forward_backward(model.P, g, x, bad_y, h0, masks)
    with pytest.raises(IndexError):
        K.step(model.P, h0, np.array([0, 7], np.int32))
    with pytest.raises(IndexError):
        K.step(model.P, h0, np.array([-1, 0], np.int32))


def test_nan_propagates_to_the_loss():
    model, x, y, h0, _ = make_problem("lstm", 2, 2, 4, 7, 5, np.float32)
    model.P["Whh1"][1, 2] = np.nan
    g = model.layout.zeros(np.float32)
    assert np.isnan(K.forward_backward(model.P, model.layout.views(g), x, y, h0)[0])
    assert np.isnan(K.forward_loss(model.P, x, y, h0)[0])
