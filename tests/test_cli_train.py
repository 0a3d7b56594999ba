"""`fastrnn train` and `fastrnn sample` through the command line."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from fastrnn import checkpoint as ckpt_io
from fastrnn.cli import main

SMALL = ["--hidden-size", "16", "--seq-len", "10", "--batch-size", "4", "--log-every", "5"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fastrnn: error:"), err
    for fragment in fragments:
        assert fragment in err, err


def test_train_then_sample(small_corpus, tmp_path):
    r = run("train", small_corpus, "-o", tmp_path / "run", *SMALL, "--max-steps", "20", "--eval-every", "10")
    assert r.exit_code == 0, r.output
    assert "step 20/20" in r.stderr and "chars/s" in r.stderr and "MB" in r.stderr
    assert (tmp_path / "run" / "checkpoint.h5").exists() and (tmp_path / "run" / "log.jsonl").exists()
    s = run("sample", tmp_path / "run", "--prime", "The ", "--length", "50", "--seed", "1")
    assert s.exit_code == 0, s.output
    assert s.stdout.startswith("The ") and len(s.stdout) == len("The ") + 50 + 1
    again = run("sample", tmp_path / "run" / "checkpoint.h5", "--prime", "The ", "--length", "50", "--seed", "1")
    assert again.stdout == s.stdout
    other = run("sample", tmp_path / "run", "--prime", "The ", "--length", "50", "--seed", "2")
    assert other.stdout != s.stdout


def test_num_samples_are_the_samples_of_consecutive_seeds(trained):
    """--num-samples K draws K samples together; sample i is the one --seed SEED+i draws alone (also with --stop-at,
    which cuts each sample on its own), printed one after another, a blank line between."""
    for extra in ([], ["--stop-at", "e"]):
        alone = [run("sample", trained, "--prime", "Th", "--length", "40", "--seed", seed, *extra) for seed in (5, 6, 7)]
        assert all(r.exit_code == 0 for r in alone)
        together = run("sample", trained, "--prime", "Th", "--length", "40", "--seed", "5", "--num-samples", "3", *extra)
        assert together.exit_code == 0, together.output
        assert together.stdout == "\n".join(r.stdout for r in alone)
        assert len({r.stdout for r in alone}) == 3
    one_line_error(run("sample", trained, "--beam-width", "3", "--num-samples", "2"), "--beam-width")


def test_output_dir_streams_each_sample_into_its_own_file(trained, tmp_path):
    """--output-dir DIR: sample i in DIR/sample-i.txt, the text --seed SEED+i-1 prints alone; existing sample files
    are refused (one line, nothing changed)."""
    out = tmp_path / "samples"
    r = run("sample", trained, "--prime", "Th", "--length", "40", "--seed", "5", "--num-samples", "12",
            "--output-dir", out)
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and "wrote 12 samples to" in r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"sample-{i:02d}.txt" for i in range(1, 13)]
    for i in (1, 12):
        alone = run("sample", trained, "--prime", "Th", "--length", "40", "--seed", str(4 + i))
        assert (out / f"sample-{i:02d}.txt").read_text() == alone.stdout
    before = (out / "sample-01.txt").read_text()
    one_line_error(run("sample", trained, "--length", "5", "--num-samples", "10", "--output-dir", out), "exists")
    assert (out / "sample-01.txt").read_text() == before
    one_line_error(run("sample", trained, "--beam-width", "2", "--output-dir", tmp_path / "b"), "--output-dir")


def test_prime_and_stop_at_take_escapes_and_a_prime_file(trained, tmp_path):
    """--stop-at '\\n' stops at a newline (not at a backslash and an n); --prime 'Th\\x65' is the prime 'The';
    --prime-file reads the prime as it is; a bad escape is one line."""
    s = run("sample", trained, "--length", "300", "--seed", "3", "--stop-at", "\\n")
    assert s.exit_code == 0 and s.stdout.endswith("\n") and s.stdout.count("\n") == 2, repr(s.stdout)
    a = run("sample", trained, "--prime", "Th\\x65", "--length", "30", "--seed", "3")
    b = run("sample", trained, "--prime", "The", "--length", "30", "--seed", "3")
    assert a.exit_code == 0 and a.stdout == b.stdout and a.stdout.startswith("The")
    (tmp_path / "prime.txt").write_text("The\\n")  # a file is taken as it is: backslash, n
    f = run("sample", trained, "--prime-file", tmp_path / "prime.txt", "--length", "10", "--seed", "3")
    assert f.exit_code == 1 and "'\\\\'" in f.stderr  # the backslash is not in the vocabulary: it was not unescaped
    (tmp_path / "prime2.txt").write_text("The")
    g = run("sample", trained, "--prime-file", tmp_path / "prime2.txt", "--length", "30", "--seed", "3")
    assert g.stdout == b.stdout
    one_line_error(run("sample", trained, "--prime", "a\\q"), "unknown escape")
    one_line_error(run("sample", trained, "--prime", "a\\"), "lone backslash")
    one_line_error(run("sample", trained, "--prime", "a", "--prime-file", tmp_path / "prime2.txt"), "not both")


def test_top_n_probs_prints_the_next_character_distribution(trained):
    from fastrnn import reference
    from fastrnn.api import load_model
    from fastrnn import sample as gen

    r = run("sample", trained, "--prime", "The ", "--top-n-probs", "4")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 4
    probs = [float(line.split()[0]) for line in lines]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    model, vocab, _ = load_model(trained)
    expect = gen.next_probs(reference, model.P, vocab, "The ", 4, dtype=model.dtype)
    assert [eval(line.split(None, 1)[1]) for line in lines] == [symbol for symbol, _ in expect]
    assert all(abs(p - q) < 1e-5 for p, (_, q) in zip(probs, expect))


def test_sample_with_sample_every_prints_text(small_corpus, tmp_path):
    r = run("train", small_corpus, "-o", tmp_path / "run", *SMALL, "--max-steps", "4", "--sample-every", "2",
            "--sample-length", "30")
    assert r.exit_code == 0, r.output
    assert r.stderr.count("--- sample at step") == 2


@pytest.fixture
def trained(small_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("trained") / "run"
    assert run("train", small_corpus, "-o", d, *SMALL, "--max-steps", "3").exit_code == 0
    return d


def test_bad_inputs(small_corpus, trained, tmp_path):
    one_line_error(run("sample", trained, "--prime", "The Zebra"), "'Z'")
    one_line_error(run("sample", trained, "--temperature", "0"), "temperature")
    one_line_error(run("sample", trained, "--temperature", "-1"), "temperature")
    one_line_error(run("sample", tmp_path / "nope"), "not found")
    one_line_error(run("sample", small_corpus), "corpus file, not a checkpoint")
    text = tmp_path / "t.txt"
    text.write_text("hello")
    one_line_error(run("sample", text), "not a fastrnn checkpoint")
    r = run("train", text, "-o", tmp_path / "x", "--max-steps", "1")  # text is prepared, then found too short
    assert r.exit_code == 1 and r.stderr.startswith("corpus: prepared"), r.output
    assert r.stderr.strip().splitlines()[-1].startswith("fastrnn: error: the train split has"), r.output
    one_line_error(run("train", tmp_path / "missing.h5", "-o", tmp_path / "x", "--max-steps", "1"))
    one_line_error(run("train", small_corpus, "-o", tmp_path / "x", "--batch-size", "100000", "--max-steps", "1"),
                   "batch")
    before = (trained / "checkpoint.h5").read_bytes()
    one_line_error(run("train", small_corpus, "-o", trained, *SMALL, "--max-steps", "5"), "--resume")
    one_line_error(run("train", small_corpus, "-o", trained, "--hidden-size", "32", "--resume"), "hidden-size")
    assert (trained / "checkpoint.h5").read_bytes() == before


def test_zero_and_negative_sizes_are_refused(small_corpus, tmp_path):
    for opt in ("--hidden-size", "--seq-len", "--batch-size"):
        r = run("train", small_corpus, "-o", tmp_path / "x", opt, "0")
        assert r.exit_code == 2
        one_line_error(r, "Invalid value", opt)
        assert not (tmp_path / "x").exists()


def test_divergence_exits_with_status_3(small_corpus, tmp_path):
    r = run("train", small_corpus, "-o", tmp_path / "r", *SMALL, "--max-steps", "100", "--optimizer", "sgd",
            "--lr", "1e38", "--clip", "0", "--divergence-factor", "0")
    assert r.exit_code == 3, r.output
    assert "loss became" in r.stderr
    r = run("train", small_corpus, "-o", tmp_path / "f", *SMALL, "--max-steps", "100", "--optimizer", "sgd",
            "--lr", "1e30", "--clip", "0")
    assert r.exit_code == 3, r.output
    assert "exceeds 5.0x the starting loss" in r.stderr


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_and_resumes(small_corpus, tmp_path, signum, status):
    run_dir = tmp_path / "r"
    cmd = [sys.executable, "-m", "fastrnn", "train", small_corpus, "-o", str(run_dir), "--hidden-size", "64",
           "--batch-size", "8", "--seq-len", "20", "--checkpoint-every", "0", "--eval-every", "0", "--log-every", "1"]
    p = subprocess.Popen(cmd + ["--max-steps", "1000000"], stderr=subprocess.PIPE, text=True)
    # wait until training runs (a progress line for step 1 or later)
    for line in p.stderr:
        if line.startswith("step "):
            break
    time.sleep(0.3)
    p.send_signal(signum)
    _, err = p.communicate(timeout=120)
    assert p.returncode == status, err
    assert "--resume" in err and "Traceback" not in err
    step = ckpt_io.load(run_dir).state["step"]
    assert step >= 1
    r = subprocess.run(cmd + ["--max-steps", str(step + 2), "--resume"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert ckpt_io.load(run_dir).state["step"] == step + 2


def test_sample_length_during_training_is_bounded(small_corpus, tmp_path):
    """A sample printed during training is held in memory whole: --sample-length 1e20 once filled 24 GB."""
    r = run("train", small_corpus, "-o", tmp_path / "run", *SMALL, "--max-steps", "2", "--sample-every", "1",
            "--sample-length", "100000000000000000000")
    assert r.exit_code == 2 and "--sample-length" in r.stderr and not (tmp_path / "run").exists()


def test_shuffle_and_optimizer_settings_reach_the_run_and_resume_exactly(small_corpus, tmp_path):
    """--shuffle trains on windows in a per-epoch order (other numbers than streams) and resumes bit for bit;
    --beta1/--beta2/--eps (adam) and --rmsprop-decay (rmsprop) change the numbers."""
    import numpy as np

    def params(d):
        return np.array(ckpt_io.load(d).params)

    args = [*SMALL, "--eval-every", "0"]
    assert run("train", small_corpus, "-o", tmp_path / "plain", *args, "--max-steps", "6").exit_code == 0
    r = run("train", small_corpus, "-o", tmp_path / "shuf", *args, "--max-steps", "6", "--shuffle")
    assert r.exit_code == 0, r.output
    assert not np.array_equal(params(tmp_path / "shuf"), params(tmp_path / "plain"))
    assert run("train", small_corpus, "-o", tmp_path / "half", *args, "--max-steps", "3", "--shuffle").exit_code == 0
    r = run("train", small_corpus, "-o", tmp_path / "half", *args, "--max-steps", "6", "--shuffle", "--resume")
    assert r.exit_code == 0, r.output
    assert params(tmp_path / "half").tobytes() == params(tmp_path / "shuf").tobytes()
    for i, extra in enumerate([["--beta1", "0.5"], ["--beta2", "0.9"], ["--eps", "1e-3"]]):
        assert run("train", small_corpus, "-o", tmp_path / f"b{i}", *args, "--max-steps", "6", *extra).exit_code == 0
        assert not np.array_equal(params(tmp_path / f"b{i}"), params(tmp_path / "plain")), extra
    rms = [run("train", small_corpus, "-o", tmp_path / f"r{i}", *args, "--max-steps", "6", "--optimizer", "rmsprop",
               *extra) for i, extra in enumerate([[], ["--rmsprop-decay", "0.5"]])]
    assert all(r.exit_code == 0 for r in rms)
    assert not np.array_equal(params(tmp_path / "r0"), params(tmp_path / "r1"))


def test_options_without_effect_are_refused(small_corpus, trained, tmp_path):
    out = tmp_path / "run"
    one_line_error(run("train", small_corpus, "-o", out, "--momentum", "0.9"), "--momentum", "adam", "sgd")
    one_line_error(run("train", small_corpus, "-o", out, "--optimizer", "sgd", "--beta1", "0.5"), "--beta1")
    one_line_error(run("train", small_corpus, "-o", out, "--rmsprop-decay", "0.9"), "--rmsprop-decay")
    one_line_error(run("train", small_corpus, "-o", out, "--optimizer", "sgd", "--eps", "1e-6"), "--eps")
    one_line_error(run("train", small_corpus, "-o", out, "--shuffle", "--carry-hidden"), "--shuffle")
    one_line_error(run("train", small_corpus, "-o", out, "--beta2", "1"), "--beta2")
    assert not out.exists()
    one_line_error(run("sample", trained, "--beam-width", "3", "--top-k", "5"), "--top-k", "--beam-width")
    one_line_error(run("sample", trained, "--beam-width", "3", "--greedy", "--temperature", "0.5"), "--greedy")


def test_an_unprimed_sample_starts_from_a_state_warmed_on_real_text(trained, small_corpus):
    """The checkpoint keeps the start of the val split; an unprimed sample is the sample primed (silently) with
    it, in the CLI, the API and during training, instead of a zero state fed a newline."""
    from fastrnn.api import CharRNN
    from fastrnn.corpus import open_corpus

    state = ckpt_io.load(trained).state
    with open_corpus(small_corpus) as corpus:
        assert state["warmup"] == [int(t) for t in corpus.split("val")[:100]]
        warm = corpus.vocab.decode(np.array(state["warmup"], dtype=np.int32))
    unprimed = run("sample", trained, "--length", "60", "--seed", "3")
    primed = run("sample", trained, "--prime", warm.replace("\\", "\\\\"), "--length", "60", "--seed", "3")
    assert unprimed.exit_code == 0 and primed.exit_code == 0
    assert unprimed.stdout == primed.stdout[len(warm):]
    model = CharRNN.load(trained)
    assert model.generate("", 60, seed=3) + "\n" == unprimed.stdout
    assert run("sample", trained, "--top-n-probs", "3").stdout == \
        run("sample", trained, "--prime", warm.replace("\\", "\\\\"), "--top-n-probs", "3").stdout


def test_warmup_and_cosine_schedule(small_corpus, tmp_path):
    """--warmup-steps ramps the rate up linearly; --lr-schedule cosine takes it to 0 (or --lr-floor x --lr) at the
    last step; the log shows the rate each update used. (With --max-time and no step limit: tests/test_choose.py.)"""
    import json
    import math

    from fastrnn.config import TrainConfig
    from fastrnn.optim import learning_rate

    c = TrainConfig(lr=0.01, warmup_steps=4, lr_schedule="cosine")
    assert [learning_rate(c, s, 10, 20) for s in range(4)] == [0.0025, 0.005, 0.0075, 0.01]
    assert learning_rate(c, 4, 10, 20) == 0.01 and abs(learning_rate(c, 12, 10, 20) - 0.005) < 1e-12
    assert learning_rate(c, 20, 10, 20) < 1e-18
    floored = TrainConfig(lr=0.01, warmup_steps=4, lr_schedule="cosine", lr_floor=0.1)
    assert abs(learning_rate(floored, 4, 10, 20) - 0.01) < 1e-15
    assert abs(learning_rate(floored, 12, 10, 20) - 0.0055) < 1e-15
    assert learning_rate(floored, 20, 10, 20) == learning_rate(floored, 99, 10, 20) == 0.001
    step = TrainConfig(lr=0.01, warmup_steps=2, lr_decay=0.5, lr_decay_every=3)
    assert [learning_rate(step, s, 10) for s in range(8)] == [0.005, 0.01, 0.01, 0.005, 0.005, 0.005, 0.0025, 0.0025]
    r = run("train", small_corpus, "-o", tmp_path / "run", *SMALL[:-2], "--log-every", "1", "--max-steps", "10",
            "--lr", "0.01", "--warmup-steps", "2", "--lr-schedule", "cosine", "--eval-every", "0")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    lrs = [row["lr"] for row in rows if "lr" in row][:10]
    expect = [0.005, 0.01] + [0.01 * 0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]
    assert all(abs(a - b) < 1e-12 for a, b in zip(lrs, expect)), lrs
