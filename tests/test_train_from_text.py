"""`fastrnn train TEXT`: text files and directories are prepared once into the cache and reused while unchanged."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_text
from fastrnn import checkpoint as ckpt_io
from fastrnn.cli import main
from fastrnn.corpus import fromtext, open_corpus, prepare

SMALL = ["--hidden-size", "16", "--seq-len", "10", "--batch-size", "4", "--log-every", "5", "--eval-every", "5"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache directory of this test's own."""
    root = tmp_path / "cache"
    monkeypatch.setenv("FASTRNN_CACHE_DIR", str(root))
    return root / "corpora"


def corpora(cache):
    return sorted(p.name for p in cache.glob("*.h5"))


def test_a_text_file_is_prepared_once_and_reused_while_unchanged(tmp_path, cache):
    book = tmp_path / "book.txt"
    book.write_text(make_text(20_000, seed=1), encoding="utf-8")
    first = run("train", book, "-o", tmp_path / "a", *SMALL, "--max-steps", "5")
    assert first.exit_code == 0, first.output
    assert f"corpus: prepared {book} into" in first.stderr and "later runs reuse it" in first.stderr
    (made,) = corpora(cache)
    assert made.startswith("book-")
    with open_corpus(cache / made) as c:  # prepare's defaults: the same corpus `fastrnn prepare book.txt` writes
        prepare([str(book)], tmp_path / "by-hand.h5")
        with open_corpus(tmp_path / "by-hand.h5") as d:
            assert c.vocab == d.vocab and c.info()["train_tokens"] == d.info()["train_tokens"]
            assert np.array_equal(c.split("train")[:], d.split("train")[:])
    second = run("train", book, "-o", tmp_path / "b", *SMALL, "--max-steps", "5")
    assert second.exit_code == 0, second.output
    assert f"corpus: {book} prepared earlier, unchanged since: {cache / made}" in second.stderr
    assert corpora(cache) == [made]
    # the same text gives the same run as the prepared corpus does
    by_hand = run("train", tmp_path / "by-hand.h5", "-o", tmp_path / "c", *SMALL, "--max-steps", "5")
    assert by_hand.exit_code == 0, by_hand.output
    a, c = (ckpt_io.load(str(tmp_path / d / "checkpoint.h5")) for d in ("a", "c"))
    assert np.array_equal(a.params, c.params) and a.state["step"] == c.state["step"] == 5


def test_an_edited_text_is_prepared_anew_and_a_resume_reads_the_same_corpus(tmp_path, cache):
    book = tmp_path / "book.txt"
    book.write_text(make_text(20_000, seed=2), encoding="utf-8")
    r = run("train", book, "-o", tmp_path / "run", *SMALL, "--max-steps", "5")
    assert r.exit_code == 0, r.output
    resumed = run("train", book, "-o", tmp_path / "run", *SMALL, "--max-steps", "10", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "prepared earlier" in resumed.stderr and "step 10/10" in resumed.stderr
    assert len(corpora(cache)) == 1
    with open(book, "a", encoding="utf-8") as f:
        f.write("More text, and a new symbol: ~\n")
    again = run("train", book, "-o", tmp_path / "other", *SMALL, "--max-steps", "5")
    assert again.exit_code == 0, again.output
    assert "corpus: prepared" in again.stderr
    assert len(corpora(cache)) == 2


def test_a_directory_of_text_files_is_a_corpus_too(tmp_path, cache):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(3):
        (folder / f"part{i}.txt").write_text(make_text(8_000, seed=10 + i), encoding="utf-8")
    r = run("train", folder, "-o", tmp_path / "run", *SMALL, "--max-steps", "5", "--quiet")
    assert r.exit_code == 0, r.output
    assert "corpus:" not in r.stderr  # --quiet: the final summary only
    (made,) = corpora(cache)
    assert made.startswith("texts-")


def test_text_that_prepare_refuses_is_one_line_and_caches_nothing(tmp_path, cache):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 100)
    r = run("train", bad, "-o", tmp_path / "run", *SMALL, "--max-steps", "5")
    assert r.exit_code != 0
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fastrnn: error:") and "utf-8" in err and "fastrnn prepare" in err, err
    assert corpora(cache) == [] and not (tmp_path / "run").exists()


def test_a_corpus_file_is_used_as_it_is(small_corpus, cache):
    assert not fromtext.is_text_input(small_corpus)
    assert fromtext.is_text_input(os.path.dirname(small_corpus))
    assert not fromtext.is_text_input(os.path.join(os.path.dirname(small_corpus), "missing.txt"))


def test_processes_asking_for_the_same_text_at_once_prepare_it_once(tmp_path, cache):
    book = tmp_path / "book.txt"
    book.write_text(make_text(400_000, seed=3), encoding="utf-8")
    code = ("import sys; from fastrnn.corpus import fromtext; "
            "print(fromtext.cached_corpus([sys.argv[1]], say=lambda line: print(line, file=sys.stderr)))")
    env = dict(os.environ, FASTRNN_CACHE_DIR=str(cache.parent))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(book)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({out for out, _ in outs}) == 1
    said = [err for _, err in outs]
    assert sum("corpus: prepared" in e for e in said) == 1 and sum("prepared earlier" in e for e in said) == 2
    (made,) = corpora(cache)
    with h5py.File(cache / made, "r"):
        pass
