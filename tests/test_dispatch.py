"""kernels.dispatch: the plan of a call, the measured loops-or-BLAS choice and its per-machine cache."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest

from fastrnn import kernels as K
from fastrnn import reference as ref
from fastrnn.kernels import backend, calibrate, dispatch
from fastrnn.model import Model


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache directory and no remembered plans or measurements."""
    monkeypatch.setenv("FASTRNN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(calibrate.CALIBRATE_ENV, raising=False)
    monkeypatch.setattr(calibrate, "others_busy_seconds", lambda: 0.0)  # a quiet machine (see test_busy_...)
    forget()
    yield tmp_path
    forget()


def forget():
    """No plan or measured answer remembered in this process (as in another process)."""
    dispatch._plan.cache_clear()
    calibrate.measured.cache_clear()
    calibrate._memory.clear()


def fake_steps(monkeypatch, seconds, timed=None):
    """Fake calibrate.Stepper: a step of a candidate plan takes seconds[name] ("loops", "blas", "tiles"), the name
    read from the plan; `timed` receives (name, reps) for every timing."""

    class FakeStepper:
        def __init__(self, p, step=None):
            self.name = "tiles" if p.tiles else "loops" if p.loops else "blas"

        def warm_up(self):
            pass

        def seconds(self, reps):
            if timed is not None:
                timed.append((self.name, reps))
            return seconds[self.name] * reps

    monkeypatch.setattr(calibrate, "Stepper", FakeStepper)
    monkeypatch.setattr(calibrate, "SETTLE_SECONDS", 0.0)


@pytest.mark.parametrize("winner", ["loops", "blas", "tiles"])
def test_the_measured_choice_is_the_fastest_candidate_and_is_cached(fresh_cache, monkeypatch, winner):
    timed = []
    fake_steps(monkeypatch, {name: 0.001 if name == winner else 0.0015 for name in ("loops", "blas", "tiles")},
               timed)
    p = backend.plan("lstm", 1, 8, 50, 64, 65, False, 2, np.float32)
    assert p.measured and ("tiles" if p.tiles else "loops" if p.loops else "blas") == winner
    assert p.path == "layers" and "chosen by measurement: measured in" in p.describe()
    assert {name for name, _ in timed} == {"loops", "blas", "tiles"}
    # a first step each, then the rounds (all close: none dropped), each timing after an untimed step
    assert len(timed) == 2 * 3 * (1 + calibrate.REPEATS)
    saved = json.loads(open(calibrate.cache_path()).read())
    assert saved == {"plan:lstm:1:8x50x64x65:0:float32:2": winner}
    # another process (no memory of it) reads the file and measures nothing
    forget()
    timed.clear()
    again = backend.plan("lstm", 1, 8, 50, 64, 65, False, 2, np.float32)
    assert again == p and not timed and "measured earlier on this machine" in again.describe()


def test_a_far_slower_candidate_is_dropped_after_one_step_and_the_budget_bounds_the_rounds(monkeypatch):
    timed = []
    fake_steps(monkeypatch, {"loops": 0.1, "blas": 0.01, "tiles": 0.012}, timed)
    p = dispatch.rule("lstm", 2, 64, 50, 512, 65, False, 2, "float32")
    best, medians, _ = calibrate.fastest(dispatch.candidates(p), 0.0, backend.training_step)
    assert best == "blas" and set(medians) == {"blas", "tiles"}  # loops: 10x the best step, timed once
    timings = timed[1::2]  # each timing follows an untimed step of its own (calibrate.settled)
    assert all(reps == 1 for _, reps in timed[0::2]) and [n for n, _ in timed[0::2]] == [n for n, _ in timings]
    assert [name for name, _ in timings].count("loops") == 1
    assert [name for name, _ in timings].count("blas") == 1 + 2  # no time left after the first step: two rounds
    assert all(reps == 2 for name, reps in timings[3:])  # sized to about TIMING_SECONDS a timing


def test_candidates_are_the_ways_the_shape_can_run():
    big = dispatch.rule("rnn", 1, 64, 50, 512, 65, False, 2, "float32")
    assert set(dispatch.candidates(big)) == {"loops", "blas", "tiles"}
    c = dispatch.candidates(big)
    assert c["loops"].loops and not c["blas"].loops and c["tiles"].tiles and c["tiles"].path == "layers"
    assert c["loops"].path == c["blas"].path == "fused"
    step = dispatch.rule("lstm", 2, 2, 1, 64, 65, False, 2, "float32")  # a generation step of two streams
    ways = dispatch.candidates(step)
    assert step.positions == "loops" and set(ways) == {"loops", "blas", "tiles", "loops, blas positions",
                                                        "blas, blas positions", "tiles, blas positions"}
    assert ways["tiles, blas positions"].tiles and ways["tiles, blas positions"].positions == "blas"
    fused = dispatch.rule("rnn", 1, 1, 1, 64, 65, False, 1, "float32")  # the fused step has BLAS positions only
    assert set(dispatch.candidates(fused)) == {"loops", "blas", "tiles", "tiles, loops positions"}


def test_with_measurement_off_the_rule_decides(fresh_cache, monkeypatch):
    timed = []
    fake_steps(monkeypatch, {"loops": 1.0, "blas": 2.0, "tiles": 0.5}, timed)
    monkeypatch.setenv(calibrate.CALIBRATE_ENV, "0")
    p = backend.plan("rnn", 1, 32, 50, 128, 65, False, 2, np.float32)
    assert not p.measured and not p.tiles and p.loops == (32 * 128 * 128 <= dispatch.SMALL_WORK) and not timed
    assert not backend.plan("lstm", 1, 64, 50, 512, 65, False, 2, np.float32).loops  # far above: BLAS
    assert backend.plan("rnn", 1, 1, 50, 512, 65, False, 1, np.float32).loops  # one row: loops
    assert not os.path.exists(calibrate.cache_path())


def test_an_unwritable_or_damaged_cache_is_ignored(fresh_cache, monkeypatch):
    fake_steps(monkeypatch, {"loops": 1.0, "blas": 2.0, "tiles": 3.0})
    os.makedirs(os.path.dirname(calibrate.cache_path()), exist_ok=True)
    with open(calibrate.cache_path(), "w") as f:
        f.write("{not json")
    assert backend.plan("gru", 2, 4, 10, 64, 30, True, 1, np.float64).loops
    assert json.loads(open(calibrate.cache_path()).read()) == {"plan:gru:2:4x10x64x30:1:float64:1": "loops"}
    with open(calibrate.cache_path(), "w") as f:  # an entry of another version's cache: measured anew
        json.dump({"plan:gru:2:4x10x64x30:1:float64:1": True}, f)
    forget()
    assert backend.plan("gru", 2, 4, 10, 64, 30, True, 1, np.float64).note.startswith("measured in")
    monkeypatch.setenv("FASTRNN_CACHE_DIR", "/proc/no-such-dir")  # cannot be written: measured, kept in memory
    forget()
    assert backend.plan("gru", 2, 4, 10, 64, 30, True, 1, np.float64).measured


@pytest.mark.parametrize("busy_when", ["before", "during"])
def test_a_measurement_on_a_busy_machine_is_thrown_away_or_not_made(fresh_cache, monkeypatch, busy_when):
    timed = []
    fake_steps(monkeypatch, {"loops": 1.0, "blas": 2.0, "tiles": 0.5}, timed)  # tiles fastest, against the rule
    # other processes' CPU seconds at each look: a million seconds in a moment, before or during the measurement
    busy = iter([0.0, 1e6] if busy_when == "before" else [0.0, 0.0, 0.0, 1e6])
    monkeypatch.setattr(calibrate, "others_busy_seconds", lambda: next(busy))
    p = backend.plan("rnn", 1, 32, 50, 128, 65, False, 2, np.float32)
    assert not p.measured and not p.tiles and p.loops == (32 * 128 * 128 <= dispatch.SMALL_WORK)  # the rule
    assert not os.path.exists(calibrate.cache_path())
    assert bool(timed) == (busy_when == "during")  # busy already: not measured at all


def test_others_busy_seconds_counts_other_processes_only():
    import time

    import psutil

    def machine_busy():
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    before, busy_before = calibrate.others_busy_seconds(), machine_busy()
    t0 = time.process_time()
    while time.process_time() - t0 < 1.0:  # this process busy for a second: not counted (counted, it would add 1.0)
        pass
    others, busy = calibrate.others_busy_seconds() - before, machine_busy() - busy_before
    # whatever other processes did meanwhile (the machine is shared), this process's second is not among it
    assert busy - others > 0.9


def test_time_step_times_a_plan():
    p = dispatch.plan("gru", 2, 8, 4, 16, 11, True, 1, np.float32)
    for q in (dispatch.variant(p, tiles=True), dispatch.variant(p, tiles=False)):
        assert calibrate.time_step(q, 2, backend.training_step) > 0


def test_the_real_measurement_picks_one_of_the_candidates_in_its_budget(fresh_cache):
    p = backend.plan("lstm", 1, 8, 10, 32, 20, False, 2, np.float32)
    options = dispatch.candidates(dispatch.rule("lstm", 1, 8, 10, 32, 20, False, 2, "float32")).values()
    assert p.measured and dataclasses.replace(p, measured=False) in options
    seconds = float(p.note.split()[2])  # "measured in S s": the timing, after each candidate's compiling step
    assert seconds < 2 * calibrate.CALIBRATION_SECONDS  # first steps, then rounds until the budget is spent


def test_plans_name_their_path():
    p = dispatch.plan("rnn", 1, 1, 50, 128, 65, False, 2, np.float32)
    assert p.path == "fused" and p.describe().startswith("fused step; recurrent products: hand loops")
    assert p.describe().endswith("; 2 threads")
    q = dispatch.variant(dispatch.plan("lstm", 2, 64, 50, 512, 65, True, 1, np.float32), tiles=True)
    assert q.describe() == ("layer by layer; recurrent products: register tiles, a block of rows per thread; "
                            "position products: BLAS; 1 thread")
    r = dispatch.variant(q, tiles=False)
    assert r.describe() == "layer by layer; recurrent products: BLAS; position products: BLAS; 1 thread"
    assert dispatch.plan("lstm", 2, 1, 1, 16, 65, False, 1, np.float32).positions == "loops"
    assert p is dispatch.plan("rnn", 1, 1, 50, 128, 65, False, 2, np.float32)  # one object
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
    p = dispatch.plan("rnn", 1, 2, 5, 8, 7, False, 2, np.float32)
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


def test_train_measures_its_plan_once_and_says_so(small_corpus, tmp_path):
    """From the command line: the first run on a machine measures its plan and says how long it took on the
    kernels: line; the next reads the answer from the machine's cache."""
    import subprocess
    import sys

    env = dict(os.environ, FASTRNN_CALIBRATE="1", FASTRNN_CACHE_DIR=str(tmp_path / "cache"))
    lines = []
    for run in ("a", "b"):
        r = subprocess.run([sys.executable, "-m", "fastrnn", "train", small_corpus, "-o", str(tmp_path / run),
                            "--model", "lstm", "--hidden-size", "16", "--batch-size", "8", "--seq-len", "10",
                            "--max-steps", "3", "--eval-every", "0", "--threads", "2"],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr
        lines.append(next(line for line in r.stderr.splitlines() if line.startswith("kernels:")))
    if "measured in" not in lines[0]:  # the machine was busy: thrown away, the rule decided (and said nothing)
        assert "chosen by measurement" not in lines[0]
        pytest.skip("other processes kept the cores busy during the measurement")
    assert re.search(r"chosen by measurement: measured in \d+\.\d s\)$", lines[0])
    assert lines[1].endswith("(chosen by measurement: measured earlier on this machine)")
    assert lines[0].split(" (")[0] == lines[1].split(" (")[0]


def test_the_plan_is_decided_from_its_arguments_and_the_answer_handed_to_it(monkeypatch):
    """dispatch.plan measures nothing and reads no environment: the rule, or the candidate it is told was fastest."""
    def no_measuring(*args, **kwargs):
        raise AssertionError("dispatch.plan measured")

    monkeypatch.setattr(calibrate, "measured", no_measuring)
    monkeypatch.setattr(calibrate, "fastest", no_measuring)
    monkeypatch.setenv(calibrate.CALIBRATE_ENV, "1")
    shape = ("lstm", 1, 8, 50, 64, 65, False, 2, "float32")
    assert dispatch.plan(*shape) == dispatch.rule(*shape) and not dispatch.plan(*shape).measured
    p = dispatch.plan(*shape, measured=("tiles", "measured in 1.0 s"))
    assert p.tiles and p.measured and p.describe().endswith("(chosen by measurement: measured in 1.0 s)")
    assert p == dataclasses.replace(dispatch.candidates(dispatch.rule(*shape))["tiles"], measured=True)
    with pytest.raises(ValueError, match="not a way"):
        dispatch.plan(*shape, measured=("pair", ""))


@pytest.mark.parametrize("shape", [("lstm", 1, 8, 50, 64, 65, False, 2, "float32"),
                                   ("rnn", 1, 8, 50, 64, 65, False, 2, "float64"),
                                   ("gru", 2, 1, 1, 32, 65, False, 1, "float32")], ids=["lstm", "rnn", "step"])
def test_a_plan_is_made_again_from_its_way(shape, monkeypatch):
    """Plan.way names the candidate a plan is, and plan(way=...) makes that plan again without measuring."""
    monkeypatch.setattr(calibrate, "measured", lambda *a: pytest.fail("measured"))
    options = dispatch.candidates(dispatch.rule(*shape))
    for name, q in options.items():
        assert q.way == name
        again = dispatch.plan(*shape, way=name)
        assert again == q and again.recorded and again.describe().endswith("(the run's, recorded in its checkpoint)")
        assert backend.plan(*shape, way=name) == q
        measured = dispatch.plan(*shape, measured=(name, "x"))
        assert measured.way == name
    assert dispatch.rule(*shape).way in options
    with pytest.raises(ValueError, match="not a way"):
        dispatch.plan(*shape, way="pair")

def test_a_resumed_run_keeps_the_plan_its_checkpoint_records(small_corpus, tmp_path, monkeypatch):
    """A run records its kernel plans (RunState.plans); resumed on the same threads it takes them, even where the
    dispatcher would now choose another (here: forced to prefer BLAS), so it goes on bit for bit as a run that never
    stopped. On other threads it chooses anew and says so; a checkpoint from before the record resumes as it did."""
    from fastrnn import checkpoint as ckpt_io
    from fastrnn.train import train

    opts = dict(hidden_size=16, batch_size=4, seq_len=10, log_every=1, eval_every=5, checkpoint_every=0, threads=1)

    def run(run_dir, overrides, resume=False):
        events = []
        train(small_corpus, tmp_path / run_dir, overrides, resume=resume, on_event=lambda k, d: events.append((k, d)))
        (start,) = [d for k, d in events if k == "start"]
        return start["plan"], [d["text"] for k, d in events if k == "message"]

    monkeypatch.setenv(calibrate.CALIBRATE_ENV, "0")  # the rule decides: hand loops at this size
    plan, _ = run("straight", dict(opts, max_steps=20))
    assert "recurrent products: hand loops" in plan
    run("split", dict(opts, max_steps=8))
    assert ckpt_io.load(tmp_path / "split").state.plans == [{"train": "loops", "eval": "loops", "threads": 1}]

    monkeypatch.setenv(calibrate.CALIBRATE_ENV, "1")
    monkeypatch.setattr(calibrate, "measured", lambda *shape: ("blas", "forced by the test"))
    plan, messages = run("split", {"max_steps": 20}, resume=True)
    assert plan.endswith("hand loops; position products: BLAS; 1 thread (the run's, recorded in its checkpoint)")
    assert messages == []
    straight, split = ckpt_io.load(tmp_path / "straight"), ckpt_io.load(tmp_path / "split")
    np.testing.assert_array_equal(split.params, straight.params)
    assert [r["batch_loss"] for r in rows(tmp_path / "split")] == [r["batch_loss"] for r in rows(tmp_path / "straight")]
    evaluated = {r["step"]: r["val_loss"] for r in rows(tmp_path / "straight") if "val_loss" in r}
    assert len(evaluated) == 4 and all(r["val_loss"] == evaluated[r["step"]] for r in rows(tmp_path / "split")
                                       if r["step"] in evaluated)

    plan, messages = run("split", {"max_steps": 25, "threads": 2}, resume=True)  # other threads: chosen anew
    assert "recurrent products: BLAS" in plan and plan.endswith("(chosen by measurement: forced by the test)")
    assert messages == ["kernel plan chosen anew for 2 threads: the checkpoint's (loops) was made for 1 thread"]
    assert ckpt_io.load(tmp_path / "split").state.plans == [{"train": "blas", "eval": "blas", "threads": 2}]

    old = ckpt_io.load(tmp_path / "split")  # a checkpoint written before runs recorded their plans
    del old.state["plans"]
    ckpt_io.save(old.path, old)
    plan, messages = run("split", {"max_steps": 30}, resume=True)
    assert "recurrent products: BLAS" in plan and messages == []


def rows(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]
