"""tools.compare_models at a tiny size: it trains every cell with one budget and writes both pictures."""

import json

import pytest

pytest.importorskip("matplotlib")

from tools import compare_models  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_compare_models_writes_runs_pictures_and_summary(tmp_path, capsys):
    text = tmp_path / "t.txt"
    from conftest import make_text

    text.write_text(make_text(20_000))
    out = tmp_path / "cmp"
    from click.testing import CliRunner

    result = CliRunner().invoke(compare_models.main, [
        str(text), "--out", str(out), "--steps", "12", "--hidden-size", "8", "--batch-size", "4", "--seq-len", "10",
        "--eval-every", "6", "--backend", "numpy"], standalone_mode=False)
    assert result.exit_code == 0, result.output
    rows = result.return_value
    assert [r["model"] for r in rows] == ["rnn", "gru", "lstm"]
    assert all(r["steps"] == 12 and r["val_loss"] > 0 for r in rows)
    assert rows[0]["parameters"] < rows[1]["parameters"] < rows[2]["parameters"]  # G = 1, 3, 4 gate blocks
    for name in ("losses.png", "gradients.png"):
        assert (out / name).read_bytes()[:8] == PNG
    summary = json.loads((out / "summary.json").read_text())
    assert [g["model"] for g in summary["gradients"]] == ["rnn", "lstm"]
    table = result.output
    assert "| lstm | 1 | 8 |" in table
