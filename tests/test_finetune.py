"""Fine-tuning and foreign corpora: `prepare --vocab-from` (ids identical to the parent's), `train --init-from`
(the first step scores the new batch with the parent's parameters), `prepare --from-torch-rnn` (torch-rnn's
preprocess.py files, converted with their splits)."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from fastrnn import reference as ref
from fastrnn.api import CharRNN, load_model
from fastrnn.cli import main
from fastrnn.corpus import BatchStream, open_corpus

from conftest import make_text

TINY = ["--hidden-size", "16", "--seq-len", "10", "--batch-size", "4", "--model", "gru", "--num-layers", "2",
        "--dtype", "float64"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def one_line_error(result, *needles):
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("fastrnn: error:"), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def parent(small_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("parent") / "run"
    ok(run("train", small_corpus, "-o", d, *TINY, "--max-steps", "20", "--eval-every", "10"))
    return d


def all_ids(path):
    with open_corpus(path) as c:
        return c.vocab, np.concatenate([np.asarray(c.split(s)) for s in ("train", "val", "test")])


# --------------------------------------------------------------------------------------- prepare --vocab-from

def test_vocab_from_gives_the_parents_ids(parent, small_corpus, tmp_path):
    text = "The dog ran.\nA cat.\n" * 300  # a subset of the parent's symbols
    (tmp_path / "new.txt").write_text(text)
    for source in (small_corpus, parent, parent / "best.h5"):
        out = tmp_path / "new.h5"
        ok(run("prepare", tmp_path / "new.txt", "-o", out, "--vocab-from", source, "--force"))
        vocab, ids = all_ids(out)
        assert vocab == open_corpus(small_corpus).vocab
        assert vocab.decode(ids) == text
    # prepared on its own, the same text has a smaller vocabulary: other ids
    ok(run("prepare", tmp_path / "new.txt", "-o", tmp_path / "own.h5"))
    assert all_ids(tmp_path / "own.h5")[0].size < vocab.size


def test_symbols_outside_the_vocabulary(small_corpus, tmp_path):
    src = tmp_path / "new.txt"
    src.write_text("the cat\nsat on a mat\u00e9 and the dog\u00e9\u00df ran\n" * 50)
    line = one_line_error(run("prepare", src, "-o", tmp_path / "x.h5", "--vocab-from", small_corpus),
                          "'\u00e9' (U+00E9)", "character 20 of", "--unknown skip")
    assert str(src) in line
    assert not (tmp_path / "x.h5").exists()

    r = ok(run("prepare", src, "-o", tmp_path / "skip.h5", "--vocab-from", small_corpus, "--unknown", "skip"))
    assert "150 symbols outside it left out" in r.output
    vocab, ids = all_ids(tmp_path / "skip.h5")
    assert vocab.decode(ids) == src.read_text().replace("\u00e9", "").replace("\u00df", "")
    assert open_corpus(tmp_path / "skip.h5").info()["options"]["skipped"] == 150

    ok(run("prepare", src, "-o", tmp_path / "rep.h5", "--vocab-from", small_corpus, "--unknown", "replace",
           "--replace-with", "\\n"))
    vocab, ids = all_ids(tmp_path / "rep.h5")
    assert vocab.decode(ids) == src.read_text().replace("\u00e9", "\n").replace("\u00df", "\n")

    one_line_error(run("prepare", src, "-o", tmp_path / "y.h5", "--vocab-from", small_corpus, "--unknown", "replace",
                       "--replace-with", "\u00e9"), "--replace-with", "not in the vocabulary")
    one_line_error(run("prepare", src, "-o", tmp_path / "y.h5", "--vocab-from", small_corpus, "--unknown",
                       "replace"), "needs --replace-with")
    one_line_error(run("prepare", src, "-o", tmp_path / "y.h5", "--unknown", "skip"), "--vocab-from")
    one_line_error(run("prepare", src, "-o", tmp_path / "y.h5", "--vocab-from", tmp_path / "none.h5"),
                   "does not exist")
    one_line_error(run("prepare", src, "-o", tmp_path / "y.h5", "--vocab-from", small_corpus, "--level", "byte"),
                   "char-level vocabulary")


def test_vocab_from_on_the_non_utf8_path(small_corpus, tmp_path):
    """Lowercasing reads through Python's decoder, not the fused UTF-8 loop: the same errors and skips."""
    src = tmp_path / "new.txt"
    src.write_text("THE CAT\u00c9 SAT\n" * 40)
    one_line_error(run("prepare", src, "-o", tmp_path / "x.h5", "--vocab-from", small_corpus, "--lowercase"),
                   "'\u00e9' (U+00E9)", "character 7 of")
    ok(run("prepare", src, "-o", tmp_path / "x.h5", "--vocab-from", small_corpus, "--lowercase", "--unknown",
           "skip"))
    vocab, ids = all_ids(tmp_path / "x.h5")
    assert vocab.decode(ids) == "the cat sat\n" * 40


