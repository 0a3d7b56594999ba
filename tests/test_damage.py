"""Damaged files are found, named, and never trained on: fuzzed checkpoints and corpora (bit flips, zeroed runs,
truncation, half of them in the HDF5 metadata) are each a clean CheckpointError/CorpusError or load identical;
out-of-range ids are refused before a step; `info --verify`; --resume past a damaged newest checkpoint; corpora of
format 1 still open."""

import json
import os
import random
import re
import struct
import subprocess
import sys

import h5py
import numpy as np
import pytest

from fastrnn import checkpoint as ckpt_io
from fastrnn.corpus import open_corpus, prepare
from fastrnn.errors import CheckpointError, CorpusError
from fastrnn.train import train

from conftest import make_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(hidden_size=8, batch_size=2, seq_len=8, eval_every=0, backend="numpy", threads=1, optimizer="adam")
MUTATIONS = 300  # of each kind of file


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "fastrnn", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, **kwargs)


def one_line(r, status, *fragments, after_progress=False):
    """The run ended with status and one error line (after_progress: the last line, after train's banner)."""
    assert r.returncode == status, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert (after_progress or len(lines) == 1) and lines[-1].startswith("fastrnn: error:"), r.stderr
    assert "Traceback" not in r.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def raw_extents(path):
    """(offset, nbytes) of every dataset's raw data in an HDF5 file."""
    out = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                out.append((obj.id.get_offset(), obj.id.get_storage_size()))
        f.visititems(visit)
    return out


def mutations(data, extents, seed, n):
    """n damaged copies of `data`: bit flips, zeroed runs of 1-64 bytes and truncations in turn; half of the
    flips and zeroed runs fall in the HDF5 metadata (outside every dataset's raw data)."""
    rng = random.Random(seed)
    raw = np.zeros(len(data), dtype=bool)
    for offset, nbytes in extents:
        raw[offset: offset + nbytes] = True
    meta = np.flatnonzero(~raw)
    for i in range(n):
        kind = ("flip", "zero", "truncate")[i % 3]
        b = bytearray(data)
        at = int(meta[rng.randrange(len(meta))]) if rng.random() < 0.5 else rng.randrange(len(b))
        if kind == "flip":
            b[at] ^= 1 << rng.randrange(8)
        elif kind == "zero":
            end = min(len(b), at + rng.randint(1, 64))
            b[at:end] = bytes(end - at)
        else:
            del b[rng.randrange(len(b)):]
        if bytes(b) != data:
            yield kind, bytes(b)


