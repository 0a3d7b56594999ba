"""Long runs on big corpora: what train's log rows say about checkpoints and samples, epochs readable at a billion
characters (in progress rows and `fastrnn info`)."""

import json
import os

from fastrnn.progress import epochs, status
from fastrnn.train import train


def log_rows(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------------------- train's log rows


def test_log_rows_say_what_each_checkpoint_and_sample_took(small_corpus, tmp_path):
    """A checkpoint is written after its step's row: its seconds are in the next row (one entry per write); a
    sample is taken before its step's row: its seconds are in that row. The epoch has six significant digits."""
    seen = {}
    train(small_corpus, tmp_path / "r", dict(hidden_size=16, batch_size=4, seq_len=10, max_steps=30, log_every=5,
                                             checkpoint_every=10, sample_every=10, sample_length=20, eval_every=0,
                                             backend="numpy", threads=1),
          on_event=lambda kind, data: seen.setdefault(kind, data))
    rows = log_rows(tmp_path / "r")
    assert [r["step"] for r in rows if "checkpoint_seconds" in r] == [15, 25]
    assert all(len(r["checkpoint_seconds"]) == 1 and r["checkpoint_seconds"][0] > 0 for r in rows
               if "checkpoint_seconds" in r)
    assert [r["step"] for r in rows if "sample_seconds" in r] == [10, 20, 30]
    assert all(r["sample_seconds"] > 0 for r in rows if "sample_seconds" in r)
    spe = seen["start"]["steps_per_epoch"]
    assert all(r["epoch"] == float(f"{r['step'] / spe:.6g}") for r in rows)


def test_epochs_of_a_billion_characters_are_readable():
    assert [epochs(e) for e in (0, 2.5, 0.52, 0.02, 0.0045, 1.5e-6)] == ["0.00", "2.50", "0.52", "0.02", "0.0045",
                                                                        "0.0000015"]
    row = {"step": 10, "max_steps": 6_620_960, "epoch": 1.51e-5, "loss": 4.5, "chars_per_sec": 20_000.0,
           "rss_mb": 550.0, "eta": 6 * 86400 + 3 * 3600}
    assert status(row, None) == ("step 10/6,620,960 | epoch 0.000015 | loss 4.5000 | 20.0k chars/s | 550 MB | "
                                 "ETA 6d03h")


def test_info_says_how_far_into_its_epoch_a_run_is(small_corpus, tmp_path):
    """`fastrnn info RUN`: the epoch with its fraction (a run on a billion characters shows more than 0)."""
    from click.testing import CliRunner

    from fastrnn.cli import main

    seen = {}
    train(small_corpus, tmp_path / "r", dict(hidden_size=8, batch_size=4, seq_len=10, max_steps=12, eval_every=0,
                                             backend="numpy"), on_event=lambda kind, data: seen.setdefault(kind, data))
    got = json.loads(CliRunner().invoke(main, ["info", str(tmp_path / "r"), "--json"]).stdout)
    assert got["training"]["epochs"] == 12 / seen["start"]["steps_per_epoch"] and got["training"]["epoch"] == 0
    text = CliRunner().invoke(main, ["info", str(tmp_path / "r")]).stdout
    assert f"step 12 (epoch {epochs(12 / seen['start']['steps_per_epoch'])})," in text
