"""The seed-style benchmark contender computes the same model as the reference (summed, not mean, loss)."""

import numpy as np

from benchmarks.seed_style import SeedRNN
from fastrnn import reference as ref
from fastrnn.params import Params


def test_seed_style_matches_reference():
    V, H, T = 7, 5, 9
    rnn = SeedRNN(V, H, seed=1)
    rng = np.random.default_rng(2)
    for p in rnn.params:
        p[...] = rng.standard_normal(p.shape) * 0.3
    x = rng.integers(0, V, T)
    y = rng.integers(0, V, T)
    h0 = rng.standard_normal((H, 1)) * 0.2
    loss, grads, h = rnn.loss_fun(list(x), list(y), h0)

    P = Params({"Wxh": rnn.Wxh.T.copy(), "Whh": rnn.Whh.T.copy(), "bh": rnn.bh[:, 0].copy(), "Why": rnn.Why.T.copy(),
                "by": rnn.by[:, 0].copy()}, "rnn", 1, H)
    G = {k: np.zeros_like(v) for k, v in P.items()}
    rloss, hT = ref.forward_backward(P, G, x[None].astype(np.int32), y[None].astype(np.int32), h0.T.copy())
    assert loss == np.float64(rloss * T) or abs(loss - rloss * T) < 1e-12
    np.testing.assert_allclose(h[:, 0], hT[0], rtol=1e-12)
    for seed_g, name in zip(grads, ["Wxh", "Whh", "Why", "bh", "by"]):
        expect = G[name].T * T if G[name].ndim == 2 else G[name][:, None] * T
        np.testing.assert_allclose(seed_g, expect, rtol=1e-10, atol=1e-14)