def test_fuzzed_checkpoints_are_a_clean_error_or_load_identical(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(make_text(3000))
    prepare([text], tmp_path / "c.h5")
    train(tmp_path / "c.h5", tmp_path / "run", dict(TINY, max_steps=2))
    good = tmp_path / "run" / "checkpoint.h5"
    ref = ckpt_io.load(good)
    data = good.read_bytes()
    outcomes = {"error": 0, "identical": 0}
    bad = tmp_path / "bad.h5"
    for kind, damaged in mutations(data, raw_extents(good), seed=5, n=MUTATIONS):
        bad.write_bytes(damaged)
        try:
            got = ckpt_io.load(bad)
        except CheckpointError as exc:
            assert str(bad) in str(exc)
            outcomes["error"] += 1
            continue
        assert (got.config, got.vocab, got.state) == (ref.config, ref.vocab, ref.state), kind
        for a, b in [(got.params, ref.params), (got.hidden, ref.hidden)] + \
                [(got.optimizer[k], ref.optimizer[k]) for k in ref.optimizer]:
            assert a.dtype == b.dtype and np.array_equal(a, b), kind
        assert got.optimizer.keys() == ref.optimizer.keys()
        outcomes["identical"] += 1
    assert outcomes["error"] > MUTATIONS // 2, outcomes


def test_fuzzed_corpora_are_a_clean_error_or_read_identical(tmp_path):
    # uint16 ids (over 256 symbols), small checksum chunks, so that damage lands in many chunks of every split
    text = tmp_path / "t.txt"
    text.write_text(make_text(4000) + "".join(chr(0x4E00 + i) for i in range(300)) + make_text(2000, seed=1))
    good = tmp_path / "c.h5"
    prepare([text], good, check_chunk=128)

    def read(path):
        with open_corpus(path) as c:
            c.verify()
            info = dict(c.info(), path=None)
            return info, {name: np.array(c.split(name)) for name in ("train", "val", "test")}

    ref_info, ref_splits = read(good)
    assert ref_info["dtype"] == "uint16"
    data = good.read_bytes()
    outcomes = {"error": 0, "identical": 0}
    bad = tmp_path / "bad.h5"
    for kind, damaged in mutations(data, raw_extents(good), seed=6, n=MUTATIONS):
        bad.write_bytes(damaged)
        try:
            info, splits = read(bad)
        except CorpusError as exc:
            assert str(bad) in str(exc)
            outcomes["error"] += 1
            continue
        assert info == ref_info, kind
        for name, ids in ref_splits.items():
            assert splits[name].dtype == ids.dtype and np.array_equal(splits[name], ids), (kind, name)
        outcomes["identical"] += 1
    assert outcomes["error"] > MUTATIONS // 2, outcomes


@pytest.fixture
def corpus_file(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(make_text(20_000))
    path = tmp_path / "c.h5"
    prepare([text], path)
    return path


def poke(path, split, index, value=None):
    """Overwrite token `index` of `split` (uint8 ids) in place with `value` (None: another valid id); returns its
    byte offset in the file."""
    with h5py.File(path, "r") as f:
        offset = f[split].id.get_offset() + index * f[split].dtype.itemsize
        if value is None:
            value = 1 if f[split][index] == 0 else 0
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes([value]))
    return offset


def test_out_of_range_id_refused_before_the_first_step(corpus_file, tmp_path):
    offset = poke(corpus_file, "train", 15_000, 200)
    run = tmp_path / "run"
    r = cli("train", corpus_file, "-o", run, "--hidden-size", "8", "--batch-size", "4", "--seq-len", "10",
            "--max-steps", "3", "--backend", "numpy")
    one_line(r, 1, str(corpus_file), "token id 200", f"byte offset {offset}", "split train, token 15000")
    assert "step " not in r.stderr and not run.exists()  # no step taken, nothing written


def test_in_range_damage_is_found_before_its_chunk_is_used(corpus_file, tmp_path):
    poke(corpus_file, "train", 20)  # a valid id, a different one: only the checksum sees it
    r = cli("train", corpus_file, "-o", tmp_path / "run", "--hidden-size", "8", "--batch-size", "4",
            "--seq-len", "10", "--max-steps", "3", "--backend", "numpy")
    one_line(r, 1, str(corpus_file), "checksum mismatch in split train", after_progress=True)
    assert "step " not in r.stderr


def test_info_verify(corpus_file):
    r = cli("info", corpus_file, "--verify")
    assert r.returncode == 0, r.stderr
    assert "verified        ok: checksums and ids" in r.stdout
    assert json.loads(cli("info", corpus_file, "--verify", "--json").stdout)["verified"].startswith("checksums")
    poke(corpus_file, "test", 5)
    assert cli("info", corpus_file).returncode == 0  # the cheap open does not read the data
    one_line(cli("info", corpus_file, "--verify"), 1, str(corpus_file), "checksum mismatch in split test")


def test_truncated_corpus_refused_at_open_and_while_training(corpus_file, tmp_path):
    with h5py.File(corpus_file, "r") as f:
        end = f["test"].id.get_offset() + f["test"].size
    os.truncate(corpus_file, end - 1)
    one_line(cli("info", corpus_file), 1, str(corpus_file), "truncated")
    # during training: the file's size is checked before every minibatch, so a truncation is an error, not SIGBUS
    text = tmp_path / "big.txt"
    text.write_text(make_text(400_000))
    path = tmp_path / "big.h5"
    prepare([text], path)
    with open_corpus(path) as c:
        from fastrnn.corpus import BatchStream

        stream = BatchStream(c.split("train"), 4, 10, check=c.checker("train"))
        stream.batch(0, 0)
        os.truncate(path, 100_000)
        with pytest.raises(CorpusError, match="truncated"):
            stream.batch(0, 5000)


def write_format_1(path, text):
    """A corpus as fastrnn wrote it before checksums (format 1)."""
    codes = sorted(set(text))
    ids = np.array([codes.index(ch) for ch in text], dtype=np.uint8)
    n_val = n_test = len(ids) // 20
    with h5py.File(path, "w") as f:
        f["train"] = ids[: len(ids) - n_val - n_test]
        f["val"] = ids[len(ids) - n_val - n_test: len(ids) - n_test]
        f["test"] = ids[len(ids) - n_test:]
        f.attrs["fastrnn_corpus"] = 1
        f.attrs["format_version"] = 1
        f.attrs["vocab"] = json.dumps({"level": "char", "symbols": [ord(c) for c in codes]})
        f.attrs["config"] = json.dumps({"level": "char", "val_frac": 0.05, "test_frac": 0.05})
        f.attrs["sources"] = json.dumps([])
        f.attrs["created"] = "2026-01-01T00:00:00+0000"


def test_format_1_corpus_still_opens_and_trains_with_the_id_check(tmp_path):
    path = tmp_path / "old.h5"
    write_format_1(path, make_text(20_000))
    r = cli("info", path, "--verify")
    assert r.returncode == 0, r.stderr
    assert "format version  1" in r.stdout and "ids only" in r.stdout
    r = cli("train", path, "-o", tmp_path / "run", "--hidden-size", "8", "--batch-size", "4", "--seq-len", "10",
            "--max-steps", "2", "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    offset = poke(path, "val", 30, 99)
    one_line(cli("train", path, "-o", tmp_path / "run2", "--hidden-size", "8", "--max-steps", "2"), 1,
             str(path), "token id 99", f"byte offset {offset}")


def zero_free_space(path):
    """Zero the size of the free-space object of the file's global heap collection: HDF5 then loops forever
    reading any variable-length string attribute (checkpoint.load used to hang there)."""
    data = bytearray(open(path, "rb").read())
    at = data.index(b"GCOL")
    (size,) = struct.unpack_from("<Q", data, at + 8)
    p = at + 16
    while p < at + size:
        index, _, _, n = struct.unpack_from("<HHIQ", data, p)
        if index == 0:
            data[p + 8: p + 16] = bytes(8)
            break
        p += 16 + (n + 7) // 8 * 8
    else:
        raise AssertionError("no free space object")
    with open(path, "r+b") as fh:  # in place: checkpoint.h5 shares its inode with the newest numbered one
        fh.write(data)


def test_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(make_text(5000))
    corpus = tmp_path / "c.h5"
    prepare([text], corpus)
    opts = ["--hidden-size", "8", "--batch-size", "2", "--seq-len", "8", "--eval-every", "0", "--backend",
            "numpy", "--threads", "1", "--checkpoint-every", "2", "--keep-checkpoints", "3"]
    reference = tmp_path / "ref"
    assert cli("train", corpus, "-o", reference, *opts, "--max-steps", "8").returncode == 0
    run = tmp_path / "run"
    assert cli("train", corpus, "-o", run, *opts, "--max-steps", "6").returncode == 0
    zero_free_space(run / "checkpoint.h5")
    with pytest.raises(CheckpointError, match=re.escape(str(run / "checkpoint.h5"))):
        ckpt_io.load(run / "checkpoint.h5")
    r = cli("train", corpus, "-o", run, "--resume", "--max-steps", "8")
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr and "checkpoint-00000004.h5" in r.stderr
    a, b = ckpt_io.load(reference), ckpt_io.load(run)
    assert b.state["step"] == 8
    np.testing.assert_array_equal(a.params, b.params)


def test_corpus_cut_short_while_training_is_an_error_not_sigbus(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(make_text(400_000))
    corpus = tmp_path / "c.h5"
    prepare([text], corpus)
    p = subprocess.Popen([sys.executable, "-m", "fastrnn", "train", corpus, "-o", tmp_path / "run", "--hidden-size",
                          "8", "--batch-size", "4", "--seq-len", "10", "--max-steps", "100000000", "--log-every", "1",
                          "--eval-every", "0", "--backend", "numpy"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in p.stderr:
        if line.startswith("step "):
            break
    os.truncate(corpus, 100_000)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1, err  # not -SIGBUS
    assert err.strip().splitlines()[-1].startswith(f"fastrnn: error: {corpus} is truncated"), err
    assert "Traceback" not in err


RACE = """
import os, sys
from fastrnn.corpus import BatchStream, open_corpus
from fastrnn.errors import CorpusError
path, split = sys.argv[1], sys.argv[2]
with open_corpus(path) as c:
    stream = BatchStream(c.split(split), 4, 10, check=c.checker(split))
    stream.batch(0, 0)
    check_size = c._check_size
    def check_then_cut():  # the size still fits when checked; the file is cut short before the tokens are read
        check_size()
        os.truncate(path, 1000)
    c._check_size = check_then_cut
    try:
        stream.batch(0, stream.steps_per_epoch - 1)
    except CorpusError as exc:
        print(exc)
"""


@pytest.mark.parametrize("split", ["train", "val"])
def test_corpus_cut_short_after_its_size_was_checked_is_an_error_not_sigbus(tmp_path, split):
    """The window the old size check left open: truncated between the check and the read of a minibatch (and of a
    chunk's first checksum pass, the last minibatch's chunk not being checked yet)."""
    text = tmp_path / "t.txt"
    text.write_text(make_text(3_000_000 if split == "train" else 400_000))
    corpus = tmp_path / "c.h5"
    prepare([text], corpus)
    r = subprocess.run([sys.executable, "-c", RACE, corpus, split], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr)  # not -SIGBUS
    assert f"{corpus} is truncated" in r.stdout, r.stdout


READERS = """
import os, sys
from fastrnn.corpus import open_corpus
from fastrnn.errors import CorpusError
from fastrnn.evaluate import split_blocks
path = sys.argv[1]
with open_corpus(path) as c:
    blocks = split_blocks(c, "train", block=1000)
    next(blocks)
    c.split("val")
    os.truncate(path, 1000)
    for read in (lambda: next(blocks), lambda: c.read("val", 0, 100), lambda: c.split("test")):
        try:
            read()
        except CorpusError as exc:
            print(exc)
"""


def test_scoring_and_other_reads_of_a_corpus_cut_short_are_errors_not_sigbus(tmp_path):
    """`fastrnn eval`'s blocks of a split, Corpus.read (the warm-up text of training) and the id pass of a split
    opened after the file was cut short read with pread: each reports the truncation."""
    text = tmp_path / "t.txt"
    text.write_text(make_text(300_000))
    corpus = tmp_path / "c.h5"
    prepare([text], corpus)
    r = subprocess.run([sys.executable, "-c", READERS, corpus], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr)  # not -SIGBUS
    assert r.stdout.count(f"{corpus} is truncated") == 3, r.stdout


def test_damage_that_crashed_or_hung_hdf5_is_a_one_line_error(tmp_path):
    """Two kinds of damage the HDF5 library does not survive, through the commands (a crash or a hang would fail
    here too): a variable-length string attribute whose datatype reads as another type (HDF5 segfaulted), and a
    global heap whose free space reads as empty (HDF5 looped forever)."""
    text = tmp_path / "t.txt"
    text.write_text(make_text(3000))
    corpus = tmp_path / "c.h5"
    prepare([text], corpus)
    train(corpus, tmp_path / "run", dict(TINY, max_steps=1))
    good = (tmp_path / "run" / "checkpoint.h5").read_bytes()
    bad_type = tmp_path / "bad_type.h5"
    data = bytearray(good)
    at = data.index(b"config\0\0") + 8  # the attribute's datatype message follows its name
    assert data[at] == 0x19 and data[at + 1] == 0x01  # version 1, class 9 (variable length); a string
    data[at + 1] = 0x05
    bad_type.write_bytes(bytes(data))
    one_line(cli("sample", bad_type, "--length", "5"), 1, str(bad_type), "damaged")
    bad_heap = tmp_path / "bad_heap.h5"
    bad_heap.write_bytes(good)
    zero_free_space(bad_heap)
    one_line(cli("sample", bad_heap, "--length", "5"), 1, str(bad_heap), "global heap")
    zero_free_space(corpus)
    one_line(cli("info", corpus), 1, str(corpus), "global heap")
