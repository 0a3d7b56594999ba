"""kernels.dispatch: the plan of a call, the measured loops-or-BLAS choice and its per-machine cache."""

import json
import os

import numpy as np
import pytest

from fastrnn import kernels as K
from fastrnn import reference as ref
from fastrnn.kernels import dispatch
from fastrnn.model import Model


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache directory and no remembered plans or measurements."""
    monkeypatch.setenv("FASTRNN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(dispatch.CALIBRATE_ENV, raising=False)
    monkeypatch.setattr(dispatch, "others_busy_seconds", lambda: 0.0)  # a quiet machine (see test_busy_...)
    dispatch._plan.cache_clear()
    dispatch._memory.clear()
    yield tmp_path
    dispatch._plan.cache_clear()
    dispatch._memory.clear()


def fake_timings(monkeypatch, loops_seconds, blas_seconds, tiles_seconds=None, steps=None):
    """Fake time_products (loops or BLAS) and time_step (tiles: tiles_seconds, else 1.0; steps receives the plans
    timed). Returns the time_products calls."""
    calls = []

    def timed(N, H, G, dtype, threads, loops, reps):
        calls.append((N, H, G, loops))
        return loops_seconds if loops else blas_seconds

    def step(p, reps):
        if steps is not None:
            steps.append(p)
        return (tiles_seconds if tiles_seconds is not None else 2.0) if p.tiles else 1.0

    monkeypatch.setattr(dispatch, "time_products", timed)
    monkeypatch.setattr(dispatch, "time_step", step)
    return calls


@pytest.mark.parametrize("loops_win", [True, False])
def test_the_measured_choice_is_the_faster_way_and_is_cached(fresh_cache, monkeypatch, loops_win):
    calls = fake_timings(monkeypatch, 1.0 if loops_win else 3.0, 2.0)
    p = dispatch.plan("lstm", 1, 8, 50, 64, 65, False, 2, np.float32)  # work 8*64*4*64: inside the band
    assert p.measured and p.loops == loops_win and p.path == "layers"
    assert len(calls) == 2 * dispatch.REPEATS and {c[:3] for c in calls} == {(8, 64, 4)}
    saved = json.loads(open(dispatch.cache_path()).read())
    assert saved == {"8x64x4:float32:2": loops_win, "tiles:lstm:1:8x50x64x65:0:float32:2": False}
    # another process (no memory of it) reads the file and measures nothing
    dispatch._plan.cache_clear()
    dispatch._memory.clear()
    calls.clear()
    assert dispatch.plan("lstm", 1, 8, 50, 64, 65, False, 2, np.float32).loops == loops_win and not calls


def test_outside_the_band_and_with_measurement_off_the_rule_decides(fresh_cache, monkeypatch):
    calls = fake_timings(monkeypatch, 1.0, 2.0)
    assert not dispatch.plan("lstm", 1, 64, 50, 512, 65, False, 2, np.float32).loops  # far above: BLAS
    assert dispatch.plan("rnn", 1, 1, 50, 512, 65, False, 1, np.float32).loops  # one row: loops
    assert not calls
    monkeypatch.setenv(dispatch.CALIBRATE_ENV, "0")
    p = dispatch.plan("rnn", 1, 32, 50, 128, 65, False, 2, np.float32)  # in the band, but not measured
    assert not p.measured and p.loops == (32 * 128 * 128 <= dispatch.SMALL_WORK) and not calls
    assert not os.path.exists(dispatch.cache_path())


def test_an_unwritable_or_damaged_cache_is_ignored(fresh_cache, monkeypatch):
    fake_timings(monkeypatch, 1.0, 2.0)
    os.makedirs(os.path.dirname(dispatch.cache_path()), exist_ok=True)
    with open(dispatch.cache_path(), "w") as f:
        f.write("{not json")
    assert dispatch.plan("gru", 2, 4, 10, 64, 30, True, 1, np.float64).loops
    assert json.loads(open(dispatch.cache_path()).read()) == {"4x64x3:float64:1": True,  # rewritten whole
                                                              "tiles:gru:2:4x10x64x30:1:float64:1": False}
    monkeypatch.setenv("FASTRNN_CACHE_DIR", "/proc/no-such-dir")  # cannot be written: measured, kept in memory
    dispatch._plan.cache_clear()
    assert dispatch.plan("gru", 2, 4, 10, 64, 30, True, 1, np.float64).measured


def test_a_measurement_on_a_busy_machine_is_thrown_away(fresh_cache, monkeypatch):
    fake_timings(monkeypatch, 1.0, 2.0)  # loops faster, against the rule at this size
    busy = iter([0.0, 1e6])  # other processes' CPU seconds before and after: a million seconds in a moment
    monkeypatch.setattr(dispatch, "others_busy_seconds", lambda: next(busy))
    p = dispatch.plan("rnn", 1, 32, 50, 128, 65, False, 2, np.float32)
    assert not p.measured and p.loops == (32 * 128 * 128 <= dispatch.SMALL_WORK)  # the rule
    assert not os.path.exists(dispatch.cache_path())


def test_others_busy_seconds_counts_other_processes_only():
    import time

    import psutil

    def machine_busy():
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    before, busy_before = dispatch.others_busy_seconds(), machine_busy()
    t0 = time.process_time()
    while time.process_time() - t0 < 1.0:  # this process busy for a second: not counted (counted, it would add 1.0)
        pass
    others, busy = dispatch.others_busy_seconds() - before, machine_busy() - busy_before
    # whatever other processes did meanwhile (the machine is shared), this process's second is not among it
    assert busy - others > 0.9


@pytest.mark.parametrize("tiles_win", [True, False])
def test_between_the_tiles_thresholds_whole_steps_are_measured(fresh_cache, monkeypatch, tiles_win):
    steps = []
    fake_timings(monkeypatch, 1.0, 2.0, 0.5 if tiles_win else 2.0, steps)
    N = dispatch.TILES_MIN_ROWS * 2  # 2 threads: the fewest rows a thread that are measured
    p = dispatch.plan("lstm", 1, N, 50, 64, 65, False, 2, np.float32)
    assert p.measured and p.tiles == tiles_win and p.path == "layers"
    assert len(steps) == 2 * dispatch.REPEATS and sorted({q.tiles for q in steps}) == [False, True]
    assert all((q.N, q.T, q.H, q.cell, q.threads) == (N, 50, 64, "lstm", 2) for q in steps)
    assert json.loads(open(dispatch.cache_path()).read())[f"tiles:lstm:1:{N}x50x64x65:0:float32:2"] == tiles_win
    steps.clear()
    few = dispatch.plan("lstm", 1, N - 2, 50, 64, 65, False, 2, np.float32)  # under TILES_MIN_ROWS a thread
    many = dispatch.plan("lstm", 1, dispatch.TILES_ALWAYS * 2, 50, 64, 65, False, 2, np.float32)
    assert not few.tiles and many.tiles and not steps
    rnn = dispatch.plan("rnn", 1, 64, 50, 512, 65, False, 2, np.float32)
    assert rnn.tiles and rnn.path == "layers"  # the tiles plan runs the one-layer rnn layer by layer


def test_time_step_times_a_plan():
    p = dispatch.plan("gru", 2, 8, 4, 16, 11, True, 1, np.float32, measure=False)
    for q in (dispatch.variant(p, tiles=True), dispatch.variant(p, tiles=False)):
        assert dispatch.time_step(q, 2) > 0


def test_time_products_measures_both_ways():
    for loops in (True, False):
        assert dispatch.time_products(3, 16, 4, "float32", 1, loops, 5) > 0


def test_plans_name_their_path():
    p = dispatch.plan("rnn", 1, 1, 50, 128, 65, False, 2, np.float32, measure=False)
    assert p.path == "fused" and p.describe().startswith("fused step; recurrent products: hand loops")
    assert p.describe().endswith("; 2 threads")
    q = dispatch.plan("lstm", 2, 64, 50, 512, 65, True, 1, np.float32, measure=False)
    assert q.describe() == ("layer by layer; recurrent products: register tiles, a block of rows per thread; "
                            "position products: BLAS; 1 thread")
    r = dispatch.variant(q, tiles=False)
    assert r.describe() == "layer by layer; recurrent products: BLAS; position products: BLAS; 1 thread"
    assert dispatch.plan("lstm", 2, 1, 1, 16, 65, False, 1, np.float32, measure=False).positions == "loops"
    assert p is dispatch.plan("rnn", 1, 1, 50, 128, 65, False, 2, np.float32, measure=False)  # one object
    assert ref.plan_for(None, 1, 1).describe() == "NumPy reference"


def test_invalid_plans_are_refused():
    with pytest.raises(ValueError):
        dispatch.Plan("lstm", 1, 4, 5, 8, 7, False, 1, "float32", "fused", True, "blas")  # fused lstm
    with pytest.raises(ValueError):
        dispatch.Plan("rnn", 1, 4, 5, 8, 7, True, 1, "float32", "fused", True, "blas")  # fused with dropout
    with pytest.raises(ValueError):
        dispatch.Plan("rnn", 1, 4, 5, 8, 7, False, 1, "float32", "pair", True, "blas")  # no such path
    with pytest.raises(ValueError):
        dispatch.Plan("rnn", 1, 1, 1, 8, 7, False, 1, "float32", "fused", True, "loops")
    p = dispatch.plan("rnn", 1, 2, 5, 8, 7, False, 2, np.float32, measure=False)
    v = dispatch.variant(p, loops=False, positions="loops")
    assert (v.path, v.loops, v.positions) == ("fused", False, "blas")


def test_a_plan_for_another_shape_is_refused():
    model = Model(7, 8, "float32", "rnn", 1).init(np.random.default_rng(0), 0.1)
    x = np.zeros((2, 5), np.int32)
    G = model.layout.views(model.layout.zeros(np.float32))
    other = K.plan_for(model.P, 3, 5)
    with pytest.raises(ValueError, match="another shape"):
        K.forward_backward(model.P, G, x, x, model.zero_state(2), plan=other)
    lstm = Model(7, 8, "float32", "lstm", 2).init(np.random.default_rng(0), 0.1)
    with pytest.raises(ValueError, match="another shape"):
        K.forward_loss(lstm.P, x, x, lstm.zero_state(2), plan=K.plan_for(model.P, 2, 5))


@pytest.mark.parametrize("cell,layers,dropout", [("rnn", 1, 0.0), ("lstm", 2, 0.3)])
def test_profile_step_is_forward_backward_with_a_clock(cell, layers, dropout):
    from fastrnn.dropout import make_masks

    model = Model(11, 16, "float64", cell, layers).init(np.random.default_rng(1), 0.3, "xavier")
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 11, (3, 6)), rng.integers(0, 11, (3, 6))
    masks = make_masks(rng, dropout, layers, 6, 3, 16, np.float64)
    h0 = model.zero_state(3)
    G1, G2 = (model.layout.views(model.layout.zeros(np.float64)) for _ in range(2))
    loss, state = K.forward_backward(model.P, G1, x, y, h0, masks)
    loss2, state2, clock = K.profile_step(model.P, G2, x, y, h0, masks)
    assert loss == loss2 and np.array_equal(state, state2)
    assert all(np.array_equal(G1[k], G2[k]) for k in G1)
    assert set(clock) == ({"forward_backward"} if cell == "rnn" else {"forward", "output", "backward"})
    assert all(s >= 0 for s in clock.values())
