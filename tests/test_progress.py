"""What `fastrnn train` shows on stderr (fastrnn.progress): a live status line on a terminal, plain rows elsewhere."""

import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from fastrnn.progress import CLEAR, COMPILING, Printer

from conftest import make_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Stream(io.StringIO):
    """stderr as the printer sees it: a terminal or not."""

    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


class Clock:
    """A clock the test moves."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def printer(tty, quiet=False, width=200):
    stream, clock = Stream(tty), Clock()
    return Printer(quiet, stream=stream, clock=clock, width=lambda: width), stream, clock


def row(step, val_loss=None):
    data = {"step": step, "max_steps": 100, "epoch": step / 50, "loss": 2.5, "chars_per_sec": 12_300.0,
            "rss_mb": 85.2, "eta": 42.0}
    if val_loss is not None:
        data["val_loss"] = val_loss
    return data


START = {"config": {"backend": "numba", "dropout": 0, "optimizer": "adam", "lr": 0.002, "batch_size": 2,
                    "seq_len": 8},
         "model": {"model": "rnn", "hidden_size": 8, "vocab_size": 29, "parameters": 565, "dtype": "float32"},
         "threads": 1, "train_tokens": 1000, "steps_per_epoch": 50, "plan": "fused step", "resumed_from": None}
END = {"step": 100, "epoch": 2.0, "loss": 2.1, "val_loss": 2.0, "stop_reason": "max_steps", "checkpoint": "c.h5",
       "best_val": 1.9, "best_step": 80, "best_checkpoint": "best.h5"}


def screen(raw):
    """The lines a terminal shows for output `raw`: a carriage return goes back to the line's start, ESC[K erases
    from the cursor to the line's end."""
    lines = []
    for physical in raw.replace("\r\n", "\n").split("\n"):
        cells, cursor = [], 0
        i = 0
        while i < len(physical):
            if physical.startswith("\x1b[K", i):
                del cells[cursor:]
                i += 3
                continue
            if physical[i] == "\r":
                cursor = 0
            else:
                cells[cursor:cursor + 1] = [physical[i]]
                cursor += 1
            i += 1
        lines.append("".join(cells))
    return lines


def test_the_status_line_is_redrawn_at_most_four_times_a_second():
    p, stream, clock = printer(tty=True)
    for step in range(1, 11):  # ten rows in 0.09 s: only the first is drawn
        p("log", row(step))
        clock.now += 0.01
    assert stream.getvalue().count("\r") == 1 and "step 1/100" in stream.getvalue()
    clock.now += 0.25
    p("log", row(11))
    out = stream.getvalue()
    assert out.count("\r") == 2 and "\n" not in out
    assert screen(out) == ["step 11/100 | epoch 0.22 | loss 2.5000 | 12.3k chars/s | 85 MB | ETA 42s"]


def test_kept_lines_scroll_above_the_status_line_which_shows_the_val_loss_and_its_age():
    p, stream, clock = printer(tty=True)
    p("start", START)
    p("compiling", {})
    p("compiled", {"seconds": 8.1})
    p("log", row(1))
    p("eval", {"step": 20, "val_loss": 1.62, "best_val": 1.6})
    p("log", row(20, val_loss=1.62))  # the eval line erased the status line: redrawn at once
    clock.now += 0.3
    p("log", row(25))
    p("sample", {"step": 25, "text": "the cat"})
    p("message", {"text": "warning: something"})
    clock.now += 0.01
    p("log", row(26))
    shown = screen(stream.getvalue())
    assert shown[2:] == [COMPILING, "first step took 8.10 s (includes JIT compilation)",
                         "eval step 20: val loss 1.6200 (best 1.6000)",
                         "--- sample at step 25 ---", "the cat", "---", "warning: something",
                         "step 26/100 | epoch 0.52 | loss 2.5000 | val 1.6200 (6 steps ago) | 12.3k chars/s | 85 MB "
                         "| ETA 42s"]
    assert shown[0].startswith("model rnn H=8") and shown[1] == "kernels: fused step"
    assert "val 1.6200 (this step)" in stream.getvalue() and "val 1.6200 (5 steps ago)" in stream.getvalue()


def test_the_end_leaves_no_status_line_behind():
    p, stream, _ = printer(tty=True)
    p("log", row(99))
    p("end", END)
    assert screen(stream.getvalue()) == [
        "done: step 100, epoch 2.00, train loss 2.1000, val loss 2.0000 (max_steps); checkpoint c.h5",
        "best: val loss 1.9000 at step 80; best.h5", ""]
    p, stream, _ = printer(tty=True)
    with p:  # an error ends the run without an 'end' event: the status line is erased all the same
        p("log", row(3))
    assert screen(stream.getvalue()) == [""]


