"""The training loop end to end: backends agree, resume is exact, loss falls, divergence stops the run."""

import json
import math
import os
import re

import numpy as np
import pytest

from fastrnn import checkpoint as ckpt_io
from fastrnn.errors import CheckpointError, ConfigError, DivergenceError
from fastrnn.train import train

SMALL = dict(hidden_size=16, seq_len=10, batch_size=4, log_every=1, eval_every=0, checkpoint_every=0)


def log_rows(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def params_of(run_dir):
    return ckpt_io.load(run_dir).params


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rmsprop", "adam"])
def test_numba_and_numpy_backends_give_the_same_losses(small_corpus, tmp_path, optimizer):
    losses = {}
    for backend in ("numpy", "numba"):
        run = tmp_path / backend
        train(small_corpus, run, dict(SMALL, max_steps=20, backend=backend, dtype="float64", optimizer=optimizer,
                                      momentum=0.9 if optimizer == "sgd" else 0.0))
        losses[backend] = [r["batch_loss"] for r in log_rows(run)]
        assert len(losses[backend]) == 20
    np.testing.assert_allclose(losses["numba"], losses["numpy"], rtol=1e-9)


def test_float32_backends_agree_loosely(small_corpus, tmp_path):
    losses = {}
    for backend in ("numpy", "numba"):
        run = tmp_path / backend
        train(small_corpus, run, dict(SMALL, max_steps=20, backend=backend))
        losses[backend] = [r["batch_loss"] for r in log_rows(run)]
    np.testing.assert_allclose(losses["numba"], losses["numpy"], rtol=1e-4)


# Recorded with the numpy backend, float64, on the deterministic `make_text` corpus: guards the whole loop
# (data layout, initialisation, loss, gradients, clipping, Adam, carried state) against silent changes.
RECORDED_CURVE = [3.367269928353059, 3.3658692056179547, 3.3632600066890945, 3.3615467174524682,
                  3.3599077967610356, 3.3595472970632754, 3.3538025534593756, 3.356453338414404,
                  3.351222487719613, 3.3489965735722556]


def test_recorded_ten_step_loss_curve(small_corpus, tmp_path):
    train(small_corpus, tmp_path / "run", dict(SMALL, max_steps=10, backend="numpy", dtype="float64", seed=3,
                                                   init="normal"))  # min-char-rnn's init, as recorded
    curve = [r["batch_loss"] for r in log_rows(tmp_path / "run")]
    assert curve[0] == pytest.approx(math.log(29), abs=0.01)  # 29 symbols: starts at the uniform loss
    np.testing.assert_allclose(curve, RECORDED_CURVE, rtol=1e-9)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rmsprop", "adam"])
def test_resume_is_exact(small_corpus, tmp_path, backend, optimizer):
    opts = dict(SMALL, backend=backend, optimizer=optimizer, momentum=0.5 if optimizer == "sgd" else 0.0,
                eval_every=7, lr_decay=0.9, lr_decay_every=5)
    train(small_corpus, tmp_path / "straight", dict(opts, max_steps=30))
    train(small_corpus, tmp_path / "split", dict(opts, max_steps=13))
    train(small_corpus, tmp_path / "split", {"max_steps": 30}, resume=True)
    np.testing.assert_array_equal(params_of(tmp_path / "split"), params_of(tmp_path / "straight"))
    a, b = log_rows(tmp_path / "straight"), log_rows(tmp_path / "split")
    assert [r["step"] for r in b] == list(range(1, 31))
    assert [r["batch_loss"] for r in a] == [r["batch_loss"] for r in b]
    ca, cb = ckpt_io.load(tmp_path / "straight"), ckpt_io.load(tmp_path / "split")
    np.testing.assert_array_equal(ca.hidden, cb.hidden)
    for name in ca.optimizer:
        np.testing.assert_array_equal(ca.optimizer[name], cb.optimizer[name])


def test_resume_crosses_epoch_boundary_and_reset_hidden(small_corpus, tmp_path):
    opts = dict(SMALL, batch_size=16, seq_len=40, reset_hidden=True)
    train(small_corpus, tmp_path / "a", dict(opts, max_epochs=2.5))
    spe = ckpt_io.load(tmp_path / "a").state["step"] / 2.5
    train(small_corpus, tmp_path / "b", dict(opts, max_steps=int(spe) + 3))
    train(small_corpus, tmp_path / "b", {"max_steps": 0, "max_epochs": 2.5}, resume=True)
    np.testing.assert_array_equal(params_of(tmp_path / "a"), params_of(tmp_path / "b"))


def test_resume_refuses_changed_model(small_corpus, tmp_path):
    train(small_corpus, tmp_path / "r", dict(SMALL, max_steps=2))
    with pytest.raises(ConfigError, match="hidden-size"):
        train(small_corpus, tmp_path / "r", {"hidden_size": 32, "max_steps": 4}, resume=True)
    with pytest.raises(ConfigError, match="allow-change"):
        train(small_corpus, tmp_path / "r", {"lr": 0.5, "max_steps": 4}, resume=True)
    summary = train(small_corpus, tmp_path / "r", {"lr": 0.5, "max_steps": 4}, resume=True, allow_change=True)
    assert summary["step"] == 4


def test_new_run_refuses_existing_run_dir(small_corpus, tmp_path):
    train(small_corpus, tmp_path / "r", dict(SMALL, max_steps=1))
    before = open(tmp_path / "r" / "checkpoint.h5", "rb").read()
    with pytest.raises(ConfigError, match="--resume"):
        train(small_corpus, tmp_path / "r", dict(SMALL, max_steps=1))
    assert open(tmp_path / "r" / "checkpoint.h5", "rb").read() == before


def test_nan_loss_stops_and_keeps_last_good_checkpoint(small_corpus, tmp_path):
    run = tmp_path / "r"
    train(small_corpus, run, dict(SMALL, max_steps=3, checkpoint_every=1, optimizer="sgd", lr=0.1))
    good = params_of(run)
    with pytest.raises(DivergenceError, match="step 3"):
        # an absurd learning rate blows up the weights; with no clipping the loss becomes inf/nan
        train(small_corpus, run, {"max_steps": 50, "lr": 1e38, "clip": 0.0, "checkpoint_every": 0,
                                  "divergence_factor": 0.0}, resume=True, allow_change=True)
    ckpt = ckpt_io.load(run)
    assert ckpt.state["step"] == 3
    np.testing.assert_array_equal(ckpt.params, good)


def test_divergence_factor_stops_exploding_loss(small_corpus, tmp_path):
    with pytest.raises(DivergenceError, match="starting loss"):
        train(small_corpus, tmp_path / "r", dict(SMALL, max_steps=200, optimizer="sgd", lr=50.0, clip=0.0,
                                                 divergence_factor=2.0))


def test_early_stopping(small_corpus, tmp_path):
    opts = dict(SMALL, max_steps=10_000, eval_every=1, lr=0.3, optimizer="sgd", early_stop_patience=2, hidden_size=4)
    summary = train(small_corpus, tmp_path / "r", opts)
    assert summary["stop_reason"] == "early_stop"
    assert summary["step"] < 10_000


def test_loss_falls_well_below_uniform_on_tiny_shakespeare(shakespeare_corpus, tmp_path):
    opts = dict(hidden_size=128, batch_size=32, seq_len=50, max_steps=600, eval_every=600, log_every=100, lr=0.004)
    summary = train(shakespeare_corpus, tmp_path / "r", opts)
    assert math.log(65) == pytest.approx(4.17, abs=0.01)
    assert summary["val_loss"] < 2.3, summary


def test_log_rows_have_the_documented_keys(small_corpus, tmp_path):
    train(small_corpus, tmp_path / "r", dict(SMALL, max_steps=4, eval_every=2, log_every=2))
    rows = log_rows(tmp_path / "r")
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert {"step", "epoch", "loss", "chars_per_sec", "rss_mb", "val_loss"} <= set(r)


def test_checkpoint_corruption_is_detected(small_corpus, tmp_path):
    train(small_corpus, tmp_path / "r", dict(SMALL, max_steps=2))
    path = tmp_path / "r" / "checkpoint.h5"
    data = bytearray(path.read_bytes())
    ds_offset = len(data) - 200  # inside the raw dataset bytes at the end of the file
    data[ds_offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt|damaged"):
        ckpt_io.load(path)


def test_rollback_on_divergence_halves_the_learning_rate(small_corpus, tmp_path):
    run = tmp_path / "r"
    train(small_corpus, run, dict(SMALL, max_steps=5, optimizer="sgd", lr=0.1))
    messages = []
    summary = train(small_corpus, run, {"max_steps": 40, "lr": 400.0, "clip": 0.0, "checkpoint_every": 100,
                                        "on_divergence": "rollback", "max_rollbacks": 30},
                    resume=True, allow_change=True,
                    on_event=lambda kind, data: messages.append(data["text"]) if kind == "message" else None)
    rolled = [m for m in messages if "rolled back" in m]
    assert rolled, messages
    assert summary["step"] == 40
    ckpt = ckpt_io.load(run)
    assert ckpt.state["rollbacks"] == len(rolled) and ckpt.state["lr_scale"] == 0.5 ** len(rolled)
    assert np.all(np.isfinite(ckpt.params))
    rows = log_rows(run)
    assert [r["step"] for r in rows] == list(range(1, 41))  # rows of abandoned steps were dropped
    with pytest.raises(DivergenceError, match="on-divergence rollback"):
        train(small_corpus, tmp_path / "s", dict(SMALL, max_steps=40, optimizer="sgd", lr=400.0, clip=0.0))


def test_eval_tokens_caps_the_validation_pass(small_corpus, tmp_path):
    from fastrnn.corpus import open_corpus
    from fastrnn.train import resolve_config
    from fastrnn.validation import val_set

    with open_corpus(small_corpus) as c:
        full = val_set(c.split("val"), resolve_config(dict(SMALL, eval_tokens="all")))
        capped = val_set(c.split("val"), resolve_config(dict(SMALL, eval_tokens=201)))
    assert capped.batches == capped.stream.steps_per_epoch and full.batches == full.stream.steps_per_epoch
    assert capped.tokens <= 200 < full.tokens
    assert capped.stream.tokens.size == 201  # the first 201 tokens of the split
    summary = train(small_corpus, tmp_path / "r", dict(SMALL, max_steps=3, eval_tokens=201))
    assert summary["val_loss"] is not None and math.isfinite(summary["val_loss"])


def test_restore_brings_back_everything_a_checkpoint_holds(small_corpus, tmp_path):
    """Run.restore (used by --resume and by rollback): parameters, optimizer buffers and step count, counters,
    random generator and carried state as the checkpoint holds them; a step after it draws what the run drew."""
    from fastrnn.corpus import open_corpus
    from fastrnn.train import Run, resolve_config

    run_dir = tmp_path / "r"
    opts = dict(SMALL, max_steps=6, dropout=0.3, num_layers=2, model="lstm")
    train(small_corpus, run_dir, opts)
    ckpt = ckpt_io.load(run_dir)
    config = resolve_config(dict(opts))
    with open_corpus(small_corpus) as corpus:
        run = Run(config, corpus, small_corpus, str(tmp_path / "other"), None, lambda kind, data: None)
        try:
            before = run.rng.random()
            run.restore(ckpt)
            np.testing.assert_array_equal(run.model.flat, ckpt.params)
            for name, buf in run.optimizer.state.items():
                np.testing.assert_array_equal(buf, ckpt.optimizer[name])
            assert run.optimizer.t == ckpt.state["step"] == run.state.step == 6
            assert run.state.smooth_loss == ckpt.state["smooth_loss"] and run.h.dtype == run.model.dtype
            np.testing.assert_array_equal(run.h, ckpt.hidden)
            assert run.rng.bit_generator.state == ckpt.state["rng"] and run.rng.random() != before
        finally:
            run.log.close()


def test_resume_and_rollback_restore_the_same_fields(small_corpus, tmp_path, monkeypatch):
    """--resume and a divergence rollback both go through Run.restore: from the same checkpoint they bring back
    the same counters, parameters, optimizer buffers, carried state and random generator."""
    import dataclasses

    from fastrnn.train import Run

    restored = []
    original = Run.restore

    def recording_restore(self, ckpt):
        original(self, ckpt)
        restored.append({"state": dataclasses.asdict(self.state), "params": self.model.flat.copy(),
                         "optimizer": {k: v.copy() for k, v in self.optimizer.state.items()},
                         "t": self.optimizer.t, "h": self.h.copy(), "rng": self.rng.bit_generator.state})

    monkeypatch.setattr(Run, "restore", recording_restore)
    run = tmp_path / "r"
    train(small_corpus, run, dict(SMALL, max_steps=5, optimizer="sgd", lr=0.1))
    assert restored == []
    train(small_corpus, run, {"max_steps": 40, "lr": 400.0, "clip": 0.0, "checkpoint_every": 100,
                              "on_divergence": "rollback", "max_rollbacks": 30}, resume=True, allow_change=True)
    assert len(restored) >= 2  # the resume, then at least one rollback to the same step-5 checkpoint
    resumed, rolled_back = restored[0], restored[1]
    assert resumed["state"]["step"] == rolled_back["state"]["step"] == resumed["t"] == rolled_back["t"] == 5
    assert resumed["state"] == rolled_back["state"] and resumed["rng"] == rolled_back["rng"]
    for name in ("params", "h"):
        np.testing.assert_array_equal(resumed[name], rolled_back[name])
    assert resumed["optimizer"].keys() == rolled_back["optimizer"].keys()
    for name in resumed["optimizer"]:
        np.testing.assert_array_equal(resumed["optimizer"][name], rolled_back["optimizer"][name])


def test_last_step_and_final_evaluation_always_reach_the_log(small_corpus, tmp_path):
    # 7 steps, a row every 5: the last step (7) and the final evaluation are still logged
    summary = train(small_corpus, tmp_path / "a", dict(SMALL, max_steps=7, log_every=5))
    rows = log_rows(tmp_path / "a")
    assert [r["step"] for r in rows] == [5, 7]
    assert "val_loss" not in rows[0] and rows[1]["val_loss"] == pytest.approx(summary["val_loss"])
    # the last step already has a row: it gains the final val loss, no second row for the step
    train(small_corpus, tmp_path / "b", dict(SMALL, max_steps=6, log_every=3))
    rows = log_rows(tmp_path / "b")
    assert [r["step"] for r in rows] == [3, 6] and "val_loss" in rows[1] and "val_loss" not in rows[0]


def test_summary_names_the_best_checkpoint(small_corpus, tmp_path):
    summary = train(small_corpus, tmp_path / "r", dict(SMALL, max_steps=6, eval_every=2, log_every=2))
    rows = [r for r in log_rows(tmp_path / "r") if "val_loss" in r]
    best = min(rows, key=lambda r: r["val_loss"])
    assert summary["best_step"] == best["step"] and summary["best_val"] == pytest.approx(best["val_loss"])
    assert summary["best_checkpoint"] == os.path.join(tmp_path / "r", ckpt_io.BEST_NAME)
    assert ckpt_io.load(summary["best_checkpoint"]).state["step"] == best["step"]


def test_fit_leaves_the_callers_thread_counts_as_they_were(tmp_path):
    """CharRNN(threads=1).fit(...) runs on one thread and puts numba's and BLAS's counts back afterwards (a
    notebook's later work is not left on one thread)."""
    import numba
    from threadpoolctl import threadpool_info

    from conftest import make_text
    from fastrnn.api import CharRNN

    import fastrnn.kernels  # noqa: F401  (the BLAS libraries a run loads, loaded before counting)

    blas = lambda: {p["filepath"]: p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}  # noqa
    numba.set_num_threads(2)
    before = (numba.get_num_threads(), blas())
    seen = []
    CharRNN(threads=1, hidden_size=8, batch_size=4, seq_len=8, max_steps=3, eval_every=0).fit(
        text=make_text(3000), on_event=lambda kind, data: seen.append(numba.get_num_threads()))
    after = blas()  # (a library loaded during the run, such as SciPy's OpenBLAS, keeps its own count)
    assert 1 in seen and numba.get_num_threads() == before[0] and {k: after[k] for k in before[1]} == before[1]


@pytest.mark.parametrize("options,message", [
    (dict(optimizer="adam", momentum=0.9), "--momentum has no effect with --optimizer adam"),
    (dict(optimizer="sgd", beta1=0.5), "--beta1 has no effect with --optimizer sgd"),
    (dict(hidden_size=32.5), "--hidden-size must be a whole number, got 32.5"),
    (dict(hidden_size=True), "--hidden-size must be a whole number, got True"),
    (dict(lr="fast"), "--lr must be a number"),
    (dict(keep_checkpoints=-1), "--keep-checkpoints must be >= 1"),
])
def test_the_api_refuses_what_the_command_line_refuses(options, message, tmp_path):
    from conftest import make_text
    from fastrnn.api import CharRNN
    from fastrnn.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        CharRNN(**dict(dict(hidden_size=8, batch_size=4, seq_len=8, max_steps=2, eval_every=0), **options)).fit(
            text=make_text(2000), run_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r" / "checkpoint.h5").exists()


def test_a_keep_checkpoints_of_zero_reads_as_one_as_it_always_meant():
    from fastrnn.config import TrainConfig

    assert TrainConfig(keep_checkpoints=0).validate().keep_checkpoints == 1
