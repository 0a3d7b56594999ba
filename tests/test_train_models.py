"""Training every model (rnn, gru, lstm, lnlstm; 1 and 2 layers; dropout) end to end: backends agree, resume is exact
with dropout, checkpoints record the model, resuming with another model is refused, sample works for all."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from fastrnn import checkpoint as ckpt_io
from fastrnn.api import load_model
from fastrnn.cli import main
from fastrnn.errors import CheckpointError, ConfigError
from fastrnn.train import train

SMALL = dict(hidden_size=12, seq_len=8, batch_size=4, log_every=1, eval_every=0, checkpoint_every=0)
MODELS = [("rnn", 2), ("gru", 1), ("gru", 2), ("lstm", 1), ("lstm", 2), ("lnlstm", 1), ("lnlstm", 2)]


def losses_of(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line)["batch_loss"] for line in f]


@pytest.mark.parametrize("model,layers", MODELS)
def test_backends_give_the_same_losses(small_corpus, tmp_path, model, layers):
    losses = {}
    for backend in ("numpy", "numba"):
        run = tmp_path / backend
        train(small_corpus, run, dict(SMALL, model=model, num_layers=layers, dropout=0.25, max_steps=12,
                                      backend=backend, dtype="float64"))
        losses[backend] = losses_of(run)
        assert len(losses[backend]) == 12
    np.testing.assert_allclose(losses["numba"], losses["numpy"], rtol=1e-9)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("model", ["gru", "lstm", "lnlstm"])
def test_resume_with_dropout_is_exact(small_corpus, tmp_path, model, backend):
    opts = dict(SMALL, model=model, num_layers=2, dropout=0.3, backend=backend, optimizer="rmsprop")
    train(small_corpus, tmp_path / "full", dict(opts, max_steps=10))
    train(small_corpus, tmp_path / "part", dict(opts, max_steps=4))
    train(small_corpus, tmp_path / "part", dict(opts, max_steps=10), resume=True)
    assert losses_of(tmp_path / "part") == losses_of(tmp_path / "full")
    np.testing.assert_array_equal(ckpt_io.load(tmp_path / "part").params, ckpt_io.load(tmp_path / "full").params)
    np.testing.assert_array_equal(ckpt_io.load(tmp_path / "part").hidden, ckpt_io.load(tmp_path / "full").hidden)


def test_dropout_changes_training_and_is_seeded(small_corpus, tmp_path):
    base = dict(SMALL, model="lstm", num_layers=2, max_steps=5, backend="numpy")
    train(small_corpus, tmp_path / "a", dict(base, dropout=0.5, seed=1))
    train(small_corpus, tmp_path / "b", dict(base, dropout=0.5, seed=1))
    train(small_corpus, tmp_path / "c", dict(base, dropout=0.0, seed=1))
    assert losses_of(tmp_path / "a") == losses_of(tmp_path / "b")
    assert losses_of(tmp_path / "a")[1:] != losses_of(tmp_path / "c")[1:]


def test_checkpoint_records_model_and_resume_refuses_another(small_corpus, tmp_path):
    run = tmp_path / "run"
    train(small_corpus, run, dict(SMALL, model="lstm", num_layers=2, max_steps=2))
    model, vocab, ckpt = load_model(run)
    assert (model.model, model.num_layers, model.hidden_size) == ("lstm", 2, 12)
    assert ckpt.hidden.shape == (4, 2 * 2 * 12)  # (N, S): h and c of two layers
    for change in (dict(model="gru"), dict(num_layers=1), dict(hidden_size=16), dict(dropout=0.1)):
        with pytest.raises(ConfigError, match="differs from the checkpoint"):
            train(small_corpus, run, dict(dict(SMALL, model="lstm", num_layers=2, max_steps=4), **change),
                  resume=True)


def test_checkpoint_whose_parameters_do_not_fit_is_refused(small_corpus, tmp_path):
    run = tmp_path / "run"
    train(small_corpus, run, dict(SMALL, model="gru", max_steps=2))
    ckpt = ckpt_io.load(run)
    ckpt.config["model"] = "lstm"  # a checkpoint edited by hand: the buffer no longer fits
    ckpt_io.save(os.path.join(run, ckpt_io.CHECKPOINT_NAME), ckpt)
    with pytest.raises(CheckpointError, match="do not fit"):
        train(small_corpus, run, dict(SMALL, model="lstm", max_steps=4), resume=True)


@pytest.mark.parametrize("model", ["gru", "lstm", "lnlstm"])
def test_train_then_sample_through_the_cli(small_corpus, tmp_path, model):
    run = str(tmp_path / "run")
    runner = CliRunner()
    result = runner.invoke(main, ["train", small_corpus, "-o", run, "--model", model, "--num-layers", "2",
                                  "--dropout", "0.1", "--hidden-size", "16", "--batch-size", "8", "--seq-len",
                                  "16", "--max-steps", "30", "--eval-every", "10", "--quiet"])
    assert result.exit_code == 0, result.output
    for extra in ([], ["--greedy"], ["--beam-width", "3"], ["--top-k", "3"]):
        result = runner.invoke(main, ["sample", run, "--prime", "The cat", "--length", "40", "--seed", "2",
                                      *extra])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("The cat") and len(result.output.rstrip("\n")) >= 40


def test_bad_model_options_are_one_line_errors(small_corpus, tmp_path):
    runner = CliRunner()
    for args, msg in ((["--model", "transformer"], "transformer"), (["--num-layers", "0"], "num-layers"),
                      (["--dropout", "1"], "dropout"), (["--init", "zeros"], "init")):
        result = runner.invoke(main, ["train", small_corpus, "-o", str(tmp_path / "r"), *args])
        assert result.exit_code == 2 and msg in result.output
        assert not (tmp_path / "r").exists()


def test_gru_and_lstm_learn(small_corpus, tmp_path):
    for model in ("gru", "lstm"):
        summary = train(small_corpus, tmp_path / model, dict(SMALL, model=model, hidden_size=32, batch_size=16,
                                                             seq_len=20, max_steps=150, eval_every=150))
        assert summary["val_loss"] < 0.75 * np.log(29), (model, summary)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rmsprop", "adam"])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-9), ("float32", 1e-4)])
def test_every_optimizer_and_dtype_on_a_stacked_lstm(small_corpus, tmp_path, optimizer, dtype, rtol):
    losses = {}
    for backend in ("numpy", "numba"):
        run = tmp_path / backend
        train(small_corpus, run, dict(SMALL, model="lstm", num_layers=2, dropout=0.2, max_steps=6, backend=backend,
                                      dtype=dtype, optimizer=optimizer, momentum=0.5 if optimizer == "sgd" else 0))
        losses[backend] = losses_of(run)
    np.testing.assert_allclose(losses["numba"], losses["numpy"], rtol=rtol)
    assert losses["numba"][-1] < losses["numba"][0]
