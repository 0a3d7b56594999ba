"""`fastrnn eval`: the score of a text or a corpus split, streamed, equals the reference computed in one pass."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from fastrnn import evaluate as ev
from fastrnn import reference as ref
from fastrnn.api import load_model
from fastrnn.cli import main
from fastrnn.corpus import open_corpus

from conftest import make_text

SMALL = ["--hidden-size", "16", "--seq-len", "10", "--batch-size", "4", "--model", "lstm", "--num-layers", "2",
         "--dtype", "float64"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("eval") / "run"
    r = run("train", small_corpus, "-o", d, *SMALL, "--max-steps", "30", "--eval-every", "0")
    assert r.exit_code == 0, r.output
    return d


def reference_loss(run_dir, ids):
    """Mean loss of predicting ids[1:] from ids[:-1] in one pass of the NumPy reference, from a zero state."""
    model, _, _ = load_model(run_dir)
    x, y = ids[None, :-1].astype(np.int32), ids[None, 1:].astype(np.int32)
    loss, _ = ref.forward_loss(model.P, x, y, model.zero_state(1))
    return loss


def scored(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_file_longer_than_a_window_and_a_read_scores_as_one_pass(trained, tmp_path, monkeypatch):
    """Read 700 characters and score 256 at a time: the state carried across both gives the one-pass loss."""
    monkeypatch.setattr(ev, "READ_CHARS", 700)
    text = make_text(3000, seed=5)
    path = tmp_path / "held-out.txt"
    path.write_text(text)
    got = scored(run("eval", trained, path, "--json", "--backend", "numpy"))
    _, vocab, _ = load_model(trained)
    assert got["chars"] == len(text) - 1 and got["skipped"] == 0
    expect = reference_loss(trained, vocab.encode(text))
    assert abs(got["loss"] - expect) < 1e-10
    monkeypatch.setattr(ev, "WINDOW", 256)
    numba = scored(run("eval", trained, path, "--json"))
    assert abs(numba["loss"] - expect) < 1e-9
    assert abs(numba["bpc"] - expect / np.log(2)) < 1e-9 and abs(numba["perplexity"] - np.exp(expect)) < 1e-6
    two = tmp_path / "b.txt"
    two.write_text(text[1000:])
    (tmp_path / "a.txt").write_text(text[:1000])
    both = scored(run("eval", trained, tmp_path / "a.txt", two, "--json"))  # two files are one stream
    assert abs(both["loss"] - expect) < 1e-9 and both["chars"] == len(text) - 1


def test_a_corpus_split(trained, small_corpus):
    with open_corpus(small_corpus) as corpus:
        test_ids, val_ids = np.array(corpus.split("test")), np.array(corpus.split("val"))
    got = scored(run("eval", trained, small_corpus, "--json"))  # the test split by default
    assert got["chars"] == test_ids.size - 1 and abs(got["loss"] - reference_loss(trained, test_ids)) < 1e-9
    val = scored(run("eval", trained, small_corpus, "--split", "val", "--json"))
    assert abs(val["loss"] - reference_loss(trained, val_ids)) < 1e-9
    text = run("eval", trained, small_corpus)
    assert text.exit_code == 0 and "bits/char" in text.stdout and "test split" in text.stdout


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fastrnn: error:"), err
    for fragment in fragments:
        assert fragment in err, err


def test_unknown_characters_are_an_error_or_skipped(trained, tmp_path):
    text = make_text(500, seed=2)
    path = tmp_path / "odd.txt"
    path.write_text(text[:100] + "Z" + text[100:200] + "Q" + text[200:])
    one_line_error(run("eval", trained, path), "'Z'", "character 100", "--unknown skip")
    got = scored(run("eval", trained, path, "--unknown", "skip", "--json"))
    _, vocab, _ = load_model(trained)
    assert got["skipped"] == 2 and got["chars"] == len(text) - 1
    assert abs(got["loss"] - reference_loss(trained, vocab.encode(text))) < 1e-9


def test_bad_inputs_are_one_line(trained, small_corpus, tmp_path):
    one_line_error(run("eval", trained, tmp_path / "missing.txt"), "does not exist")
    one_line_error(run("eval", tmp_path / "norun", small_corpus), "not found")
    one_line_error(run("eval", trained, small_corpus, small_corpus), "one corpus alone")
    (tmp_path / "bad.txt").write_bytes(b"the cat \xff\xfe sat")
    one_line_error(run("eval", trained, tmp_path / "bad.txt"), "not valid utf-8")
    (tmp_path / "one.txt").write_text("t")
    one_line_error(run("eval", trained, tmp_path / "one.txt"), "fewer than 2")
    other = tmp_path / "other.h5"
    (tmp_path / "other.txt").write_text("xyz xyz xyz " * 200)
    assert run("prepare", tmp_path / "other.txt", "--output", other).exit_code == 0
    one_line_error(run("eval", trained, other), "vocabulary")


def test_a_checkpoint_with_non_finite_parameters_is_refused(trained, small_corpus, tmp_path):
    """fastrnn never writes such a checkpoint, but an older one could hold one: make it by hand."""
    from conftest import write_nonfinite_checkpoint

    bad = tmp_path / "nan.h5"
    write_nonfinite_checkpoint(trained / "checkpoint.h5", bad)
    one_line_error(run("eval", bad, small_corpus), "non-finite")
    one_line_error(run("export", bad, "-o", tmp_path / "m.npz"), "non-finite")
    assert not (tmp_path / "m.npz").exists()


def test_eval_from_the_installed_entry_point(trained, small_corpus):
    r = subprocess.run([sys.executable, "-m", "fastrnn", "eval", str(trained), small_corpus, "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["chars"] > 0


def test_the_api_scores_text_files_and_splits_as_the_cli(trained, small_corpus, tmp_path):
    from fastrnn.api import CharRNN
    from fastrnn.errors import ConfigError

    model = CharRNN.load(trained)
    text = make_text(2000, seed=9)
    (tmp_path / "t.txt").write_text(text)
    cli = scored(run("eval", trained, tmp_path / "t.txt", "--json"))
    for result in (model.evaluate(text), model.evaluate(files=tmp_path / "t.txt"),
                   model.evaluate(files=[str(tmp_path / "t.txt")])):
        assert result["chars"] == cli["chars"] and abs(result["loss"] - cli["loss"]) < 1e-9
    split = model.evaluate(corpus=small_corpus, split="val")
    assert abs(split["loss"] - scored(run("eval", trained, small_corpus, "--split", "val", "--json"))["loss"]) < 1e-9
    with pytest.raises(ConfigError):
        model.evaluate(text, corpus=small_corpus)


@pytest.mark.parametrize("encoding,fragment", [("utf-16", "not valid utf-16 text"), ("rot13", "not a text encoding"),
                                               ("base64", "not a text encoding"), ("no-such", "unknown encoding")])
def test_an_encoding_that_cannot_read_the_file_is_one_line(trained, tmp_path, encoding, fragment):
    """As prepare checks it: a UTF-16 file without its byte-order mark, a codec that does not decode bytes to
    text, an unknown name."""
    text = tmp_path / "t.txt"
    text.write_text("the cat sat\n")
    one_line_error(run("eval", trained, text, "--encoding", encoding), fragment)


def test_an_lnlstm_scores_as_the_reference(small_corpus, tmp_path):
    d = tmp_path / "run"
    opts = [a if a != "lstm" else "lnlstm" for a in SMALL]
    assert run("train", small_corpus, "-o", d, *opts, "--max-steps", "5", "--eval-every", "0").exit_code == 0
    text = make_text(1500, seed=6)
    path = tmp_path / "held-out.txt"
    path.write_text(text)
    _, vocab, _ = load_model(d)
    expect = reference_loss(d, vocab.encode(text))
    for backend in ("numpy", "numba"):
        got = scored(run("eval", d, path, "--json", "--backend", backend))
        assert abs(got["loss"] - expect) < 1e-9 and got["chars"] == len(text) - 1, backend