# ------------------------------------------------------------------------------------------ train --init-from

def test_fine_tuning_starts_from_the_parents_parameters(parent, small_corpus, tmp_path):
    (tmp_path / "new.txt").write_text(make_text(8000, seed=5).replace("cat", "bat"))
    new = tmp_path / "new.h5"
    ok(run("prepare", tmp_path / "new.txt", "-o", new, "--vocab-from", parent))
    child = tmp_path / "child"
    r = ok(run("train", new, "-o", child, "--init-from", parent / "best.h5", "--batch-size", "4", "--seq-len", "10",
               "--max-steps", "5", "--log-every", "1", "--lr", "0.0005", "--optimizer", "rmsprop"))
    assert "initialised from" in r.output
    first = json.loads((child / "log.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1

    # the first step's loss is the parent's loss on the new corpus's first batch, from a zero state
    model, _, _ = load_model(parent / "best.h5")
    with open_corpus(new) as c:
        x, y = BatchStream(c.split("train"), 4, 10).batch(0, 0)
        loss, _ = ref.forward_loss(model.P, x, y, model.zero_state(4))
    assert first["batch_loss"] == pytest.approx(loss, rel=1e-9)

    ckpt_model, _, ckpt = load_model(child)
    assert ckpt.config["model"] == "gru" and ckpt.config["num_layers"] == 2 and ckpt.config["dtype"] == "float64"
    assert ckpt.state["step"] == 5 and ckpt.state["init_from"].endswith("best.h5 at step " +
                                                                         str(load_model(parent / "best.h5")[2]
                                                                             .state["step"]))
    info = json.loads(ok(run("info", child, "--json")).stdout)
    assert info["training"]["init_from"] == ckpt.state["init_from"]
    assert info["training"]["corpus"] == str(new)
    # a resumed fine-tuning run keeps its record
    ok(run("train", new, "-o", child, "--resume", "--max-steps", "7"))
    assert load_model(child)[2].state["init_from"] == ckpt.state["init_from"]


def test_init_from_refuses_what_cannot_work(parent, small_corpus, tmp_path):
    one_line_error(run("train", small_corpus, "-o", tmp_path / "a", "--init-from", parent, "--hidden-size", "32"),
                   "--hidden-size 32 conflicts", "architecture")
    one_line_error(run("train", small_corpus, "-o", tmp_path / "a", "--init-from", parent, "--model", "lstm"),
                   "--model lstm conflicts")
    one_line_error(run("train", small_corpus, "-o", tmp_path / "a", "--init-from", parent, "--init", "xavier"),
                   "--init has no effect")
    one_line_error(run("train", small_corpus, "-o", tmp_path / "a", "--init-from", tmp_path / "nothing"),
                   "not found")
    (tmp_path / "other.txt").write_text("xyz, xyz; " * 2000)
    ok(run("prepare", tmp_path / "other.txt", "-o", tmp_path / "other.h5"))
    one_line_error(run("train", tmp_path / "other.h5", "-o", tmp_path / "b", "--init-from", parent, "--batch-size",
                       "4", "--seq-len", "10"), "vocabulary", "--vocab-from")
    assert not (tmp_path / "b").exists()
    ok(run("train", small_corpus, "-o", tmp_path / "c", *TINY, "--max-steps", "1"))
    one_line_error(run("train", small_corpus, "-o", tmp_path / "c", "--resume", "--init-from", parent),
                   "--init-from starts a new run")


def test_the_api_fine_tunes(parent, tmp_path):
    text = make_text(6000, seed=3)
    m = CharRNN(batch_size=4, seq_len=10).fit(text=text + "\u00e9", init_from=parent, unknown="skip",
                                              max_steps=3, run_dir=str(tmp_path / "api"))
    assert m.model.model == "gru" and m._ckpt.state["init_from"]


# ----------------------------------------------------------------------------------- prepare --from-torch-rnn

def torch_rnn_files(text, stem, val_frac=0.1, test_frac=0.1, as_bytes=False):
    """NAME.h5 and NAME.json as torch-rnn's scripts/preprocess.py writes them: ids 1.. in order of first
    appearance, uint8 up to 255 tokens and uint32 past that, splits train/val/test in file order, and with
    --encoding bytes the tokens above 127 written as "[N]"."""
    tokens = list(text.encode("latin-1")) if as_bytes else list(text)
    token_to_idx = {}
    for t in tokens:
        token_to_idx.setdefault(t, len(token_to_idx) + 1)
    dtype = np.uint8 if len(token_to_idx) <= 255 else np.uint32
    ids = np.array([token_to_idx[t] for t in tokens], dtype=dtype)
    n_val, n_test = int(val_frac * len(ids)), int(test_frac * len(ids))
    n_train = len(ids) - n_val - n_test
    with h5py.File(f"{stem}.h5", "w") as f:
        f.create_dataset("train", data=ids[:n_train])
        f.create_dataset("val", data=ids[n_train:n_train + n_val])
        f.create_dataset("test", data=ids[n_train + n_val:])
    if as_bytes:
        token_to_idx = {(f"[{t}]" if t > 127 else chr(t)): i for t, i in token_to_idx.items()}
    with open(f"{stem}.json", "w") as f:
        json.dump({"token_to_idx": token_to_idx, "idx_to_token": {v: k for k, v in token_to_idx.items()}}, f)
    return n_train, n_val, n_test


@pytest.mark.parametrize("symbols", [60, 400], ids=["uint8", "uint32"])
def test_a_torch_rnn_corpus_converts_with_its_splits(tmp_path, symbols):
    rng = np.random.default_rng(symbols)
    alphabet = [chr(c) for c in range(0x20, 0x20 + symbols)]
    text = "".join(rng.choice(alphabet, 5000)) + "".join(alphabet)
    stem = str(tmp_path / "shake")
    n_train, n_val, n_test = torch_rnn_files(text, stem)
    assert h5py.File(f"{stem}.h5")["train"].dtype == (np.uint8 if symbols < 256 else np.uint32)
    one_line_error(run("train", f"{stem}.h5", "-o", tmp_path / "r"), "--from-torch-rnn")
    out = tmp_path / "c.h5"
    r = ok(run("prepare", "--from-torch-rnn", f"{stem}.h5", f"{stem}.json", "-o", out))
    assert f"{symbols} symbols" in r.output
    with open_corpus(out) as c:
        assert [len(c.split(s)) for s in ("train", "val", "test")] == [n_train, n_val, n_test]
        assert c.vocab.decode(np.concatenate([np.asarray(c.split(s)) for s in ("train", "val", "test")])) == text
        assert c.vocab.symbols == sorted(set(text))
    ok(run("info", out, "--verify"))


def test_a_bytes_torch_rnn_corpus_becomes_byte_level(tmp_path):
    text = "caf\u00e9 na\u00efve \u00fcber " * 100
    stem = str(tmp_path / "b")
    torch_rnn_files(text, stem, as_bytes=True)
    ok(run("prepare", "--from-torch-rnn", f"{stem}.h5", f"{stem}.json", "-o", tmp_path / "c.h5"))
    vocab, ids = all_ids(tmp_path / "c.h5")
    assert vocab.level == "byte" and vocab.decode_bytes(ids) == text.encode("latin-1")


def test_torch_rnn_inputs_that_are_wrong(tmp_path):
    stem = str(tmp_path / "t")
    torch_rnn_files("abcabcabd" * 50, stem)
    out = tmp_path / "c.h5"
    one_line_error(run("prepare", "--from-torch-rnn", f"{stem}.json", f"{stem}.h5", "-o", out), "not an HDF5")
    one_line_error(run("prepare", "--from-torch-rnn", f"{stem}.h5", f"{stem}.h5", "-o", out), "not JSON")
    one_line_error(run("prepare", "x.txt", "--from-torch-rnn", f"{stem}.h5", f"{stem}.json", "-o", out),
                   "no text INPUTS")
    one_line_error(run("prepare", "--from-torch-rnn", f"{stem}.h5", f"{stem}.json", "-o", out, "--val-frac", "0.2"),
                   "--val-frac has no effect")
    meta = json.loads(open(f"{stem}.json").read())
    meta["idx_to_token"]["5"] = "ab"
    with open(tmp_path / "syl.json", "w") as f:
        json.dump(meta, f)
    one_line_error(run("prepare", "--from-torch-rnn", f"{stem}.h5", tmp_path / "syl.json", "-o", out),
                   "'ab'", "not one character")
    with h5py.File(f"{stem}.h5", "r+") as f:
        f["val"][3] = 9
    one_line_error(run("prepare", "--from-torch-rnn", f"{stem}.h5", f"{stem}.json", "-o", out),
                   "id 9 at position 3 of its val split")
    assert not out.exists() and not list(tmp_path.glob(".c.h5*"))


def test_the_commands_from_the_installed_entry_point(parent, tmp_path):
    (tmp_path / "n.txt").write_text(make_text(3000, seed=9))
    r = subprocess.run([sys.executable, "-m", "fastrnn", "prepare", str(tmp_path / "n.txt"), "-o",
                        str(tmp_path / "n.h5"), "--vocab-from", str(parent)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "fastrnn", "prepare", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert "--vocab-from" in r.stdout and "--from-torch-rnn" in r.stdout and "[default: error]" in r.stdout


def test_torch_rnn_ids_are_shown_as_they_are_and_a_sparse_table_costs_no_memory(tmp_path):
    """A uint64 id of 2^63 or more is named as it is (not wrapped negative); a vocabulary whose ids run up to
    about 2e9 converts without a table of that size (the lookup is sized by the vocabulary)."""
    import psutil

    stem = str(tmp_path / "big")
    with h5py.File(f"{stem}.h5", "w") as f:
        for name, n in (("train", 200), ("val", 20), ("test", 20)):
            f.create_dataset(name, data=np.array([1, 2_000_000_000] * (n // 2), dtype=np.uint64))
    with open(f"{stem}.json", "w") as f:
        json.dump({"idx_to_token": {"1": "a", "2000000000": "b"}}, f)
    out = tmp_path / "c.h5"
    before = psutil.Process().memory_info().rss
    ok(run("prepare", "--from-torch-rnn", f"{stem}.h5", f"{stem}.json", "-o", out))
    assert psutil.Process().memory_info().rss - before < 200e6  # a table by the largest id: 16 GB
    vocab, ids = all_ids(out)
    assert vocab.decode(ids) == "ab" * 120
    with h5py.File(f"{stem}.h5", "r+") as f:
        f["val"][3] = 2 ** 64 - 2
    one_line_error(run("prepare", "--from-torch-rnn", f"{stem}.h5", f"{stem}.json", "-o", tmp_path / "d.h5"),
                   f"id {2 ** 64 - 2} at position 3 of its val split")
    with open(f"{stem}.json", "w") as f:  # the vocabulary itself names an id over int64's range
        json.dump({"idx_to_token": {"1": "a", "2000000000": "b", str(2 ** 64 - 1): "c"}}, f)
    one_line_error(run("prepare", "--from-torch-rnn", f"{stem}.h5", f"{stem}.json", "-o", tmp_path / "e.h5"),
                   f"the id {2 ** 64 - 1}, over 2^63 - 1")
