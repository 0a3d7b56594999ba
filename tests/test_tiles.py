"""kernels.tiles (register-tile products, packed panels), blas.gemm_split / one_thread and rnn.row_block: against
NumPy in float64, and the property the samplers rely on: a row computed among many has the bits it has alone."""

import numpy as np
import pytest

from fastrnn.kernels import blas
from fastrnn.kernels.rnn import row_block
from fastrnn.kernels.tiles import PANEL_VECTORS, TILE_ROWS, matmul_packed, matmul_tiles, pack, vector_width

# (R, K, M): whole row tiles and every count of rows left over (the target's tile, 4 to 8 rows); columns in whole
# panels, single vectors and a scalar tail
SHAPES = [(1, 1, 1), (1, 512, 512), (3, 7, 33), (4, 1, 16), (5, 100, 130), (9, 64, 65), (13, 33, 200)] + [
    (TILE_ROWS * 2 + r, 19, 77) for r in range(TILE_ROWS)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("R,K,M", SHAPES)
def test_products_match_numpy_and_each_row_alone(R, K, M, dtype):
    rng = np.random.default_rng(R * 1000 + K + M)
    a = rng.standard_normal((R, K)).astype(dtype)
    W = rng.standard_normal((K, M)).astype(dtype)
    want = a.astype(np.float64) @ W.astype(np.float64)
    tol = 1e-12 if dtype == np.float64 else 1e-5  # relative to the largest |entry|; float32 sums of up to 512 terms
    got_tiles, got_packed = np.full((R, M), np.nan, dtype), np.full((R, M), np.nan, dtype)
    matmul_tiles(got_tiles, a, W)
    matmul_packed(got_packed, a, pack(W))
    scale = np.abs(want).max()
    np.testing.assert_allclose(got_tiles, want, rtol=0, atol=tol * scale)
    assert np.array_equal(got_tiles, got_packed)  # the same chains of fused multiply-adds, packed or not
    alone = np.empty((1, M), dtype)
    for r in range(R):
        matmul_packed(alone, np.ascontiguousarray(a[r:r + 1]), pack(W))
        assert np.array_equal(alone[0], got_packed[r])


def test_views_with_a_row_stride_work():
    rng = np.random.default_rng(0)
    big = rng.standard_normal((3, 10, 40)).astype(np.float32)  # (T, N, H): hs[t, r0:r1] is a view
    W = rng.standard_normal((40, 24)).astype(np.float32)
    out = np.zeros((3, 10, 60), np.float32)
    view_out = out[1, 2:9, 5:29]  # a row stride of 60 and an offset
    matmul_tiles(view_out, big[2, 2:9], W)
    np.testing.assert_allclose(out[1, 2:9, 5:29], big[2, 2:9] @ W, rtol=1e-5, atol=1e-5)
    assert not out[1, 2:9, :5].any() and not out[1, 2:9, 29:].any() and not out[0].any()  # nothing else written


def test_pack_lays_columns_in_zero_padded_panels():
    W = np.arange(3 * 70, dtype=np.float64).reshape(3, 70)
    P = pack(W)
    width = PANEL_VECTORS * vector_width(np.float64)
    assert P.shape == (-(-70 // width), 3, width)
    flat = np.concatenate(list(P), axis=1)  # the panels side by side: (3, n * width)
    assert np.array_equal(flat[:, :70], W) and not flat[:, 70:].any()
    assert np.array_equal(pack(W.T.copy()), pack(np.asfortranarray(W.T)))  # any layout in


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True)])
def test_gemm_split_equals_gemm(trans_a, trans_b):
    rng = np.random.default_rng(1)
    M, N, K = 37, 100, 29
    A = rng.standard_normal((K, M) if trans_a else (M, K))
    B = rng.standard_normal((N, K) if trans_b else (K, N))
    want = (A.T if trans_a else A) @ (B.T if trans_b else B)
    for groups in (1, 2, 3, 7):
        C = np.ones((M, N))
        with blas.one_thread():
            blas.gemm_on(C, A, trans_a, B, trans_b, 2.0, 0.5, groups)
        np.testing.assert_allclose(C, 2.0 * want + 0.5, rtol=1e-12, atol=1e-12)


def test_one_thread_restores_the_blas_thread_count():
    if blas._THREADS is None:
        pytest.skip("NumPy's OpenBLAS not found: the kernels use the NumPy fallback, which has no thread count")
    get, _ = blas._THREADS
    before = get()
    with blas.one_thread():
        assert get() == 1
    assert get() == before


@pytest.mark.parametrize("N,groups", [(1, 1), (2, 2), (9, 2), (50, 2), (64, 2), (64, 3), (5, 4)])
def test_row_blocks_cover_the_rows_once(N, groups):
    blocks = [row_block(N, groups, q) for q in range(groups)]
    assert blocks[0][0] == 0 and blocks[-1][1] == N
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))  # contiguous, in order
    assert all(r0 <= r1 for r0, r1 in blocks)
    assert all(r1 % TILE_ROWS == 0 for _, r1 in blocks[:-1] if N >= TILE_ROWS * groups)  # on whole row tiles
