"""The picture commands write valid PNGs of the expected size (matplotlib is the optional `plot` extra)."""

import struct

import pytest
from click.testing import CliRunner

from fastrnn.cli import main

pytest.importorskip("matplotlib")

SMALL = ["--hidden-size", "16", "--seq-len", "10", "--batch-size", "4", "--log-every", "2", "--eval-every", "4"]


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def run_dir(small_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("plots") / "run"
    r = CliRunner().invoke(main, ["train", small_corpus, "-o", str(d), *SMALL, "--max-steps", "12"])
    assert r.exit_code == 0, r.output
    return d


def test_plot_losses(run_dir, tmp_path):
    out = tmp_path / "loss.png"
    r = CliRunner().invoke(main, ["plot", str(run_dir), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert png_size(out) == (1500, 450)


def test_plot_hidden(run_dir, tmp_path):
    out = tmp_path / "hidden.png"
    r = CliRunner().invoke(main, ["plot-hidden", str(run_dir), "--text", 'The cat sat on the mat.', "-o", str(out)])
    assert r.exit_code == 0, r.output
    w, h = png_size(out)
    assert h == 800 and w >= 800
    assert "vowel" in r.stderr and r.stderr.count("unit ") == 5


def test_plot_gradients(run_dir, tmp_path):
    out = tmp_path / "grad.png"
    r = CliRunner().invoke(main, ["plot-gradients", str(run_dir), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert png_size(out) == (1000, 500)


def test_plot_errors(run_dir, tmp_path):
    r = CliRunner().invoke(main, ["plot", str(tmp_path / "none")])
    assert r.exit_code == 1 and r.stderr.startswith("fastrnn: error:") and len(r.stderr.splitlines()) == 1
    r = CliRunner().invoke(main, ["plot-hidden", str(run_dir), "--text", "Zebra \u00e9"])
    assert r.exit_code == 1 and "not in the vocabulary" in r.stderr


def test_every_picture_goes_beside_its_run_by_default(run_dir, tmp_path, monkeypatch):
    """One convention: loss.png, hidden.png and gradients.png in the (first) run directory given, wherever the
    command runs; the path is printed."""
    monkeypatch.chdir(tmp_path)
    for args, name in ((["plot", str(run_dir / "log.jsonl")], "loss.png"),
                       (["plot-hidden", str(run_dir / "checkpoint.h5"), "--text", "The cat."], "hidden.png"),
                       (["plot-gradients", str(run_dir), "--text", "The cat sat."], "gradients.png")):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        assert r.stdout.strip() == str(run_dir / name) and png_size(run_dir / name)
    assert not list(tmp_path.glob("*.png"))
    assert "text (12 characters, the last one predicted): 'The cat sat.'" in r.stderr
