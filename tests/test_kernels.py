"""The numba backend (fastrnn.kernels) against the NumPy reference, kernel by kernel."""

import numba
import numpy as np
import pytest

from fastrnn import kernels as K
from fastrnn import reference as ref
from fastrnn.kernels import dispatch, mathfn
from fastrnn.kernels.pools import set_threads
from fastrnn.params import model_layout

NAMES = ("Wxh", "Whh", "bh", "Why", "by")


def make_problem(N, T, V, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    layout = model_layout("rnn", V, H)
    flat = layout.init(rng, dtype, 1.0 / np.sqrt(H))
    P = layout.views(flat)
    P["bh"][...] = rng.standard_normal(H) * 0.1
    P["by"][...] = rng.standard_normal(V) * 0.1
    x = rng.integers(0, V, size=(N, T)).astype(np.int32)
    y = rng.integers(0, V, size=(N, T)).astype(np.int32)
    h0 = (rng.standard_normal((N, H)) * 0.5).astype(dtype)
    return layout, flat, P, x, y, h0


def tol(dtype):
    return 1e-10 if dtype == np.float64 else 1e-4


# shapes (N, T, V, H): T=1, N=1, H not a multiple of 8, V=65. Their plans without measurement (dispatch.py):
# hand-loop recurrences for N <= 2 and for (3, 7, 65, 13), (4, 1, 11, 8); BLAS for (16, 5, 65, 96) and
# (3, 4, 30, 160)
SHAPES = [(1, 1, 65, 7), (1, 12, 65, 128), (3, 7, 65, 13), (4, 1, 11, 8), (2, 9, 65, 33), (16, 5, 65, 96),
          (1, 4, 30, 300), (2, 3, 65, 200), (3, 4, 30, 160)]


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    yield set_threads(request.param)
    set_threads(2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,T,V,H", SHAPES)
def test_forward_backward_matches_reference(N, T, V, H, dtype, changes=None):
    """changes: None, or a dispatch.variant of the call's plan (loops=..., positions=...)."""
    layout, flat, P, x, y, h0 = make_problem(N, T, V, H, dtype)
    plan = None if changes is None else dispatch.variant(K.plan_for(P, N, T), **changes)
    g_ref, g_nb = layout.zeros(dtype), layout.zeros(dtype) + 7  # overwritten, not accumulated
    loss_ref, h_ref = ref.forward_backward(P, layout.views(g_ref), x, y, h0)
    loss_nb, h_nb = K.forward_backward(P, layout.views(g_nb), x, y, h0, plan=plan)
    assert isinstance(loss_nb, float) and h_nb.dtype == dtype and h_nb.shape == (N, H)
    assert loss_nb == pytest.approx(loss_ref, rel=tol(dtype))
    np.testing.assert_allclose(h_nb, h_ref, rtol=0, atol=tol(dtype))
    scale = np.abs(g_ref).max()
    for name in NAMES:
        a, b = layout.views(g_nb)[name], layout.views(g_ref)[name]
        np.testing.assert_allclose(a, b, rtol=0, atol=tol(dtype) * scale, err_msg=name)


@pytest.mark.parametrize("loops", [True, False], ids=["hand-loops", "blas"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_both_recurrence_paths(loops, dtype):
    test_forward_backward_matches_reference(3, 6, 65, 21, dtype, dict(loops=loops))


def test_plan_rules_without_measurement():
    def way(N, H):
        p = dispatch.plan("rnn", 1, N, 50, H, 65, False, 1, np.float32)
        assert p.positions == "blas"
        return "loops" if p.loops else "blas"

    assert [way(N, H) for N, H in [(1, 128), (2, 128), (1, 256), (4, 128), (16, 64), (1, 512), (2, 512), (3, 512),
                                   (64, 512)]] == ["loops"] * 7 + ["blas"] * 2
    assert [way(N, H) for N, _, _, H in SHAPES] == ["loops"] * 5 + ["blas", "loops", "loops", "blas"]


WAYS = [dict(loops=False), dict(loops=True)]


@pytest.mark.parametrize("changes", WAYS, ids=lambda c: "loops" if c["loops"] else "blas")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_way_matches_reference(changes, dtype, threads):
    test_forward_backward_matches_reference(2, 7, 65, 40, dtype, changes)
    test_forward_backward_matches_reference(5, 3, 30, 24, dtype, changes)
    test_forward_loss_matches_reference(2, 7, 65, 40, dtype, changes)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (50, 65, 128), (128, 128, 50), (7, 300, 200), (200, 3, 1000)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_serial(M, N, K, trans_a, trans_b, dtype):
    from fastrnn.kernels.blas import gemm_serial

    rng = np.random.default_rng(4)
    A = rng.standard_normal((K + 3, M + 2) if trans_a else (M + 3, K + 2)).astype(dtype)
    B = rng.standard_normal((N + 1, K + 1) if trans_b else (K + 1, N + 1)).astype(dtype)
    A = A[1:K + 1, 2:] if trans_a else A[1:M + 1, 2:]  # row-strided views
    B = B[1:, :K] if trans_b else B[1:, :N]
    C0 = rng.standard_normal((M, N)).astype(dtype)
    want = 0.5 * ((A.T if trans_a else A) @ (B.T if trans_b else B)) + 2.0 * C0.astype(np.float64)
    got = {}
    try:
        for n in (1, 2):
            set_threads(n)
            C = C0.copy()
            gemm_serial(C, A, trans_a, B, trans_b, 0.5, 2.0)
            got[n] = C
    finally:
        set_threads(2)
    np.testing.assert_allclose(got[1], want, rtol=0, atol=tol(dtype) * np.abs(want).max())
    np.testing.assert_array_equal(got[1], got[2])  # one thread whatever the setting: same bits


def test_noncontiguous_tokens_and_gradients():
    N, T, V, H = 3, 5, 65, 10
    layout, flat, P, x, y, h0 = make_problem(N, 2 * T, V, H, np.float64)
    xs, ys = x[:, ::2], y[:, 1::2]  # (N, T) strided views
    g_ref = layout.zeros(np.float64)
    loss_ref, h_ref = ref.forward_backward(P, layout.views(g_ref), xs, ys, h0)
    G = {k: np.zeros(v.shape[::-1]).T for k, v in layout.views(g_ref).items()}  # Fortran-ordered gradients
    loss_nb, h_nb = K.forward_backward(P, G, xs, ys, h0)
    assert loss_nb == pytest.approx(loss_ref, rel=1e-12)
    for name in NAMES:
        np.testing.assert_allclose(G[name], layout.views(g_ref)[name], atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,T,V,H", SHAPES[:3] + SHAPES[-2:])
def test_forward_loss_matches_reference(N, T, V, H, dtype, changes=None):
    layout, flat, P, x, y, h0 = make_problem(N, T, V, H, dtype, seed=1)
    plan = None if changes is None else dispatch.variant(K.plan_for(P, N, T), **changes)
    loss_ref, h_ref = ref.forward_loss(P, x, y, h0)
    loss_nb, h_nb = K.forward_loss(P, x, y, h0, plan=plan)
    assert loss_nb == pytest.approx(loss_ref, rel=tol(dtype))
    np.testing.assert_allclose(h_nb, h_ref, atol=tol(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,H", [(1, 7), (1, 128), (5, 33)])
def test_step_matches_reference(N, H, dtype):
    layout, flat, P, x, y, h0 = make_problem(N, 1, 65, H, dtype, seed=2)
    token = x[:, 0].copy()
    h_ref, l_ref = ref.step(P, h0, token)
    h_nb, l_nb = K.step(P, h0, token)
    assert h_nb.shape == (N, H) and l_nb.shape == (N, 65) and l_nb.dtype == dtype
    np.testing.assert_allclose(h_nb, h_ref, atol=tol(dtype))
    np.testing.assert_allclose(l_nb, l_ref, atol=tol(dtype) * np.abs(l_ref).max())


def test_step_agrees_with_forward():
    layout, flat, P, x, y, h0 = make_problem(2, 6, 65, 16, np.float64, seed=3)
    h = h0
    for t in range(6):
        h, _ = K.step(P, h, x[:, t])
    np.testing.assert_allclose(h, K.forward_loss(P, x, y, h0)[1], atol=1e-13)


def test_carried_state_equals_one_long_sequence():
    N, T, V, H = 3, 8, 65, 12
    layout, flat, P, x, y, h0 = make_problem(N, 2 * T, V, H, np.float64, seed=7)
    loss_long, h_long = K.forward_loss(P, x, y, h0)
    loss_a, h_a = K.forward_loss(P, x[:, :T], y[:, :T], h0)
    loss_b, h_b = K.forward_loss(P, x[:, T:], y[:, T:], h_a)
    np.testing.assert_allclose(h_b, h_long, rtol=0, atol=1e-14)
    assert (loss_a + loss_b) / 2 == pytest.approx(loss_long, rel=1e-13)
    g = layout.zeros(np.float64)
    _, h_c = K.forward_backward(P, layout.views(g), x[:, :T], y[:, :T], h0)
    _, h_d = K.forward_backward(P, layout.views(g), x[:, T:], y[:, T:], h_c)
    np.testing.assert_allclose(h_d, h_long, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("clip,max_norm", [(0.0, 0.0), (0.05, 0.0), (0.0, 1.0), (0.05, 1.0), (0.05, 1e9)])
@pytest.mark.parametrize("size", [1000, 70_001])
def test_clip_gradients(clip, max_norm, size, dtype):
    g = (np.random.default_rng(0).standard_normal(size) * 0.1).astype(dtype)
    g_ref, g_nb = g.copy(), g.copy()
    n_ref = ref.clip_gradients(g_ref, clip, max_norm)
    n_nb = K.clip_gradients(g_nb, clip, max_norm)
    assert isinstance(n_nb, float) and n_nb == pytest.approx(n_ref, rel=1e-12)
    np.testing.assert_allclose(g_nb, g_ref, rtol=10 * np.finfo(dtype).eps, atol=0)


def test_clip_gradients_propagates_nan():
    g = np.ones(100, np.float32)
    g[3] = np.nan
    assert np.isnan(K.clip_gradients(g, 0.5, 1.0))
    assert np.isnan(g[3]) and np.all(g[~np.isnan(g)] <= 0.5)


OPTIMIZERS = {
    "sgd": (("vel",), dict(lr=0.1, momentum=0.9)),
    "adagrad": (("mem",), dict(lr=0.1, eps=1e-8)),
    "rmsprop": (("ms",), dict(lr=0.01, decay=0.95, eps=1e-8)),
    "adam": (("m", "v"), dict(lr=0.002, beta1=0.9, beta2=0.999, eps=1e-8)),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("size", [1000, 70_001])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_updates(name, size, dtype):
    states, hyper = OPTIMIZERS[name]
    rng = np.random.default_rng(1)
    p = rng.standard_normal(size).astype(dtype)
    s = {k: np.abs(rng.standard_normal(size)).astype(dtype) * 0.01 for k in states}
    p_ref, p_nb = p.copy(), p.copy()
    s_ref = {k: v.copy() for k, v in s.items()}
    s_nb = {k: v.copy() for k, v in s.items()}
    fn_ref, fn_nb = getattr(ref, f"{name}_update"), getattr(K, f"{name}_update")
    for t in range(1, 4):
        g = (rng.standard_normal(size) * 0.1).astype(dtype)
        extra = dict(t=t) if name == "adam" else {}
        fn_ref(p_ref, g, *s_ref.values(), **hyper, **extra)
        fn_nb(p_nb, g, *s_nb.values(), **hyper, **extra)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(p_nb, p_ref, rtol=rtol, atol=rtol * np.abs(p_ref).max())  # rounding of the update
    for k in states:
        np.testing.assert_allclose(s_nb[k], s_ref[k], rtol=rtol, atol=rtol * np.abs(s_ref[k]).max())


def run_training_step(dtype, N=8, T=6, V=65, H=40, seed=5):
    layout, flat, P, x, y, h0 = make_problem(N, T, V, H, dtype, seed=seed)
    g = layout.zeros(dtype)
    m, v = layout.zeros(dtype), layout.zeros(dtype)
    losses = []
    h = h0
    for t in range(1, 4):
        loss, h = K.forward_backward(P, layout.views(g), x, y, h)
        K.clip_gradients(g, 5.0, 1.0)
        K.adam_update(flat, g, m, v, 0.01, 0.9, 0.999, 1e-8, t)
        losses.append(loss)
    return np.array(losses), flat.copy(), h


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_threads_agree_and_runs_are_bit_identical(dtype):
    results = {}
    try:
        for n in (1, 2):
            set_threads(n)
            results[n] = [run_training_step(dtype) for _ in range(2)]
            for a, b in zip(*results[n]):
                np.testing.assert_array_equal(a, b)  # same thread count: same bits
    finally:
        set_threads(2)
    for a, b in zip(results[1][0], results[2][0]):
        np.testing.assert_allclose(a, b, rtol=tol(dtype) * 10, atol=tol(dtype))


def test_set_threads_caps_at_numba_threads():
    try:
        assert set_threads(1) == 1 and numba.get_num_threads() == 1
        assert set_threads(10_000) == numba.config.NUMBA_NUM_THREADS
    finally:
        set_threads(2)


@pytest.mark.parametrize("where", ["Whh", "Wxh", "by", "h0"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_propagates_to_the_loss(where, dtype):
    layout, flat, P, x, y, h0 = make_problem(4, 5, 65, 24, dtype)
    if where == "h0":
        h0[1, 2] = np.nan
    elif where == "Wxh":
        P["Wxh"][x[0, 0], 3] = np.nan
    else:
        P[where].reshape(-1)[1] = np.nan
    g = layout.zeros(dtype)
    loss, _ = K.forward_backward(P, layout.views(g), x, y, h0)
    assert np.isnan(loss)
    assert np.isnan(K.forward_loss(P, x, y, h0)[0])
    assert np.isnan(K.clip_gradients(g, 5.0, 1.0))


def test_out_of_range_tokens_raise():
    layout, flat, P, x, y, h0 = make_problem(2, 3, 65, 8, np.float64)
    x[1, 2] = 65
    with pytest.raises(IndexError):
        K.forward_loss(P, x, y, h0)
    with pytest.raises(IndexError):
        K.step(P, h0, np.array([0, -1], np.int32))


# ---------------------------------------------------------------------------------------------------------------
# the float32 tanh/exp approximations


@numba.njit
def _map_tanh(out, x):
    for i in range(x.shape[0]):
        out[i] = mathfn.tanh(x[i])


@numba.njit
def _map_exp(out, x):
    for i in range(x.shape[0]):
        out[i] = mathfn.exp(x[i])


def ulps(got, x, fn):
    exact = fn(x.astype(np.float64))
    return np.abs(got.astype(np.float64) - exact) / np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)


def special_values():
    tiny = np.geomspace(1e-45, 1e-3, 2000)
    return np.concatenate([tiny, -tiny, [0.0, -0.0, np.finfo(np.float32).tiny, 3e38, -3e38]]).astype(np.float32)


def test_tanh_approximation_float32():
    x = np.concatenate([np.linspace(-30, 30, 600_001), np.geomspace(1e-3, 30, 20_000), special_values()])
    x = np.concatenate([x, -x]).astype(np.float32)
    out = np.empty_like(x)
    _map_tanh(out, x)
    assert ulps(out, x, np.tanh).max() <= 6
    inf = np.array([np.inf, -np.inf, np.nan, 0.0], np.float32)
    _map_tanh(out[:4], inf)
    assert out[0] == 1 and out[1] == -1 and np.isnan(out[2]) and out[3] == 0
    den = np.array([1e-40, -1e-42], np.float32)
    _map_tanh(out[:2], den)
    np.testing.assert_array_equal(out[:2], den)  # denormals pass through


def test_exp_approximation_float32():
    x = np.concatenate([np.linspace(-87.3, 88.7, 800_001), special_values()]).astype(np.float32)
    x = x[(x > -87.33) & (x < 88.72)]
    out = np.empty_like(x)
    _map_exp(out, x)
    assert ulps(out, x, np.exp).max() <= 5
    low = np.linspace(-200, -87.34, 1001).astype(np.float32)
    out = np.empty_like(low)
    _map_exp(out, low)
    assert np.all(out >= 0) and np.all(out <= np.float32(1.2e-38))  # the exact values are denormal or zero
    edge = np.array([np.inf, -np.inf, np.nan, 0.0, 89.0, -1e30], np.float32)
    out = np.empty_like(edge)
    _map_exp(out, edge)
    assert out[0] == np.inf and out[1] == 0 and np.isnan(out[2]) and out[3] == 1 and out[4] == np.inf and out[5] == 0


def test_float64_math_is_numpys():
    x = np.linspace(-30, 30, 10_001)
    out = np.empty_like(x)
    _map_tanh(out, x)
    np.testing.assert_allclose(out, np.tanh(x), rtol=1e-15, atol=1e-300)
    _map_exp(out, x)
    np.testing.assert_allclose(out, np.exp(x), rtol=1e-15)


BITS_SCRIPT = """
import hashlib, numpy as np
import fastrnn.kernels as kb
from fastrnn.model import Model
out = []
for cell, layers, dtype in (("rnn", 1, "float32"), ("lstm", 1, "float32"), ("gru", 2, "float64")):
    m = Model(20, 24, dtype, cell, layers).init(np.random.default_rng(0), 0.1)
    g = m.layout.zeros(m.dtype); G = m.layout.views(g)
    mm, vv = m.layout.zeros(m.dtype), m.layout.zeros(m.dtype)
    rng = np.random.default_rng(1)
    h = m.zero_state(5)
    for t in range(1, 4):
        x = rng.integers(0, 20, (5, 7), dtype=np.int32); y = rng.integers(0, 20, (5, 7), dtype=np.int32)
        loss, h = kb.forward_backward(m.P, G, x, y, h)
        kb.clip_gradients(g, 5.0, 0.0)
        kb.adam_update(m.flat, g, mm, vv, 2e-3, 0.9, 0.999, 1e-8, t)
    out.append(hashlib.sha256(m.flat.tobytes() + np.asarray(h).tobytes()).hexdigest())
print(" ".join(out))
"""


def test_freshly_compiled_and_cached_kernels_give_the_same_bits(tmp_path):
    """Three training steps of an rnn, an lstm (float32) and a 2-layer gru (float64) in a process that compiles
    every kernel into an empty numba cache, then in one that loads them from it: the same parameters and state,
    bit for bit (fastmath flags that differ between the two are kept out of jit.FASTMATH)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), FASTRNN_CALIBRATE="0")
    runs = [subprocess.run([sys.executable, "-c", BITS_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr + runs[1].stderr
    assert any((tmp_path / "numba").rglob("*.nbi"))  # the first process did write the cache the second loaded
    assert runs[0].stdout == runs[1].stdout
