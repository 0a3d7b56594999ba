"""Every bad input a user can give, through the command line: one line on stderr starting `fastrnn: error:`,
a non-zero exit status, no traceback, and no file in the working directory changed or left behind."""

import errno
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from fastrnn import checkpoint as ckpt_io
from fastrnn.cli import main
from fastrnn.corpus import prepare
from fastrnn.errors import CheckpointError
from fastrnn.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--hidden-size", "8", "--seq-len", "10", "--batch-size", "4"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_corpus):
    """A directory of good and bad files; each test works on a fresh copy of it."""
    d = tmp_path_factory.mktemp("bad")
    shutil.copy(small_corpus, d / "corpus.h5")
    (d / "other.txt").write_text("0123456789 xyz\n" * 400)
    prepare([d / "other.txt"], d / "other.h5")  # a corpus with another vocabulary
    (d / "tiny.txt").write_text("a tiny corpus\n" * 3)
    prepare([d / "tiny.txt"], d / "tiny.h5", val_frac=0, test_frac=0)
    (d / "text.txt").write_text("just some text\n")
    (d / "binary.bin").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    with h5py.File(d / "foreign.h5", "w") as f:
        f["x"] = np.arange(3)
    r = CliRunner().invoke(main, ["train", str(d / "corpus.h5"), "-o", str(d / "run"), *SMALL, "--max-steps", "3"])
    assert r.exit_code == 0, r.output
    data = (d / "run" / "checkpoint.h5").read_bytes()
    (d / "truncated_ckpt.h5").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF
    (d / "corrupt_ckpt.h5").write_bytes(bytes(flipped))
    corpus = (d / "corpus.h5").read_bytes()
    (d / "truncated_corpus.h5").write_bytes(corpus[: len(corpus) // 3])
    return d


def snapshot(directory):
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


CASES = [
    # train: corpus files
    ("train missing corpus", ["train", "{d}/missing.h5", "-o", "{d}/new"], 1, "does not exist"),
    ("train binary as corpus", ["train", "{d}/binary.bin", "-o", "{d}/new"], 1, "binary"),
    ("train checkpoint as corpus", ["train", "{d}/run/checkpoint.h5", "-o", "{d}/new"], 1, "checkpoint, not a corpus"),
    ("train foreign hdf5", ["train", "{d}/foreign.h5", "-o", "{d}/new"], 1, "not a fastrnn corpus"),
    ("train truncated corpus", ["train", "{d}/truncated_corpus.h5", "-o", "{d}/new"], 1, "truncated"),
    # train: sizes that do not fit
    ("train zero hidden", ["train", "{d}/corpus.h5", "-o", "{d}/new", "--hidden-size", "0"], 2, "--hidden-size"),
    ("train negative batch", ["train", "{d}/corpus.h5", "-o", "{d}/new", "--batch-size", "-3"], 2, "--batch-size"),
    ("train seq longer than split", ["train", "{d}/tiny.h5", "-o", "{d}/new", "--seq-len", "100",
                                     "--batch-size", "1"], 1, "too few"),
    ("train batch larger than data", ["train", "{d}/corpus.h5", "-o", "{d}/new", "--batch-size", "100000"], 1,
     "too few"),
    ("train bad lr", ["train", "{d}/corpus.h5", "-o", "{d}/new", "--lr", "-1"], 2, "--lr"),
    ("train unknown optimizer", ["train", "{d}/corpus.h5", "-o", "{d}/new", "--optimizer", "lbfgs"], 2,
     "--optimizer"),
    # train: runs and resume
    ("train over existing run", ["train", "{d}/corpus.h5", "-o", "{d}/run", *SMALL], 1, "--resume"),
    ("resume nothing", ["train", "{d}/corpus.h5", "-o", "{d}/new", "--resume"], 1, "nothing to resume"),
    ("resume other vocabulary", ["train", "{d}/other.h5", "-o", "{d}/run", "--resume"], 1, "vocabulary"),
    ("resume changed model", ["train", "{d}/corpus.h5", "-o", "{d}/run", "--resume", "--hidden-size", "9"], 1,
     "hidden-size"),
    ("resume changed lr", ["train", "{d}/corpus.h5", "-o", "{d}/run", "--resume", "--lr", "0.5"], 1,
     "--allow-change"),
    ("run dir is a file", ["train", "{d}/corpus.h5", "-o", "{d}/text.txt"], 2, "text.txt"),
    # sample
    ("sample missing", ["sample", "{d}/missing.h5"], 1, "not found"),
    ("sample corpus as checkpoint", ["sample", "{d}/corpus.h5"], 1, "corpus file, not a checkpoint"),
    ("sample text as checkpoint", ["sample", "{d}/text.txt"], 1, "not a fastrnn checkpoint"),
    ("sample truncated checkpoint", ["sample", "{d}/truncated_ckpt.h5"], 1, "truncated"),
    ("sample corrupt checkpoint", ["sample", "{d}/corrupt_ckpt.h5"], 1, "checksum"),
    ("sample temperature 0", ["sample", "{d}/run", "--temperature", "0"], 2, "--temperature"),
    ("sample temperature negative", ["sample", "{d}/run", "--temperature", "-2"], 2, "--temperature"),
    ("sample unknown prime char", ["sample", "{d}/run", "--prime", "Zebra"], 1, "'Z'"),
    ("sample negative length", ["sample", "{d}/run", "--length", "-5"], 2, "--length"),
    ("sample top-p zero", ["sample", "{d}/run", "--top-p", "0"], 2, "--top-p"),
    # corpus commands on wrong files
    ("prepare into existing", ["prepare", "{d}/text.txt", "-o", "{d}/corpus.h5"], 1, "--force"),
]


@pytest.mark.parametrize("name, args, status, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(workdir, tmp_path, name, args, status, fragment):
    d = tmp_path / "w"
    shutil.copytree(workdir, d)
    before = snapshot(d)
    r = CliRunner().invoke(main, [a.format(d=d) for a in args])
    assert r.exit_code == status, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastrnn: error:"), r.stderr
    assert fragment in lines[0], lines[0]
    assert r.stdout == ""
    assert snapshot(d) == before


def test_non_utf8_prime_through_a_real_process(workdir, tmp_path):
    d = tmp_path / "w"
    shutil.copytree(workdir, d)
    p = subprocess.run([sys.executable, "-m", "fastrnn", "sample", str(d / "run"), "--prime", b"The \xff"],
                       capture_output=True, cwd=ROOT)
    assert p.returncode == 1
    assert p.stderr.decode().strip().splitlines() == [
        "fastrnn: error: --prime is not valid UTF-8 text (undecodable byte at character 4)"]
    assert p.stdout == b""


def test_resume_falls_back_from_a_corrupt_checkpoint(workdir, tmp_path):
    d = tmp_path / "w"
    shutil.copytree(workdir, d)
    r = CliRunner().invoke(main, ["train", str(d / "corpus.h5"), "-o", str(d / "hist"), *SMALL, "--max-steps", "4",
                                  "--checkpoint-every", "2", "--keep-checkpoints", "3"])
    assert r.exit_code == 0, r.output
    path = d / "hist" / "checkpoint.h5"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["train", str(d / "corpus.h5"), "-o", str(d / "hist"), "--resume",
                                  "--max-steps", "6"])
    assert r.exit_code == 0, r.output
    assert "checksum" in r.stderr and "resuming from" in r.stderr
    assert ckpt_io.load(path).state["step"] == 6


def test_disk_full_keeps_the_last_good_checkpoint(small_corpus, tmp_path, monkeypatch):
    run = tmp_path / "r"
    train(small_corpus, run, dict(hidden_size=8, seq_len=10, batch_size=4, max_steps=2))
    before = (run / "checkpoint.h5").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_io.os, "fsync", full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        train(small_corpus, run, {"max_steps": 4}, resume=True)
    assert (run / "checkpoint.h5").read_bytes() == before
    assert not [name for name in os.listdir(run) if name.endswith(".tmp")]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_run_directory(small_corpus, tmp_path):
    run = tmp_path / "ro"
    run.mkdir()
    run.chmod(0o500)
    try:
        r = CliRunner().invoke(main, ["train", small_corpus, "-o", str(run), *SMALL, "--max-steps", "1"])
        assert r.exit_code == 1 and "not writable" in r.stderr
    finally:
        run.chmod(0o700)
