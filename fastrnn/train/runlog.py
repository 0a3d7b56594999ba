"""The run log, RUN_DIR/log.jsonl: one JSON row per progress report, written by rank 0 as the run goes.

A row (the 'log' event sends it too): run_id, step, epoch, loss (smoothed), batch_loss, lr, grad_norm,
chars_per_sec, rss_mb, elapsed; with a val loss: val_loss, val_tokens, eval_seconds; with several ranks: ranks,
allreduce_ms; what the checkpoints and samples written since the previous row took, where there were any
(checkpoint_seconds: a list, one per checkpoint; sample_seconds: their sum); last, eta.
"""

import json
import math
import os
import time

import psutil

from fastrnn import checkpoint as ckpt_io
from fastrnn.errors import CheckpointError, FileError, os_reason

LOG_NAME = "log.jsonl"


def open_log(run_dir, run_id, keep_until, legacy, is_root):
    """The log of this rank: RunLog on rank 0 (keep_until: None for a new run, else the step a resumed run
    continues from), NoLog on the others."""
    if not is_root:
        return NoLog()
    return RunLog(os.path.join(run_dir, LOG_NAME), run_id, keep_until, legacy)


def row(state, spe, loss, norm, lr, chars_per_sec):
    """The fields every progress row has, in their order: the run, its position, its losses and rate, the memory
    and time so far (state: checkpoint.RunState; spe: steps per epoch)."""
    epoch = state.epoch + state.index / spe  # 6 digits: one step of a billion-token corpus shows
    return {"run_id": state.run_id, "step": state.step, "epoch": float(f"{epoch:.6g}"),
            "loss": state.smooth_loss, "batch_loss": loss, "lr": lr, "grad_norm": norm,
            "chars_per_sec": chars_per_sec, "rss_mb": psutil.Process().memory_info().rss / 2**20,
            "elapsed": state.elapsed}


class Window:
    """The steps since the last progress row and when they began (chars/s, and the seconds a step for the ETA)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.start, self.steps = time.perf_counter(), 0

    def rate(self, now, chars_per_step):
        """(seconds since the window began, its steps, its chars/s or None)."""
        seconds = now - self.start
        return seconds, self.steps, self.steps * chars_per_step / seconds if self.steps and seconds > 0 else None


class NoLog:
    """The log of a rank other than 0: rank 0 alone writes log.jsonl."""

    foreign = 0

    def write(self, row):
        pass

    def truncate_after(self, step):
        pass

    def close(self):
        pass


class RunLog:
    """RUN_DIR/log.jsonl, held open for the run: one JSON row a line, flushed as written (a crash loses no row
    already written); rows past a step, and rows of another run (another run_id), are dropped when a run resumes
    or rolls back to it."""

    def __init__(self, path, run_id, keep_until=None, legacy=False):
        """keep_until: None to start a new log (an old one is removed), else the step whose rows are kept.
        legacy: rows without a run id are this run's (it began before fastrnn had run ids).
        self.foreign: the number of rows of other runs dropped."""
        self.path, self.run_id, self.legacy, self.foreign = path, run_id, legacy, 0
        if keep_until is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            self.foreign = self._truncate(keep_until)
        try:
            self.file = open(path, "a")
        except OSError as exc:
            raise FileError(f"cannot write {path}: {os_reason(exc)}") from exc

    def write(self, row):
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as exc:  # a full disk, the run directory gone, an I/O error: the run stops here
            ckpt = os.path.join(os.path.dirname(self.path), ckpt_io.CHECKPOINT_NAME)
            tail = (f"the last checkpoint, step {saved_step(ckpt)} in {ckpt}, is intact; resume with --resume"
                    if os.path.exists(ckpt) else "no checkpoint was written yet")
            raise FileError(f"cannot write {self.path}: {os_reason(exc)}; the run stopped; {tail}") from exc

    def truncate_after(self, step):
        """Drop the rows past `step`, atomically (a new file renamed over the old, the handle moved to it)."""
        self.file.close()
        self._truncate(step)
        self.file = open(self.path, "a")

    def _truncate(self, step):
        if not os.path.exists(self.path):
            return 0
        with open(self.path, "rb") as f:
            rows = [line for line in f if line.strip()]
        keep, foreign = [], 0
        for line in rows:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a row cut by a crash, or damaged
            if not isinstance(row, dict) or row.get("run_id", self.run_id if self.legacy else "") != self.run_id:
                foreign += 1
            elif isinstance(row.get("step", 0), int) and row.get("step", 0) <= step:
                keep.append(line.rstrip(b"\r\n") + b"\n")
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.writelines(keep)
            os.replace(tmp, self.path)
        except OSError as exc:  # the old log is left as it was
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise FileError(f"cannot rewrite {self.path}: {os_reason(exc)}") from exc
        return foreign

    def close(self):
        try:
            self.file.close()
        except OSError:  # the failed write has been reported (FileError); its buffered row is lost
            pass


def saved_step(path):
    try:
        return ckpt_io.load(path).state.step
    except CheckpointError:
        return "?"


def eta(steps_left, seconds_per_step, seconds_left):
    """Seconds left, from the step limit and the time limit (budget.TimeBudget.left), whichever comes first
    (None if unbounded)."""
    left = []
    if steps_left != math.inf and seconds_per_step:
        left.append(steps_left * seconds_per_step)
    if seconds_left is not None:
        left.append(max(0.0, seconds_left))
    return min(left) if left else None
