"""The passes over all positions: the softmax split over numba threads by blocks of rows gives the bits of the
serial pass whatever the number of blocks; layer 0's gradient scatter (vectorized over columns) sums in position
order, as the scalar loop does."""

import numpy as np
import pytest

from fastrnn.kernels.rnn import scatter_columns
from fastrnn.kernels.softmax_xent import softmax_xent, softmax_xent_split


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("GH", [7, 48, 130])
def test_the_scatter_of_the_input_gradients_sums_by_token_in_position_order(dtype, GH):
    rng = np.random.default_rng(GH)
    T, N, V = 9, 5, 11
    dz = rng.standard_normal((T, N, GH)).astype(dtype)
    x = rng.integers(0, V, (N, T)).astype(np.int32)
    w, b = np.full((V, GH), np.nan, dtype), np.full(GH, np.nan, dtype)
    scatter_columns(w, b, np.empty(GH), dz, x, 0, GH)
    # the same sums, one position at a time in position order
    want_w, want_acc = np.zeros((V, GH), dtype), np.zeros(GH)
    for t in range(T):
        for n in range(N):
            want_w[x[n, t]] += dz[t, n]
            want_acc += dz[t, n]
    assert w.tobytes() == want_w.tobytes() and b.tobytes() == want_acc.astype(dtype).tobytes()
    expect = np.zeros((V, GH))
    np.add.at(expect, x.T.reshape(-1), dz.reshape(T * N, GH).astype(np.float64))
    np.testing.assert_allclose(w, expect, rtol=1e-5, atol=1e-5)
    # a block of columns leaves the others alone
    w2, b2 = np.full((V, GH), 7, dtype), np.full(GH, 7, dtype)
    scatter_columns(w2, b2, np.empty(GH), dz, x, 0, GH // 2)
    assert w2[:, :GH // 2].tobytes() == w[:, :GH // 2].tobytes() and (w2[:, GH // 2:] == 7).all()
    assert (b2[GH // 2:] == 7).all()


@pytest.mark.parametrize("grad", [True, False])
def test_the_softmax_over_blocks_of_rows_has_the_serial_bits(grad):
    rng = np.random.default_rng(1)
    N, T, V = 6, 7, 13
    logits = rng.standard_normal((T * N, V)).astype(np.float32)
    by = rng.standard_normal(V).astype(np.float32)
    y = rng.integers(0, V, (N, T)).astype(np.int32)
    scale = np.float32(1.0 / (T * N))
    want, want_rows = logits.copy(), np.empty(T * N)
    want_loss = softmax_xent(want, want_rows, by, y, scale, grad)
    for groups in (2, 3, 5):
        got, rows = logits.copy(), np.empty(T * N)
        assert softmax_xent_split(got, rows, by, y, scale, grad, groups) == want_loss
        assert got.tobytes() == want.tobytes() and rows.tobytes() == want_rows.tobytes()
