"""The lab's two-thread pipelined step for small batches (benchmarks/lab/pair.py), its synchronisation (sync.py)
and the chooser between its two ways (chooser.py), against the NumPy reference."""

import numba
import numpy as np
import pytest

from fastrnn import kernels as K
from fastrnn import reference as ref
from benchmarks.lab import chooser, pair, sync
from benchmarks.lab.pair import PairStep
from fastrnn.kernels.pools import set_threads
from test_kernels import NAMES, make_problem, tol

# (N, T, V, H): T not a multiple of the side's chunk (8 rows), a chunk of 3 steps (N=3), N=4 = PAIR_ROWS, T=1, H
# not a multiple of 8, large H (N*H*H above SMALL_WORK: BLAS threads for the position products)
SHAPES = [(1, 13, 65, 24), (3, 5, 30, 17), (4, 6, 65, 32), (1, 1, 65, 7), (2, 9, 11, 40), (1, 7, 30, 300)]




@pytest.fixture
def two_threads():
    yield set_threads(2)
    set_threads(2)


def _kernel_args(layout, P, x, y, h0, grads=None):
    """Arguments of pair.lm_forward_backward_pair after `sync` (fresh workspace and gradients)."""
    N, T = x.shape
    V, H = P["Wxh"].shape
    dtype = P["Whh"].dtype
    hs = np.empty((T + 1, N, H), dtype)
    hs[0] = h0
    G = grads if grads is not None else [np.full(P[k].shape, 7, dtype) for k in NAMES]
    ws = [hs, np.empty((T * N, V), dtype), np.empty((T, N, H), dtype), np.empty((N, H), dtype),
          np.empty(max(H, V)), np.empty(T * N)]
    params = [np.ascontiguousarray(P[k]) for k in NAMES]
    return G, [*G, *ws, x, y, *params, dtype.type(1.0 / (T * N))]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,T,V,H", SHAPES)
def test_pair_path_matches_reference(N, T, V, H, dtype, two_threads):
    layout, flat, P, x, y, h0 = make_problem(N, T, V, H, dtype)
    step = PairStep()
    g_ref, g_nb = layout.zeros(dtype), layout.zeros(dtype) + 7  # overwritten, not accumulated
    loss_ref, h_ref = ref.forward_backward(P, layout.views(g_ref), x, y, h0)
    loss_nb, h_nb = step(P, layout.views(g_nb), x, y, h0)
    assert loss_nb == pytest.approx(loss_ref, rel=tol(dtype))
    np.testing.assert_allclose(h_nb, h_ref, rtol=0, atol=tol(dtype))
    scale = np.abs(g_ref).max()
    for name in NAMES:
        np.testing.assert_allclose(layout.views(g_nb)[name], layout.views(g_ref)[name], rtol=0,
                                   atol=tol(dtype) * scale, err_msg=name)
    loss_only, h_only = step(P, None, x, y, h0, grad=False)
    assert loss_only == pytest.approx(loss_ref, rel=tol(dtype))
    np.testing.assert_allclose(h_only, h_ref, rtol=0, atol=tol(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_thread_does_both_roles_with_the_same_bits(dtype, two_threads):
    """Two threads, the roles in turn on one thread (join's fallback, as a threading layer that runs the prange
    iterations one after the other would), and lm_forward_backward_alone: the same numbers, bit for bit."""
    layout, flat, P, x, y, h0 = make_problem(2, 11, 65, 48, dtype)
    results = []
    for threads, fn in ((2, pair.lm_forward_backward_pair), (1, pair.lm_forward_backward_pair),
                        (2, pair.lm_forward_backward_alone)):
        set_threads(threads)
        state = np.zeros(sync.SYNC_SIZE, np.int64)
        G, args = _kernel_args(layout, P, x, y, h0)
        loss = fn(state, *args, True)
        if fn is pair.lm_forward_backward_pair and threads == 1:  # role 0 timed out and took slot 1 too
            assert list(state[[sync.SLOT, sync.SLOT + 16]]) == [1, 2]
        results.append((loss, [g.copy() for g in G], args[5].copy()))  # args[5]: hs
    for loss, G, hs in results[1:]:
        assert loss == results[0][0]
        np.testing.assert_array_equal(hs, results[0][2])
        for a, b in zip(G, results[0][1]):
            np.testing.assert_array_equal(a, b)


def test_loss_only_writes_no_gradient(two_threads):
    layout, flat, P, x, y, h0 = make_problem(1, 9, 65, 24, np.float64)
    G, args = _kernel_args(layout, P, x, y, h0)
    loss = pair.lm_forward_backward_pair(np.zeros(sync.SYNC_SIZE, np.int64), *args, False)
    assert loss == pytest.approx(ref.forward_loss(P, x, y, h0)[0], rel=1e-12)
    assert all(np.all(g == 7) for g in G)


def test_training_on_two_threads_is_bit_identical_run_to_run(two_threads):
    def run():
        layout, flat, P, x, y, h0 = make_problem(1, 20, 65, 64, np.float32, seed=3)
        step = PairStep()
        g, m, v = layout.zeros(np.float32), layout.zeros(np.float32), layout.zeros(np.float32)
        h, losses = h0, []
        for t in range(1, 6):
            loss, h = step(P, layout.views(g), x, y, h)
            K.clip_gradients(g, 5.0, 0.0)
            K.adam_update(flat, g, m, v, 0.01, 0.9, 0.999, 1e-8, t)
            losses.append(loss)
        return losses, flat.copy(), h

    a, b = run(), run()
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])


