"""The NumPy reference against central finite differences in float64."""

import numpy as np
import pytest

from fastrnn import reference as ref
from fastrnn.params import model_layout


def make_problem(N, T, V, H, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    layout = model_layout("rnn", V, H)
    flat = layout.init(rng, np.float64, scale)
    P = layout.views(flat)
    P["bh"][...] = rng.standard_normal(H) * 0.1
    P["by"][...] = rng.standard_normal(V) * 0.1
    x = rng.integers(0, V, size=(N, T)).astype(np.int32)
    y = rng.integers(0, V, size=(N, T)).astype(np.int32)
    h0 = rng.standard_normal((N, H)) * 0.5
    return layout, flat, P, x, y, h0


def rel_error(a, b):
    return np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b)))


@pytest.mark.parametrize("N,T,V,H", [(1, 1, 3, 2), (1, 4, 5, 3), (3, 1, 4, 5), (2, 6, 7, 4), (4, 3, 6, 8)])
def test_gradients_match_finite_differences(N, T, V, H):
    layout, flat, P, x, y, h0 = make_problem(N, T, V, H)
    gflat = layout.zeros(np.float64)
    G = layout.views(gflat)
    ref.forward_backward(P, G, x, y, h0)

    def loss_at():
        return ref.forward_loss(P, x, y, h0)[0]

    eps = 1e-5
    num = np.zeros_like(flat)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        lp = loss_at()
        flat[i] = old - eps
        lm = loss_at()
        flat[i] = old
        num[i] = (lp - lm) / (2 * eps)
    mask = np.abs(num) + np.abs(gflat) > 1e-9  # entries whose gradient is exactly zero (unused tokens) compare by value
    assert np.all(np.abs(num[~mask] - gflat[~mask]) < 1e-10)
    assert rel_error(num[mask], gflat[mask]) < 1e-6


def test_gradient_wrt_carried_state():
    N, T, V, H = 2, 5, 4, 3
    layout, flat, P, x, y, h0 = make_problem(N, T, V, H, seed=3)
    hs = ref.rnn_forward(x, h0, P["Wxh"], P["Whh"], P["bh"])
    logits = ref.affine_forward(hs, P["Why"], P["by"])
    _, dlogits = ref.softmax_xent(logits, y)
    G = layout.views(layout.zeros(np.float64))
    dhs = ref.affine_backward(dlogits, hs, P["Why"], G["Why"], G["by"])
    dh0 = ref.rnn_backward(dhs, x, h0, hs, P["Whh"], G["Wxh"], G["Whh"], G["bh"])
    eps = 1e-5
    num = np.zeros_like(h0)
    for idx in np.ndindex(h0.shape):
        hp, hm = h0.copy(), h0.copy()
        hp[idx] += eps
        hm[idx] -= eps
        num[idx] = (ref.forward_loss(P, x, y, hp)[0] - ref.forward_loss(P, x, y, hm)[0]) / (2 * eps)
    assert rel_error(num, dh0) < 1e-6


def test_carried_state_equals_one_long_sequence():
    N, T, V, H = 3, 8, 5, 6
    layout, flat, P, x, y, h0 = make_problem(N, 2 * T, V, H, seed=7)
    hs_long = ref.rnn_forward(x, h0, P["Wxh"], P["Whh"], P["bh"])
    hs_a = ref.rnn_forward(x[:, :T], h0, P["Wxh"], P["Whh"], P["bh"])
    hs_b = ref.rnn_forward(x[:, T:], hs_a[-1], P["Wxh"], P["Whh"], P["bh"])
    np.testing.assert_array_equal(np.concatenate([hs_a, hs_b]), hs_long)


def test_softmax_xent_uniform_logits_give_log_v():
    V = 65
    logits = np.zeros((4, 3, V))
    y = np.zeros((3, 4), dtype=np.int32)
    loss, d = ref.softmax_xent(logits, y)
    assert loss == pytest.approx(np.log(V))
    np.testing.assert_allclose(d.sum(axis=-1), 0, atol=1e-15)


def test_clip_gradients():
    g = np.array([3.0, -4.0, 0.0])
    norm = ref.clip_gradients(g, clip=0, max_norm=1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(g, [0.6, -0.8, 0.0])
    g = np.array([10.0, -0.5, -7.0])
    ref.clip_gradients(g, clip=5.0, max_norm=0)
    np.testing.assert_array_equal(g, [5.0, -0.5, -5.0])


def test_adam_first_step_moves_each_weight_by_lr():
    p = np.zeros(3)
    g = np.array([0.5, -2.0, 1e-3])
    m, v = np.zeros(3), np.zeros(3)
    ref.adam_update(p, g, m, v, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-12, t=1)
    np.testing.assert_allclose(p, [-0.01, 0.01, -0.01], rtol=1e-6)


def test_adagrad_matches_min_char_rnn():
    p = np.array([1.0, 2.0])
    g = np.array([0.3, -0.1])
    mem = np.array([0.5, 0.0])
    expect_mem = mem + g * g
    expect_p = p - 0.1 * g / np.sqrt(expect_mem + 1e-8)
    ref.adagrad_update(p, g, mem, lr=0.1, eps=1e-8)
    np.testing.assert_allclose(p, expect_p)
    np.testing.assert_allclose(mem, expect_mem)
