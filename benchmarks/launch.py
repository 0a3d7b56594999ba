"""`fastrnn train` as a subprocess a benchmark watches, as a user runs it: stderr a pipe, its lines timestamped as
they come (a thread reads them), the rows of its RUN_DIR/log.jsonl as they are written, the RSS and CPU time of its
processes (every MPI rank, under `mpiexec -n K`), and a kill -9 of all of them.

Start-up is read from train's own lines: the `model ...` line comes when the corpus is open and checked (its id
pass), the kernels are planned and the model made; `first step: compiling ...` just before the first step, whose
minibatch read checks the CRC of the chunks the streams start in; `first step took S s` after it (S: the step
alone, JIT compilation or numba's cache included). Every time is measured from the launch.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from benchmarks import common

MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
START, COMPILING, COMPILED, KERNELS = "model ", "first step: compiling", "first step took ", "kernels: "


def train_command(corpus, run_dir, ranks, options, resume=False):
    """`fastrnn train CORPUS --output RUN_DIR OPTIONS... --resume|--force` in this Python, under `mpiexec -n RANKS`
    (the one beside this Python) when ranks > 1."""
    cmd = common.fastrnn_cmd("train", corpus, "--output", run_dir, *options, "--resume" if resume else "--force")
    return ([MPIEXEC, "-n", str(ranks)] if ranks > 1 else []) + cmd


def tree(pid):
    """The psutil.Process of `pid` and its descendants that are alive ([] once it is gone)."""
    import psutil

    try:
        top = psutil.Process(pid)
        return [top] + top.children(recursive=True)
    except psutil.Error:
        return []


def cpu_seconds(procs):
    """User + system CPU seconds of the processes `procs` so far."""
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class Training:
    """One launch of `fastrnn train` (the command of `train_command`), in a session of its own so that a kill
    reaches every process of it. `lines`: [(seconds since launch, line)] of its stderr; `cpu_at_first_step`: the
    CPU seconds of its processes when the first step had taken place."""

    def __init__(self, cmd, env=None):
        self.cmd = [str(a) for a in cmd]
        self.launched = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True,
                                     env=env)
        self.lines, self.cpu_at_first_step = [], None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            now = time.monotonic() - self.launched
            if line.startswith(COMPILED):
                self.cpu_at_first_step = cpu_seconds(tree(self.proc.pid))
            self.lines.append((now, line.rstrip("\n")))

    def seconds(self):
        """Seconds since the launch."""
        return time.monotonic() - self.launched

    def first(self, prefix):
        """(seconds since launch, line) of the first stderr line starting with `prefix`, or None."""
        return next(((t, line) for t, line in list(self.lines) if line.startswith(prefix)), None)

    def last_line(self):
        """The last non-empty line of stderr ("" if none): what an error said."""
        return next((line.strip() for _, line in reversed(list(self.lines)) if line.strip()), "")

    def rss_mb(self):
        """The resident memory of all its processes (mpiexec and every rank), MB; None once they are gone."""
        procs = tree(self.proc.pid)
        rss = common.tree_rss(procs[0]) if procs else 0  # (0 also for a process that has exited)
        return rss / 2**20 if rss else None

    @contextlib.contextmanager
    def paused(self, timeout=5.0):
        """Every process of the launch stopped (SIGSTOP) inside the block, continued (SIGCONT) after it: the
        machine quiet for a measurement of its own speed. Waits until each has stopped (a rank left running would
        spin in its collective)."""
        import psutil

        procs = tree(self.proc.pid)
        try:
            for p in procs:
                try:
                    p.send_signal(signal.SIGSTOP)
                except psutil.Error:
                    pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not all(_stopped(p) for p in procs):
                time.sleep(0.005)
            yield
        finally:
            for p in procs:
                try:
                    p.send_signal(signal.SIGCONT)
                except psutil.Error:
                    pass

    def kill(self):
        """SIGKILL to every process of the launch (its process group, and any descendant outside it)."""
        import psutil

        procs = tree(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in procs:
            try:
                p.kill()
            except psutil.Error:  # gone already
                pass
        self.wait(60)

    def stop(self, timeout=300):
        """SIGINT, as Ctrl-C: train finishes its step, writes a checkpoint and exits (mpiexec passes it to the
        ranks); kill -9 after `timeout` seconds. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def wait(self, timeout=None):
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code

    def startup(self):
        """When start-up ended, from train's own lines: seconds from the launch to the `model` line (corpus open
        and checked, kernels planned, model made), to the start of the first step and to its end; the first
        step's own seconds; the CPU seconds to its end; the kernels line; the step resumed from."""
        start, compiling, compiled = self.first(START), self.first(COMPILING), self.first(COMPILED)
        kernels = self.first(KERNELS)
        took = re.match(r"first step took ([0-9.]+) s", compiled[1]) if compiled else None
        resumed = re.search(r"resumed at step (\d+)", start[1]) if start else None
        return {"to_start_line": start[0] if start else None,
                "to_first_step": compiling[0] if compiling else None,
                "to_first_step_done": compiled[0] if compiled else None,
                "first_step_seconds": float(took.group(1)) if took else None,
                "cpu_seconds_to_first_step_done": self.cpu_at_first_step,
                "kernels": kernels[1][len(KERNELS):] if kernels else None,
                "resumed_from": int(resumed.group(1)) if resumed else None}


def _stopped(p):
    """Whether process p is stopped (or gone)."""
    import psutil

    try:
        return p.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True


class LogTail:
    """The rows of a run's log.jsonl as they are written: `new()` returns the complete rows added since its last
    call whose step is past `after` (then the last step returned). A resumed run rewrites the file (its rows past
    the checkpoint dropped, a new file renamed over the old): a file that is not the one read so far is read from
    its start, and set `after` to the checkpoint's step when relaunching."""

    def __init__(self, path, after=-1):
        self.path, self.after = path, after
        self.inode, self.offset = None, 0

    def new(self):
        try:
            with open(self.path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                if inode != self.inode:
                    self.inode, self.offset = inode, 0
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a row being written (or cut by a kill) waits
        self.offset += len(complete)
        rows = []
        for line in complete.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > self.after:
                rows.append(row)
                self.after = row["step"]
        return rows


def read_rows(path):
    """Every row of a log.jsonl file."""
    return LogTail(path).new()
