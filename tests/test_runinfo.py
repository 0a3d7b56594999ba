"""`fastrnn info` on a run directory or checkpoint."""

import json

from click.testing import CliRunner

from fastrnn.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_info_describes_a_run_and_its_checkpoint(small_corpus, tmp_path):
    d = tmp_path / "run"
    r = run("train", small_corpus, "-o", d, "--hidden-size", "8", "--seq-len", "10", "--batch-size", "4",
            "--model", "lstm", "--num-layers", "2", "--max-steps", "12", "--eval-every", "6", "--log-every", "3")
    assert r.exit_code == 0, r.output
    text = run("info", d)
    assert text.exit_code == 0, text.output
    assert "lstm x 2, hidden 8" in text.stdout and "step 12" in text.stdout and "best val loss" in text.stdout
    assert "checkpoint.h5" in text.stdout and "log.jsonl" in text.stdout
    got = json.loads(run("info", d / "checkpoint.h5", "--json").stdout)
    assert got["model"]["cell"] == "lstm" and got["model"]["num_layers"] == 2 and got["model"]["hidden_size"] == 8
    assert got["training"]["step"] == 12 and got["training"]["best_step"] in (6, 12)
    rows = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
    assert got["training"]["best_val"] == min(row["val_loss"] for row in rows if "val_loss" in row)
    assert {f["name"] for f in got["files"]} >= {"checkpoint.h5", "log.jsonl", "best.h5"}
    assert got["log_rows"] == len(rows)
    corpus = json.loads(run("info", small_corpus, "--json").stdout)  # a corpus is still described as one
    assert corpus["vocab_size"] == got["model"]["vocab_size"]
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = run("info", empty)
    assert bad.exit_code == 1 and bad.stderr.strip().startswith("fastrnn: error:")