def test_pair_vs_fused_benchmark(tmp_path):
    import json

    from click.testing import CliRunner

    from benchmarks.lab import pair_vs_fused

    out = tmp_path / "p.json"
    r = CliRunner().invoke(pair_vs_fused.main, ["--shapes", "1:16,2:24", "--repeats", "2", "--seconds", "0.01",
                                                "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["rows"]
    assert [(row["N"], row["H"]) for row in rows] == [(1, 16), (2, 24)]
    assert all(row["fused_us"] > 0 and row["pair_us"] > 0 and row["speedup"] > 0 for row in rows)
    bad = CliRunner().invoke(pair_vs_fused.main, ["--shapes", "1x16"])
    assert bad.exit_code == 2 and "N:H" in bad.output


def test_join_alone_then_late_partner():
    """One thread calling both roles in turn: the first waits, takes the partner's slot and works alone (1);
    the late partner finds its slot taken and leaves (0)."""
    state = np.zeros(sync.SYNC_SIZE, np.int64)
    assert sync.join(state, 0) == 1
    assert sync.join(state, 1) == 0
    assert list(state[[sync.SLOT, sync.SLOT + 16]]) == [1, 2]


@numba.njit
def _atomics(a):
    sync.store_release(a, 3, 41)
    loaded = sync.load_acquire(a, 3)
    swapped = sync.compare_exchange(a, 3, 41, 42)
    refused = sync.compare_exchange(a, 3, 41, 43)
    sync.cpu_relax()
    sync.wait_until(a, 3, 42)  # already there: returns at once
    return loaded, swapped, refused


def test_atomics():
    a = np.zeros(8, np.int64)
    assert _atomics(a) == (41, True, False)
    assert a[3] == 42 and np.count_nonzero(a) == 1


def test_chooser_prefers_the_faster_path_and_probes_the_other():
    c = chooser.TimingChooser()
    picks = []
    for call in range(400):
        two = c.choose()
        picks.append(two)
        c.record(two, 0.010 if two else 0.001)  # two threads 10x slower (the cores are taken)
    assert picks[:2] == [True, True] and picks[2:4] == [False, False]  # each path once untimed, once timed
    probes = [i for i in range(10, 400) if picks[i]]
    # 10x slower is below HOPELESS: each probe runs KEEP calls and loses; the next one comes twice as late
    k, e = chooser.KEEP, chooser.PROBE_EVERY
    first = e  # call numbers (1-based): the first probe at call e, the next 2e calls after the first one ends
    second = (first + k - 1) + 2 * e
    assert probes == [i - 1 for i in list(range(first, first + k)) + list(range(second, second + k))]
    c2 = chooser.TimingChooser()
    for call in range(200):
        two = c2.choose()
        c2.record(two, 0.001 if two else 0.002)
    assert c2.choose() is True  # two threads faster: used


def test_chooser_stops_a_hopeless_probe_after_one_call():
    c = chooser.TimingChooser()
    picks = []
    for call in range(300):
        two = c.choose()
        picks.append(two)
        c.record(two, 0.1 if two else 0.001)  # 100x slower: more than HOPELESS
    runs, run = [], 0
    for p in picks[4:]:
        if p:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert runs and all(r == 1 for r in runs)


def test_slow_two_threads_switch_to_one_thread_with_the_same_bits(two_threads, monkeypatch):
    """A two-thread call made slow (as when other processes hold the cores): PairStep moves to the one-thread
    order, and the numbers are those of an undisturbed run, bit for bit."""
    import time

    def train():
        layout, flat, P, x, y, h0 = make_problem(1, 10, 30, 96, np.float32, seed=4)
        step = PairStep()
        g = layout.zeros(np.float32)
        m, v = layout.zeros(np.float32), layout.zeros(np.float32)
        h, losses = h0, []
        for t in range(1, 31):
            loss, h = step(P, layout.views(g), x, y, h)
            K.adam_update(flat, g, m, v, 0.01, 0.9, 0.999, 1e-8, t)
            losses.append(loss)
        return losses, flat.copy()

    calm = train()
    real = pair.lm_forward_backward_pair
    used = []

    def slow_pair(*args):
        used.append(1)
        time.sleep(0.01)
        return real(*args)

    monkeypatch.setattr(pair, "lm_forward_backward_pair", slow_pair)
    busy = train()
    assert len(used) <= 4  # tried, found slow, left (the next probe would come after PROBE_EVERY calls)
    assert calm[0] == busy[0]
    np.testing.assert_array_equal(calm[1], busy[1])
