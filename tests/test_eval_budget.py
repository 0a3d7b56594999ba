"""Evaluation sized for the corpus and a time budget that holds: auto evaluations score a fixed set of val tokens
and take a small share of a run, the same tokens across a resume; --eval-tokens all is the whole pass it always
was; --max-time is the wall clock of the whole run, its final evaluation included, and takes units; a signal
during an evaluation leaves a checkpoint the run resumes from exactly."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastrnn import checkpoint as ckpt_io
from fastrnn.config import parse_duration
from fastrnn.errors import ConfigError
from fastrnn.train import resolve_config, train

from conftest import make_text

SMALL = dict(hidden_size=16, seq_len=10, batch_size=4, log_every=1, checkpoint_every=0)
# auto evaluations of this configuration score ceil(0.08 x 50) = 4 minibatches of 16 x 50: 3,200 tokens
MEDIUM = dict(hidden_size=32, batch_size=16, seq_len=50, eval_every=50, log_every=10, checkpoint_every=0)
AUTO_TOKENS = 4 * 16 * 50


@pytest.fixture(scope="module")
def big_val_corpus(tmp_path_factory):
    """A corpus whose val split (~165k tokens) is 50 times the auto evaluation of MEDIUM."""
    from fastrnn.corpus import prepare

    d = tmp_path_factory.mktemp("bigval")
    (d / "text.txt").write_text(make_text(330_000, seed=2))
    prepare([str(d / "text.txt")], str(d / "c.h5"), val_frac=0.5, test_frac=0.01)
    return str(d / "c.h5")


def log_rows(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def val_split_size(corpus):
    from fastrnn.corpus import open_corpus

    with open_corpus(corpus) as c:
        return len(c.split("val"))


def test_auto_evaluations_take_a_small_share_of_the_run_on_a_large_val_split(big_val_corpus, tmp_path):
    assert val_split_size(big_val_corpus) >= 50 * AUTO_TOKENS
    summary = train(big_val_corpus, tmp_path / "r", dict(MEDIUM, max_steps=200))
    evals = [r for r in log_rows(tmp_path / "r") if "val_loss" in r]
    assert [r["step"] for r in evals] == [50, 100, 150, 200]
    assert all(r["val_tokens"] == AUTO_TOKENS for r in evals)
    spent = sum(r["eval_seconds"] for r in evals)
    assert spent == pytest.approx(summary["eval_seconds"], abs=1e-3)
    # ~2% measured (one evaluation minibatch costs at most about half a training step); a whole-split pass would
    # be ~50 times that
    assert spent <= 0.10 * summary["session_seconds"], (spent, summary["session_seconds"])


def test_eval_tokens_all_gives_the_numbers_of_the_full_pass(small_corpus, tmp_path):
    """Recorded with fastrnn before --eval-tokens auto existed (every evaluation scored the whole split)."""
    train(small_corpus, tmp_path / "r", dict(SMALL, eval_every=5, max_steps=12, backend="numpy", dtype="float64",
                                             seed=3, eval_tokens="all"))
    evals = [(r["step"], r["val_loss"], r["val_tokens"]) for r in log_rows(tmp_path / "r") if "val_loss" in r]
    recorded = [(5, 3.3745095400160325), (10, 3.272257641693751), (12, 3.234873115625844)]
    assert [(s, v) for s, v, _ in evals] == recorded  # bit for bit: the same sums in the same order
    n = min(4, (val_split_size(small_corpus) - 1) // 10)
    assert {t for _, _, t in evals} == {(val_split_size(small_corpus) - 1) // n // 10 * n * 10}


def test_auto_evaluations_score_windows_spread_over_the_split(big_val_corpus):
    from fastrnn.corpus import open_corpus
    from fastrnn.validation import val_set

    with open_corpus(big_val_corpus) as c:
        vs = val_set(c.split("val"), resolve_config(dict(MEDIUM)))
        assert vs.batches == 4 and vs.tokens == AUTO_TOKENS and vs.stream.tokens.size == len(c.split("val"))
        starts = vs.stream.starts(0, 0)
        assert starts[-1] > 0.9 * len(c.split("val"))  # the last window near the end of the split
        assert "spread evenly" in vs.describe() and "3,200 of" in vs.describe()
        # --eval-every 0 (only a final evaluation) sizes them as for --eval-every 500
        assert val_set(c.split("val"), resolve_config(dict(MEDIUM, eval_every=0))).batches == 40


def test_eval_tokens_stay_the_same_across_a_resume(big_val_corpus, tmp_path):
    run = tmp_path / "r"
    train(big_val_corpus, run, dict(MEDIUM, max_steps=50))
    assert ckpt_io.load(run).state["eval_batches"] == 4
    # a resumed run may evaluate at another interval; its evaluations score the tokens the run started with
    train(big_val_corpus, run, dict(MEDIUM, max_steps=100, eval_every=25), resume=True)
    evals = [r for r in log_rows(run) if "val_loss" in r]
    assert [r["step"] for r in evals] == [50, 75, 100]
    assert {r["val_tokens"] for r in evals} == {AUTO_TOKENS}
    assert ckpt_io.load(run).state["eval_batches"] == 4  # a new run at --eval-every 25 would score 2 minibatches
    # another --eval-tokens on resume is taken, and said
    messages = []
    train(big_val_corpus, run, dict(MEDIUM, max_steps=110, eval_every=25, eval_tokens="all"), resume=True,
          on_event=lambda kind, data: messages.append(data["text"]) if kind == "message" else None)
    assert any("--eval-tokens all (the run had auto)" in m for m in messages), messages
    assert log_rows(run)[-1]["val_tokens"] > 40 * AUTO_TOKENS


def test_max_time_takes_units_and_refuses_the_rest():
    assert [parse_duration(v) for v in ("90", "90s", "10m", "2h", "1h30m", 5, " 2M ")] == \
        [90, 90, 600, 7200, 5400, 5, 120]
    for bad in ("5d", "-1m", "", "m", "1h-2m", "ten", True):
        with pytest.raises(ConfigError, match="--max-time must be"):
            parse_duration(bad)
    assert resolve_config({"max_time": "2m"}).max_time == 120.0  # the API takes them too
    with pytest.raises(ConfigError, match="--eval-tokens"):
        resolve_config({"eval_tokens": "most"})
    assert resolve_config({"eval_tokens": 0}).eval_tokens == "all"  # 0 meant all before `all` existed


def test_the_cli_says_what_is_wrong_with_a_max_time_in_one_line(small_corpus, tmp_path):
    from click.testing import CliRunner

    from fastrnn.cli import main

    for value, fragment in (("5d", "is not a duration"), ("nan", "not a finite number"), ("-3", ">=0"),
                            ("2x", "90s, 10m, 2h")):
        r = CliRunner().invoke(main, ["train", small_corpus, "-o", str(tmp_path / "r"), "--max-time", value])
        err = r.stderr.strip()
        assert r.exit_code == 2 and len(err.splitlines()) == 1 and err.startswith("fastrnn: error:"), err
        assert "--max-time" in err and fragment in err, err
    assert not (tmp_path / "r").exists()


def test_a_budget_that_ends_before_the_first_step_says_no_step_was_trained(small_corpus, tmp_path):
    from click.testing import CliRunner

    from fastrnn.cli import main

    r = CliRunner().invoke(main, ["train", small_corpus, "-o", str(tmp_path / "r"), "--max-time", "0.001",
                                  "--hidden-size", "8", "--eval-every", "0"])
    assert r.exit_code == 0, r.stderr
    done = [line for line in r.stderr.splitlines() if line.startswith("done: ")]
    assert len(done) == 1 and done[0].startswith("done: step 0, epoch 0.00, no step trained (max_time"), r.stderr
    assert "nan" not in r.stderr


NO_CALIBRATION = {"FASTRNN_CALIBRATE": "0"}  # the kernels' measured choices cost seconds of the run's time each
# run on a busy machine (nothing is cached then): the timed runs below take the rule's choice


def test_max_time_holds_with_the_final_evaluation_in_it(big_val_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTRNN_CALIBRATE", "0")
    t0 = time.perf_counter()
    summary = train(big_val_corpus, tmp_path / "auto", dict(MEDIUM, hidden_size=64, max_time=5))
    wall = time.perf_counter() - t0
    assert summary["stop_reason"] == "max_time" and wall <= 5 + 2, wall
    assert summary["step"] > 50 and summary["val_loss"] is not None  # trained, and the final evaluation fitted in
    rows = log_rows(tmp_path / "auto")
    assert rows[-1]["step"] == summary["step"] and rows[-1]["val_tokens"] == AUTO_TOKENS


def test_max_time_holds_when_evaluations_are_longer_than_it(big_val_corpus, tmp_path):
    """Whole-split evaluations every 10 steps, each about as long as the budget: skipped once they no longer fit,
    stopped at the deadline if one runs there; the run ends within a few seconds of --max-time."""
    run = tmp_path / "all"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "fastrnn", "train", big_val_corpus, "-o", str(run), "--hidden-size",
                        "128", "--batch-size", "16", "--seq-len", "50", "--eval-every", "10", "--eval-tokens", "all",
                        "--max-time", "5s"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, **NO_CALIBRATION))
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    assert "(max_time" in p.stderr and "Traceback" not in p.stderr
    state = ckpt_io.load(run).state
    elapsed = state["wall_seconds"]
    assert state["step"] >= 10
    assert elapsed <= 5 + 1.5, elapsed  # the run's own clock, from train() to its final checkpoint
    assert wall <= 5 + 10, wall  # with the interpreter's start and imports, on a busy machine


def test_a_signal_during_an_evaluation_checkpoints_and_the_resumed_run_continues_exactly(big_val_corpus, tmp_path,
                                                                                          monkeypatch):
    """SIGINT arrives while the evaluation of step 10 runs (sent at its first progress event): the run stops with
    a checkpoint of step 10, the evaluation pending; the resumed run completes it first, then goes on as a run
    that was never stopped."""
    from fastrnn import validation

    monkeypatch.setattr(validation, "PROGRESS_INTERVAL", 0.0)  # a progress event after every minibatch
    opts = dict(MEDIUM, hidden_size=64, eval_every=10, eval_tokens="all", log_every=5, max_steps=20)
    seen = []

    def interrupt(kind, data):
        seen.append((kind, data))
        if kind == "evaluating" and data["step"] == 10 and data["batches"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    summary = train(big_val_corpus, tmp_path / "cut", opts, on_event=interrupt)
    assert summary["stop_reason"] == "signal" and summary["signal"] == signal.SIGINT and summary["step"] == 10
    messages = [d["text"] for k, d in seen if k == "message"]
    assert any("the evaluation at step 10 was stopped by a signal after 3 of" in m for m in messages), messages
    assert not any(k == "eval" for k, _ in seen)
    state = ckpt_io.load(tmp_path / "cut").state
    assert state["step"] == 10 and state["eval_pending"] and state["pending_row"]["step"] == 10
    assert "val_loss" not in log_rows(tmp_path / "cut")[-1]
    train(big_val_corpus, tmp_path / "cut", opts, resume=True)
    train(big_val_corpus, tmp_path / "whole", opts)

    def numbers(run):
        return [(row["step"], row["batch_loss"], row.get("val_loss"), row.get("val_tokens"))
                for row in log_rows(tmp_path / run)]

    assert numbers("cut") == numbers("whole")
    assert [n[0] for n in numbers("cut") if n[2] is not None] == [10, 20]
    cut, whole = ckpt_io.load(tmp_path / "cut"), ckpt_io.load(tmp_path / "whole")
    assert cut.params.tobytes() == whole.params.tobytes()
    assert (cut.state["best_step"], cut.state["best_val"]) == (whole.state["best_step"], whole.state["best_val"])
    assert not cut.state["eval_pending"] and math.isfinite(cut.state["best_val"])


def test_evaluations_show_their_progress_in_a_pipe(big_val_corpus, tmp_path):
    """`fastrnn train` with stderr a pipe: an evaluation long enough prints its progress row with an ETA."""
    r = subprocess.run([sys.executable, "-m", "fastrnn", "train", big_val_corpus, "-o", str(tmp_path / "r"),
                        "--hidden-size", "512", "--batch-size", "16", "--seq-len", "50", "--eval-every", "0",
                        "--eval-tokens", "all", "--max-steps", "2", "--checkpoint-every", "0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stderr.splitlines() if line.startswith("evaluating step 2: ")]
    assert rows and " val tokens (" in rows[0] and "| ETA " in rows[0], r.stderr


def test_an_evaluation_stops_between_minibatches_when_told(big_val_corpus):
    from fastrnn.corpus import open_corpus
    from fastrnn.model import Model, get_backend
    from fastrnn.validation import Scoring, val_set

    with open_corpus(big_val_corpus) as c:
        vs = val_set(c.split("val"), resolve_config(dict(MEDIUM)))
        model = Model(c.vocab.size, 32, "float32")
        model.init(np.random.default_rng(0), 0.01, "auto")
        calls = []

        def stop():
            calls.append(1)
            return "max_time" if len(calls) == 3 else None

        scoring = Scoring(vs, 7)
        assert scoring.score(get_backend("numba"), model, stop=stop) is None
        assert (scoring.done, scoring.stopped_by) == (2, "max_time")
        whole = Scoring(vs, 7)
        assert math.isfinite(whole.score(get_backend("numba"), model)) and whole.done == 4


def test_the_printer_shows_an_evaluation_in_progress():
    import io

    from fastrnn.progress import Printer

    class Pipe(io.StringIO):
        def isatty(self):
            return False

    now = [100.0]
    stream = Pipe()
    p = Printer(stream=stream, clock=lambda: now[0])
    event = {"step": 1500, "batches": 10, "of": 40, "tokens": 16_000, "total_tokens": 64_000, "seconds": 2.0,
             "eta": 6.0}
    p("evaluating", event)  # the first row of an evaluation at once
    now[0] += 1
    p("evaluating", dict(event, batches=20, tokens=32_000))  # then every ten seconds
    now[0] += 10
    p("evaluating", dict(event, batches=30, tokens=48_000, eta=2.0))
    assert stream.getvalue().splitlines() == [
        "evaluating step 1,500: 16,000/64,000 val tokens (25%) | 2s | ETA 6s",
        "evaluating step 1,500: 48,000/64,000 val tokens (75%) | 2s | ETA 2s"]
    p("eval", {"step": 1500, "val_loss": 1.5, "best_val": 1.4, "val_tokens": 64_000, "seconds": 7.9})
    assert stream.getvalue().splitlines()[-1] == \
        "eval step 1,500: val loss 1.5000 (best 1.4000) on 64,000 val tokens in 7.9 s"


def test_on_a_terminal_an_evaluation_takes_the_status_line():
    import io

    from fastrnn.progress import CLEAR, Printer

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    now = [100.0]
    stream = Terminal()
    p = Printer(stream=stream, clock=lambda: now[0], width=lambda: 200)
    p("log", {"step": 1500, "max_steps": None, "epoch": 0.01, "loss": 2.5, "chars_per_sec": 1.25e6, "rss_mb": 90.0,
              "eta": None})
    now[0] += 1
    p("evaluating", {"step": 1500, "batches": 10, "of": 40, "tokens": 16_000, "total_tokens": 64_000,
                     "seconds": 1.0, "eta": 3.0})
    p("eval", {"step": 1500, "val_loss": 1.5, "best_val": 1.5, "val_tokens": 64_000, "seconds": 4.0})
    out = stream.getvalue()
    assert "\rstep 1,500 | epoch 0.01 | loss 2.5000 | 1.25M chars/s | 90 MB" in out
    assert "\revaluating step 1,500: 16,000/64,000 val tokens (25%) | 1s | ETA 3s" in out
    assert out.endswith(CLEAR + "eval step 1,500: val loss 1.5000 (best 1.5000) on 64,000 val tokens in 4.0 s\n")
