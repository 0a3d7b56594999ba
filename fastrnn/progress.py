"""What `fastrnn train` shows while it runs: the training events of fastrnn.train (`Run.emit`) as lines on stderr.

A 'log' event comes every --log-every steps, tens a second; one line for each scrolled the evaluations out of
sight. On a terminal, one status line is rewritten in place instead (at most every LIVE_INTERVAL seconds, cut to
the terminal's width so that it never wraps), and the lines worth keeping (evaluations, samples, messages, the
summary) scroll above it. Elsewhere (a pipe, a log file, nohup, CI), where a rewritten line would be a mess of
carriage returns, a plain row is printed every ROW_INTERVAL seconds, and at the first row and every evaluation.
log.jsonl keeps every --log-every row either way. A long evaluation shows its progress and ETA the same way
('evaluating' events), in place of the training's.
"""

import math
import os
import shutil
import sys
import time

import click

LIVE_INTERVAL = 0.25  # seconds between redraws of the status line: readable, and no cost to training
ROW_INTERVAL = 10.0  # seconds between plain rows off a terminal
ERASE = "\x1b[K"  # erase to the end of the line
CLEAR = "\r" + ERASE  # the status line erased, the cursor at its start
COMPILING = "first step: compiling the kernels unless numba's cache holds them (seconds, once)..."


class Printer:
    """Turns training events into stderr lines: a live status line on a terminal, plain rows elsewhere.

    `stream` (stderr), `clock` and `width` (the terminal's columns) are arguments so that tests can drive them.
    With `quiet`, only the summary at the end is printed.
    """

    def __init__(self, quiet=False, stream=None, clock=time.monotonic, width=None, row_interval=ROW_INTERVAL):
        self.quiet = quiet
        self.stream = sys.stderr if stream is None else stream
        self.live = self.stream.isatty()
        self.clock = clock
        self.width = width or (lambda: terminal_width(self.stream))
        self.row_interval = row_interval
        self.backend = None
        self.val = None  # (step, val loss) of the last evaluation, shown with its age
        self.shown = None  # clock time the status line was last drawn (or the last plain row printed)
        self.drawn = False  # the status line is on the screen (a kept line must erase it first)
        self.evaluated = None  # the step of the last 'evaluating' event (its first one is shown off a terminal)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        """An error or an interrupt ends the run without an 'end' event: the status line goes, so that the
        message the command prints does not follow it on the same line."""
        self.clear()

    def __call__(self, kind, data):
        if kind == "end":
            for line in summary_lines(data):
                self.keep(line)
        elif self.quiet:
            return
        elif kind == "start":
            self.backend = data["config"]["backend"]
            for line in start_lines(data):
                self.keep(line)
        elif kind == "compiling":
            if self.backend == "numba":  # the numpy backend has nothing to compile
                self.keep(COMPILING)
        elif kind == "compiled":
            self.keep(f"first step took {data['seconds']:.2f} s (includes JIT compilation)")
        elif kind == "eval":
            self.val = (data["step"], data["val_loss"])
            on = f" on {data['val_tokens']:,} val tokens in {data['seconds']:.1f} s" if "val_tokens" in data else ""
            self.keep(f"eval step {data['step']:,}: val loss {data['val_loss']:.4f} (best {data['best_val']:.4f}){on}")
        elif kind == "log":
            self.progress(data)
        elif kind == "evaluating":
            self.show(evaluating(data), first=self.evaluated != data["step"])
            self.evaluated = data["step"]
        elif kind == "sample":
            self.keep(f"--- sample at step {data['step']} ---\n{data['text']}\n---")
        elif kind == "message":
            self.keep(data["text"])

    def progress(self, row):
        """A 'log' row. On a terminal the status line is redrawn if LIVE_INTERVAL has passed or a kept line erased
        it; elsewhere a plain row is printed for the first row, an evaluation's, or once row_interval has passed."""
        self.show(status(row, self.val), first=row.get("val_loss") is not None)

    def show(self, text, first=False):
        """The status line `text` (on a terminal), or a plain row (elsewhere; at once if `first`)."""
        now = self.clock()
        if self.live:
            if self.drawn and now - self.shown < LIVE_INTERVAL:
                return
            text = text[:max(self.width() - 1, 1)]  # the last column would wrap on some terminals
            click.echo("\r" + text + ERASE, file=self.stream, nl=False)
            self.drawn = True
        else:
            if self.shown is not None and not first and now - self.shown < self.row_interval:
                return
            click.echo(text, file=self.stream)
        self.shown = now

    def keep(self, text):
        """A line that stays: the status line is erased first and redrawn by the next row, below it."""
        self.clear()
        click.echo(text, file=self.stream)

    def clear(self):
        """Erase the status line, if it is on the screen (before a kept line, or an error the command prints)."""
        if self.drawn:
            click.echo(CLEAR, file=self.stream, nl=False)
            self.drawn = False