def test_the_status_line_is_cut_to_the_terminal_width():
    p, stream, clock = printer(tty=True, width=30)
    p("log", row(1))
    p("eval", {"step": 1, "val_loss": 1.62, "best_val": 1.62})
    p("log", row(1, val_loss=1.62))
    (status,) = [line for line in screen(stream.getvalue()) if line.startswith("step")]
    assert status == "step 1/100 | epoch 0.02 | los" and len(status) == 29
    assert screen(stream.getvalue())[0] == "eval step 1: val loss 1.6200 (best 1.6200)"  # kept lines are whole


def test_off_a_terminal_a_plain_row_every_ten_seconds_the_first_and_every_evaluation():
    p, stream, clock = printer(tty=False)
    p("start", START)
    p("compiling", {})
    for step in range(1, 301):
        if step == 150:
            p("eval", {"step": step, "val_loss": 1.7, "best_val": 1.7})
        p("log", row(step, val_loss=1.7 if step == 150 else None))
        clock.now += 0.125  # 10 s is 80 steps
    out = stream.getvalue()
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert lines[2] == COMPILING
    rows = [line for line in lines if line.startswith("step ")]
    assert [r.split(" | ")[0] for r in rows] == ["step 1/100", "step 81/100", "step 150/100", "step 230/100"]
    assert "eval step 150: val loss 1.7000 (best 1.7000)" in lines
    assert rows[-1].startswith("step 230/100 | epoch 4.60 | loss 2.5000 | val 1.7000 (80 steps ago) | 12.3k chars/s")


@pytest.mark.parametrize("tty", [True, False])
def test_quiet_prints_only_the_summary(tty):
    p, stream, _ = printer(tty=tty, quiet=True)
    p("start", START)
    p("compiling", {})
    p("log", row(1))
    p("eval", {"step": 1, "val_loss": 1.62, "best_val": 1.62})
    p("message", {"text": "warning: x"})
    p("end", END)
    assert stream.getvalue().splitlines() == [
        "done: step 100, epoch 2.00, train loss 2.1000, val loss 2.0000 (max_steps); checkpoint c.h5",
        "best: val loss 1.9000 at step 80; best.h5"]


def test_no_compiling_notice_for_the_numpy_backend():
    p, stream, _ = printer(tty=False)
    p("start", dict(START, config=dict(START["config"], backend="numpy")))
    p("compiling", {})
    assert COMPILING not in stream.getvalue()


# ------------------------------------------------------------------------------------------- through the command

TRAIN = ["--hidden-size", "8", "--batch-size", "2", "--seq-len", "8", "--max-steps", "60", "--eval-every", "20",
         "--log-every", "1"]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    (d / "t.txt").write_text(make_text(20_000))
    subprocess.run([sys.executable, "-m", "fastrnn", "prepare", str(d / "t.txt"), "-o", str(d / "c.h5")],
                   check=True, capture_output=True, cwd=ROOT, timeout=120)
    return str(d / "c.h5")


def run_on_a_terminal(cmd, columns=120, timeout=300):
    """`cmd` with stdout and stderr on a pseudo-terminal of `columns` columns: (exit status, all it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    p = subprocess.Popen(cmd, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, cwd=ROOT)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
        return p.wait(timeout=max(deadline - time.monotonic(), 1)), out.decode()
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()


def test_train_on_a_terminal_rewrites_one_status_line(tiny_corpus, tmp_path):
    status, out = run_on_a_terminal([sys.executable, "-m", "fastrnn", "train", tiny_corpus, "-o",
                                     str(tmp_path / "run"), *TRAIN])
    assert status == 0, out
    assert "\rstep 1/60 | " in out and CLEAR in out  # drawn in place, erased before each kept line
    shown = [line for line in screen(out) if line]
    assert COMPILING in shown and any(line.startswith("first step took") for line in shown)
    evals = [line for line in shown if line.startswith("eval step")]
    assert [line.split(":")[0] for line in evals] == ["eval step 20", "eval step 40", "eval step 60"]
    assert shown[-2].startswith("done: step 60,") and shown[-1].startswith("best: val loss")
    assert not any(line.startswith("step ") for line in shown[shown.index(evals[-1]):])  # erased at the end
    assert all(len(line) < 120 for line in screen(out) if line.startswith("step "))


def test_train_through_a_pipe_prints_plain_rows(tiny_corpus, tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastrnn", "train", tiny_corpus, "-o", str(tmp_path / "run"), *TRAIN],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\x1b" not in r.stderr
    lines = r.stderr.splitlines()
    assert COMPILING in lines
    steps = [int(line.split(" | ")[0].split()[1].split("/")[0]) for line in lines if line.startswith("step ")]
    assert {1, 20, 40, 60} <= set(steps) and len(steps) < 60  # the first, every evaluation's; not one a step
    assert [line for line in lines if line.startswith("eval step")][-1].startswith("eval step 60: val loss")
    assert lines[-2].startswith("done: step 60,")
