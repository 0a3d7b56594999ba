"""`fastrnn prepare` and `fastrnn info` through the command line, including every bad input."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from fastrnn.cli import main
from fastrnn.corpus import open_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def one_line_error(result, *fragments):
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fastrnn: error:"), err
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err, err


def snapshot(directory):
    return {p: open(os.path.join(directory, p), "rb").read() for p in sorted(os.listdir(directory))
            if os.path.isfile(os.path.join(directory, p))}


def test_prepare_and_info(tmp_path):
    src = tmp_path / "play.txt"
    src.write_text("ROMEO: But soft! What light through yonder window breaks?\n" * 50)
    r = run("prepare", src, "--output", tmp_path / "c.h5", "--val-frac", "0.1", "--test-frac", "0")
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and "symbols" in r.stdout
    j = run("info", tmp_path / "c.h5", "--json")
    assert j.exit_code == 0, j.output
    d = json.loads(j.stdout)
    total = len(src.read_text())
    assert d["vocab_size"] == len(set(src.read_text()))
    assert (d["train_tokens"], d["val_tokens"], d["test_tokens"]) == (total - total // 10, total // 10, 0)
    assert d["dtype"] == "uint8" and d["format_version"] == 2
    assert d["options"]["val_frac"] == 0.1 and d["sources"][0]["path"].endswith("play.txt")
    t = run("info", tmp_path / "c.h5")
    assert t.exit_code == 0 and "symbols" in t.stdout and "train" in t.stdout and "format version" in t.stdout


def test_prepare_options_through_cli(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("Hello, World! 123 Über.\n" * 20, encoding="utf-8")
    r = run("prepare", src, "-o", tmp_path / "n.h5", "--lowercase", "--letters-only", "--val-frac", "0",
            "--test-frac", "0")
    assert r.exit_code == 0, r.output
    with open_corpus(tmp_path / "n.h5") as c:
        assert c.vocab.decode(c.split("train")) == " ".join(["hello world über"] * 20)
    r = run("prepare", src, "-o", tmp_path / "b.h5", "--level", "byte")
    assert r.exit_code == 0, r.output
    assert json.loads(run("info", tmp_path / "b.h5", "--json").stdout)["level"] == "byte"


def test_prepare_from_stdin(tmp_path):
    text = "from standard input\n" * 30
    r = run("prepare", "-", "-o", tmp_path / "s.h5", "--val-frac", "0", "--test-frac", "0", input=text)
    assert r.exit_code == 0, r.output
    with open_corpus(tmp_path / "s.h5") as c:
        assert c.vocab.decode(c.split("train")) == text
        assert c.info()["sources"][0]["path"] == "<stdin>"
    assert sorted(os.listdir(tmp_path)) == ["s.h5"]  # the spooled copy of stdin is gone


def _bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.bin").write_bytes(b"hello" + b"\x00" * 10)
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "good.txt").write_text("some good text\n" * 10)
    (tmp_path / "existing.h5").write_text("do not touch")
    (tmp_path / "notacorpus.h5").write_text("plain text, not HDF5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.arange(4)
    ok = run("prepare", tmp_path / "good.txt", "-o", tmp_path / "real.h5")
    assert ok.exit_code == 0
    data = (tmp_path / "real.h5").read_bytes()
    (tmp_path / "truncated.h5").write_bytes(data[:1000])


BAD = [
    (["prepare", "{d}/missing.txt", "-o", "{d}/o.h5"], ["missing.txt", "does not exist"]),
    (["prepare", "{d}/empty.txt", "-o", "{d}/o.h5"], ["empty"]),
    (["prepare", "{d}/binary.bin", "-o", "{d}/o.h5"], ["binary.bin", "binary", "byte offset 5"]),
    (["prepare", "{d}/latin1.txt", "-o", "{d}/o.h5"], ["latin1.txt", "not valid utf-8", "byte offset 3"]),
    (["prepare", "{d}/emptydir", "-o", "{d}/o.h5"], ["emptydir", "no text files"]),
    (["prepare", "{d}/good.txt", "-o", "{d}/existing.h5"], ["existing.h5", "--force"]),
    (["prepare", "{d}/good.txt", "-o", "{d}/o.h5", "--val-frac", "0.7", "--test-frac", "0.5"], ["below 1"]),
    (["prepare", "{d}/good.txt", "-o", "{d}/o.h5", "--val-frac", "-1"], ["--val-frac"]),
    (["prepare", "{d}/good.txt", "-o", "{d}/o.h5", "--encoding", "klingon"], ["unknown encoding"]),
    (["prepare", "{d}/good.txt", "-o", "{d}/o.h5", "--level", "word"], ["--level"]),
    (["prepare", "{d}/good.txt", "-o", "{d}/nodir/o.h5"], ["does not exist"]),
    (["info", "{d}/missing.h5"], ["does not exist"]),
    (["info", "{d}/notacorpus.h5"], ["not a corpus file"]),
    (["info", "{d}/foreign.h5"], ["not a fastrnn corpus"]),
    (["info", "{d}/truncated.h5"], ["truncated"]),
    (["info", "{d}/emptydir"], ["directory"]),
]


@pytest.mark.parametrize("args, fragments", BAD, ids=[" ".join(a[:2]).split("/")[-1] + str(i)
                                                      for i, (a, _) in enumerate(BAD)])
def test_bad_input_is_one_line_and_changes_nothing(tmp_path, args, fragments):
    _bad_inputs(tmp_path)
    before = snapshot(tmp_path)
    r = run(*[a.format(d=tmp_path) for a in args])
    one_line_error(r, *fragments)
    assert snapshot(tmp_path) == before


def test_subprocess_error_has_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "fastrnn", "prepare", str(tmp_path / "nope.txt"), "-o",
                        str(tmp_path / "o.h5")], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [f"fastrnn: error: input {tmp_path / 'nope.txt'} does not exist"]
    assert not (tmp_path / "o.h5").exists()