def status(row, val):
    """The progress of a 'log' row in one line: step, epoch, loss, the last val loss and its age, speed, memory,
    ETA."""
    total = f"/{row['max_steps']:,}" if row.get("max_steps") else ""
    fields = [f"step {row['step']:,}{total}", f"epoch {epochs(row['epoch'])}", f"loss {row['loss']:.4f}"]
    if val is not None and val[0] <= row["step"]:  # not an evaluation after the step a rollback went back to
        fields.append(f"val {val[1]:.4f} ({_age(row['step'] - val[0])})")
    fields.append(f"{count(row['chars_per_sec'])} chars/s" if row["chars_per_sec"] else "- chars/s")
    fields.append(f"{row['rss_mb']:.0f} MB")
    if row.get("eta") is not None:
        fields.append(f"ETA {duration(row['eta'])}")
    return " | ".join(fields)


def evaluating(data):
    """The progress of an 'evaluating' event in one line: the step, the val tokens scored, the time, the ETA."""
    eta = f" | ETA {duration(data['eta'])}" if data.get("eta") is not None else ""
    return (f"evaluating step {data['step']:,}: {data['tokens']:,}/{data['total_tokens']:,} val tokens "
            f"({100 * data['batches'] / data['of']:.0f}%) | {duration(data['seconds'])}{eta}")


def count(n):
    """12.3k, 4.56M, 1.18G: a rate or a size at a glance."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= 0.9995 * size:
            return f"{n / size:.{max(0, 3 - len(str(int(round(n / size, 1)))))}f}{suffix}"
    return f"{n:.0f}"


def _age(steps):
    if steps == 0:
        return "this step"
    return f"{steps:,} step{'s' if steps != 1 else ''} ago"


def start_lines(data):
    """The model, the backend and the data of a 'start' event, and the kernels' plan."""
    m, c = data["model"], data["config"]
    resumed = f", resumed at step {data['resumed_from']}" if data["resumed_from"] is not None else ""
    layers = f" L={m['num_layers']}" if m.get("num_layers", 1) > 1 else ""
    drop = f" dropout {c['dropout']:g}" if c.get("dropout") else ""
    threads = f"{data['threads']} thread{'s' if data['threads'] != 1 else ''}"
    if data.get("ranks", 1) > 1:
        threads = f"{data['ranks']} MPI ranks x {threads}"
    lines = [f"model {m['model']}{layers} H={m['hidden_size']}{drop} V={m['vocab_size']} ({m['parameters']:,} "
             f"parameters, {m['dtype']}), {c['backend']} backend, {threads}, {c['optimizer']} lr {c['lr']:g}; "
             f"{data['train_tokens']:,} training chars, {data['steps_per_epoch']:,} steps/epoch of "
             f"{c['batch_size']}x{c['seq_len']}{resumed}",
             f"kernels: {data['plan']}"]
    if data.get("validation"):
        lines.append(data["validation"])
    if data.get("init_from") and data["resumed_from"] is None:
        lines.append(f"initialised from {data['init_from']}")
    return lines


def summary_lines(data):
    """The done line of an 'end' event, and the best evaluation's if there was one."""
    val = f", val loss {data['val_loss']:.4f}" if data.get("val_loss") is not None else ""
    took = ""
    if data.get("eval_seconds") and data.get("session_seconds"):
        took = (f" after {duration(data['session_seconds'])}, {data['eval_seconds']:.1f} s of it in evaluations "
                f"({100 * data['eval_seconds'] / data['session_seconds']:.1f}%)")
    loss = f"train loss {data['loss']:.4f}" if math.isfinite(data["loss"]) else "no step trained"
    lines = [f"done: step {data['step']:,}, epoch {epochs(data['epoch'])}, {loss}{val} "
             f"({data['stop_reason']}{took}); checkpoint {data['checkpoint']}"]
    if data.get("best_val") is not None:
        lines.append(f"best: val loss {data['best_val']:.4f} at step {data['best_step']:,}; "
                     f"{data['best_checkpoint']}")
    return lines


def epochs(e):
    """2.50, 0.52, 0.0045, 0.0000015: two decimals, or two significant digits below 0.01 (one step of a corpus of
    a billion characters is a millionth of an epoch)."""
    if not 0 < e < 0.01:
        return f"{e:.2f}"
    return f"{e:.{1 - math.floor(math.log10(e))}f}"


def duration(seconds):
    """3s, 4m05s, 2h07m, 3d04h."""
    seconds = int(round(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def terminal_width(stream):
    """The columns of the terminal `stream` writes to. Its own size first: shutil asks stdout's, which may be
    redirected while stderr is the terminal; a pseudo-terminal that was never sized says 0."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns or shutil.get_terminal_size().columns
