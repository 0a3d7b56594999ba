"""A long run as users run it, measured: `fastrnn train` on a large corpus, sampled every minute, killed with
SIGKILL at a random moment and resumed, and the resume checked to be exact.

    python -m benchmarks.soak --corpus linux.h5 [--minutes 60] [--interval 60] [--ranks 2] [--model lstm]
                              [--layers 2] [--hidden-size 512] [--batch-size N] [--seq-len T] [--kill-at S]
                              [--seed 0] [--settle 300] [--check-steps 100] [--no-yardstick] [--out DIR]
                              [--json FILE]
                              [-- TRAIN OPTIONS...]

Runs from a checkout (benchmarks/ is not part of the installed package); `--help` lists every option.

`fastrnn train` runs as a subprocess with a pipe as stderr (`mpiexec -n RANKS fastrnn train`, the mpiexec beside
this Python, for --ranks > 1), with train's defaults but for the model options and the TRAIN OPTIONS after `--`.
Every --interval seconds a row is taken: the median chars/s of the progress rows log.jsonl received in the
interval, the RSS of every training process (each rank, and mpiexec), and the share of the interval's wall time
that the rows say went into evaluations (eval_seconds), checkpoints (checkpoint_seconds) and samples
(sample_seconds). At --kill-at seconds (default: a moment in the middle third drawn from --seed; later if no
checkpoint exists yet) every training process gets SIGKILL and the same command with --resume continues; at
--minutes SIGINT stops it (the soak runs on, 10 minutes more at most, until it has killed the run and the resumed run
has trained the steps the resume check compares).

The resume is checked: the run directory as the kill left it is copied, and a run resumed from the copy trains
--check-steps steps in one go (the reference). The progress rows of the resumed soak session over those steps,
and the rows the killed session wrote past its checkpoint before the kill (the run as it went unkilled), must
equal the reference's bit for bit: smoothed loss, batch loss, gradient norm, learning rate.

With every row the machine's own speed is measured, every training process stopped (SIGSTOP) meanwhile and
continued after (a fraction of a second): the median GFLOP/s of a 1024x1024 sgemm on the cores the run uses, and the
GB/s of copying a 64 MB array (--no-yardstick: not measured). A host whose speed drifts (another guest on the same
cores, a clock that changes) moves both; fastrnn slowing down by itself moves chars/s alone.

Goals, over the rows taken --settle seconds or more after their session's launch: chars/s flat within 5% (the
largest over the smallest interval median; the same over medians of blocks of BLOCK rows; and the run's speed
against the machine's, chars/s per sgemm GFLOP/s over such blocks), RSS flat within 50 MB (the largest max - min
of a session's RSS), evaluations + checkpoints <= 5% of the soak's wall time, the resume exact.
`python -m benchmarks.report` renders a soak*.json of docs/benchmarks/<date>/ as docs/soak.md.
"""

import functools
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import click

from benchmarks import common, launch, options

POLL = 0.5  # seconds between looks at the training process
OVERTIME = 600.0  # seconds the soak may run on past --minutes for the steps of the resume check
FLAT_CHARS, FLAT_RSS_MB, SHARE = 0.05, 50.0, 0.05  # the goals
YARD_N, YARD_REPEATS = 1024, 15  # the yardstick's sgemm: (n, n) @ (n, n), the median of this many
COPY_BYTES, COPY_REPEATS = 64 * 2**20, 5  # and its copy
BLOCK = 5  # rows in a block of the goal against the machine (the yardstick of one row varied by 7-11% from one
# second to the next on an idle 2-core Xeon, AVX-512: medians of five rows, about five minutes, are compared)
COMPARED = ("loss", "batch_loss", "grad_norm", "lr")  # the fields of a progress row an exact resume reproduces


def kill_moment(minutes, seed):
    """Seconds into the soak: a moment of its middle third drawn from `seed`."""
    return random.Random(seed).uniform(minutes * 60 / 3, minutes * 60 * 2 / 3)


def interval_row(t, wall, session, rows, rss_mb):
    """The row of an interval of `wall` seconds that ended `t` seconds into the soak: `rows` the progress rows
    received in it."""
    cps = [r["chars_per_sec"] for r in rows if r.get("chars_per_sec")]
    spent = {"eval": sum(r.get("eval_seconds") or 0.0 for r in rows),
             "checkpoint": sum(sum(r.get("checkpoint_seconds") or ()) for r in rows),
             "sample": sum(r.get("sample_seconds") or 0.0 for r in rows)}
    row = {"t": round(t, 2), "session": session, "step": rows[-1]["step"] if rows else None, "rows": len(rows),
           "chars_per_sec": statistics.median(cps) if cps else None, "rss_mb": rss_mb}
    for phase, seconds in spent.items():
        row[f"{phase}_seconds"] = round(seconds, 4)
        row[f"{phase}_share"] = seconds / wall if wall > 0 else None
    return row


def machine_speed(cores):
    """The machine's speed now: {"sgemm_gflops": median GFLOP/s of a YARD_N sgemm on `cores` BLAS threads,
    "copy_gbs": median GB/s (read + written) of copying COPY_BYTES on one}."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    a, b, c, src, dst = _yardstick_arrays()
    with threadpool_limits(cores, user_api="blas"):
        np.matmul(a, b, out=c)  # (BLAS threads started, pages touched)
        np.copyto(dst, src)
        gemm = common.time_calls(lambda: np.matmul(a, b, out=c), YARD_REPEATS, min_seconds=0.0)[0]
    copy = common.time_calls(lambda: np.copyto(dst, src), COPY_REPEATS, min_seconds=0.0)[0]
    return {"sgemm_gflops": round(2.0 * YARD_N**3 / gemm / 1e9, 2), "copy_gbs": round(2.0 * COPY_BYTES / copy / 1e9, 2)}


@functools.lru_cache(maxsize=1)
def _yardstick_arrays():
    """The operands of machine_speed, made once (outside the pauses)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((YARD_N, YARD_N)).astype(np.float32) for _ in range(2))
    src = np.ones(COPY_BYTES // 4, np.float32)
    return a, b, np.empty_like(a), src, np.empty_like(src)


def spread(values):
    """The largest over the smallest, minus 1 (None for fewer than two values)."""
    values = [v for v in values if v]
    return max(values) / min(values) - 1 if len(values) >= 2 else None


def compare(reference, rows):
    """The rows of `rows` at the steps of `reference` (progress rows), field by field (COMPARED): {rows_compared,
    first_step, last_step, mismatches (the first 10), mismatched_fields}."""
    ref = {r["step"]: r for r in reference}
    both = [r for r in rows if r["step"] in ref]
    bad = [{"step": r["step"], "field": k, "reference": ref[r["step"]].get(k), "value": r.get(k)}
           for r in both for k in COMPARED if r.get(k) != ref[r["step"]].get(k)]
    return {"rows_compared": len(both), "first_step": both[0]["step"] if both else None,
            "last_step": both[-1]["step"] if both else None, "mismatches": bad[:10], "mismatched_fields": len(bad)}


def resume_verdict(reference, resumed, killed, checkpoint_step, target):
    """The resume check: the resumed session's rows and the killed session's rows past the checkpoint, each
    compared with the reference's rows up to `target`. Exact: the reference and the resumed session reached
    `target`, rows were compared, and no field differed."""
    reference = [r for r in reference if checkpoint_step < r["step"] <= target]
    out = {"checkpoint_step": checkpoint_step, "target_step": target,
           "reference_last_step": reference[-1]["step"] if reference else None,
           "resumed": compare(reference, [r for r in resumed if r["step"] > checkpoint_step]),
           "before_kill": compare(reference, [r for r in killed if r["step"] > checkpoint_step])}
    reached = bool(reference) and reference[-1]["step"] == target and any(r["step"] >= target for r in resumed)
    out["exact"] = (reached and out["resumed"]["rows_compared"] > 0 and not out["resumed"]["mismatched_fields"]
                    and not out["before_kill"]["mismatched_fields"])
    return out


def goal(value, threshold, passed, what):
    return {"value": value, "threshold": threshold, "passed": passed, "what": what}


def block_medians(span, value, block=BLOCK):
    """value(row) over each block of `block` consecutive rows of a session: the medians of its parts (a tuple
    per row) over the block; a last block of fewer than half as many rows is left out."""
    out = []
    for session in sorted({s["session"] for s in span}):
        rows = [s for s in span if s["session"] == session and value(s) is not None]
        for i in range(0, len(rows), block):
            part = [value(s) for s in rows[i:i + block]]
            if 2 * len(part) >= block:
                out.append(tuple(statistics.median(column) for column in zip(*part)))
    return out


def against_machine(span, block=BLOCK):
    """chars/s per machine GFLOP/s of each block of `block` rows of a session (block_medians of both)."""
    pair = lambda s: (s["chars_per_sec"], s["sgemm_gflops"]) if s["chars_per_sec"] and s.get("sgemm_gflops") \
        else None  # noqa: E731
    return [cps / gflops for cps, gflops in block_medians(span, pair, block)]


def goals(samples, launches, settle, wall, check, block=BLOCK):
    """The goals of the soak (values None, passed None: too few rows in the span to say)."""
    span = [s for s in samples if s["t"] - launches[s["session"] - 1] >= settle]
    # chars/s of an interval cut short (the last, at the stop) is the median of a row or two: not judged
    typical = statistics.median([s["rows"] for s in span if s["rows"]] or [0])
    span = [s for s in span if s["rows"] >= typical / 2 or not s["chars_per_sec"]]
    cps = spread(s["chars_per_sec"] for s in span)
    blocks = spread(m for m, in block_medians(span, lambda s: (s["chars_per_sec"],) if s["chars_per_sec"] else None,
                                              block))
    relative = spread(against_machine(span, block))
    sessions = [[s["rss_mb"] for s in span if s["session"] == n and s["rss_mb"] and s["rows"]]
                for n in range(1, len(launches) + 1)]
    rss = [max(v) - min(v) for v in sessions if len(v) >= 2]
    spent = sum(s["eval_seconds"] + s["checkpoint_seconds"] for s in samples)
    return {
        "chars_per_sec_flat": goal(cps, FLAT_CHARS, None if cps is None else cps <= FLAT_CHARS,
                                   f"chars/s: the largest interval median over the smallest, minus 1, from "
                                   f"{settle:g} s after each launch"),
        "chars_per_sec_flat_blocks": goal(blocks, FLAT_CHARS, None if blocks is None else blocks <= FLAT_CHARS,
                                          f"the same over medians of blocks of {block} rows of a session (the "
                                          f"trend, without the minute-to-minute noise)"),
        "chars_per_sec_flat_vs_machine": goal(relative, FLAT_CHARS, None if relative is None else
                                              relative <= FLAT_CHARS,
                                              f"the training's speed against the machine's: chars/s per sgemm "
                                              f"GFLOP/s, medians of blocks of {block} rows, the largest over the "
                                              f"smallest, minus 1"),
        "rss_flat_mb": goal(max(rss) if rss else None, FLAT_RSS_MB, max(rss) <= FLAT_RSS_MB if rss else None,
                            f"RSS of every training process: max - min within a session, from {settle:g} s after "
                            f"its launch (the largest of the sessions)"),
        "eval_checkpoint_share": goal(spent / wall, SHARE, spent / wall <= SHARE,
                                      "evaluations + checkpoints, share of the soak's wall time"),
        "resume_exact": goal(check["exact"], True, check["exact"],
                             "the resumed run's next steps equal a run resumed from the same checkpoint and "
                             "never killed, and the killed run's own rows past that checkpoint"),
    }


def judge(data):
    """The goals of a soak result (its JSON) by the definitions here: a result written before a goal existed is
    judged by it too (benchmarks.report renders these)."""
    launches = [s["launched_at"] for s in data["sessions"]]
    return goals(data["rows"], launches, data["settings"]["settle"], data["wall_seconds"], data["resume_check"])


class Soak:
    """One soak: the launches of `fastrnn train`, the interval rows, the kill and the resume check."""

    def __init__(self, corpus, out, ranks, train_options, minutes, interval, kill_at, settle, check_steps,
                 yardstick=True):
        self.corpus, self.out, self.ranks, self.options = corpus, out, ranks, list(train_options)
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.yardstick = yardstick
        self.end, self.interval, self.kill_at, self.settle = minutes * 60, interval, kill_at, settle
        self.check_steps = check_steps
        self.run_dir, self.snapshot = os.path.join(out, "run"), os.path.join(out, "killed")
        self.samples, self.sessions, self.rows, self.kill = [], [], [], None
        self.training, self.waiting, self.overtime = None, False, False

    def clock(self):
        return time.monotonic() - self.started

    def launch(self, resume):
        cmd = launch.train_command(self.corpus, self.run_dir, self.ranks, self.options, resume)
        self.training = launch.Training(cmd)
        self.sessions.append({"launched_at": round(self.clock(), 2), "command": " ".join(cmd)})
        self.rows.append([])

    def run(self):
        """Train, sample, kill and resume until --minutes; then stop the run and check the resume."""
        self.started = time.monotonic()
        self.tail = launch.LogTail(os.path.join(self.run_dir, "log.jsonl"))
        self.last = 0.0
        shutil.rmtree(self.run_dir, ignore_errors=True)  # an earlier soak's log must not pass for this one's
        try:
            self.launch(resume=False)
            while self.going_on():
                self.check_alive()
                if self.kill_due():
                    self.kill_and_resume()
                elif self.clock() - self.last >= self.interval:
                    self.sample(self.training.rss_mb())
                else:
                    time.sleep(POLL)
            if self.clock() - self.last > POLL:  # (not just after the last interval's row)
                self.sample(self.training.rss_mb())
            self.finish_session(self.training.stop())
        finally:
            if self.training is not None and self.training.proc.poll() is None:  # an error, Ctrl-C: nothing is left
                self.training.kill()
        self.wall = self.clock()
        return self.resume_check()

    def sample(self, rss_mb, event=None):
        now = self.clock()
        rows = self.tail.new()
        self.rows[-1].extend(rows)
        row = interval_row(now, now - self.last, len(self.sessions), rows, rss_mb)
        if event:
            row["event"] = event
        if self.yardstick:
            t0 = time.monotonic()
            with self.training.paused():
                row.update(machine_speed(self.cores))
            row["paused_seconds"] = round(time.monotonic() - t0, 3)
        self.samples.append(row)
        self.last = now
        click.echo(line(row))

    def check_alive(self):
        code = self.training.proc.poll()
        if code is not None:
            self.training.wait(10)
            if code == 0:
                raise click.ClickException(f"fastrnn train finished {self.clock():.0f} s into the soak of "
                                           f"{self.end:g} s: give it more to do (e.g. `-- --max-epochs 1000`)")
            raise click.ClickException(f"fastrnn train failed (exit status {code}) {self.clock():.0f} s into the "
                                       f"soak: {self.training.last_line() or 'no message'}")

    def going_on(self):
        """Until --minutes, and on (OVERTIME at most) until the run has been killed and resumed and the resumed
        session has trained the steps the resume check compares."""
        now = self.clock()
        if now < self.end or now >= self.end + OVERTIME:
            return now < self.end
        more = self.kill is None or not any(r["step"] >= self.kill["checkpoint_step"] + self.check_steps
                                            for r in self.rows[-1])
        if more and not self.overtime:
            click.echo(f"--minutes are up; going on ({OVERTIME / 60:g} minutes at most) until the run has been killed "
                       f"and has trained {self.check_steps} steps after the checkpoint it resumed from")
            self.overtime = True
        return more

    def kill_due(self):
        """--kill-at has come and the run has a checkpoint to resume from (said once while it has none)."""
        if self.kill is not None or self.clock() < self.kill_at:
            return False
        if os.path.exists(os.path.join(self.run_dir, "checkpoint.h5")):
            return True
        if not self.waiting:
            click.echo(f"the kill is due ({self.kill_at:.0f} s) but the run has no checkpoint yet: waiting for one")
            self.waiting = True
        return False

    def finish_session(self, code):
        self.rows[-1].extend(self.tail.new())
        self.sessions[-1].update(exit_status=code, startup=self.training.startup(), rows=len(self.rows[-1]))

    def kill_and_resume(self):
        """SIGKILL to every training process, a copy of the run directory as the kill left it, and the same
        command with --resume."""
        from fastrnn import checkpoint as ckpt_io

        at, rss = self.clock(), self.training.rss_mb()
        self.training.kill()
        self.sample(rss, event="kill")
        self.finish_session(self.training.proc.returncode)
        shutil.rmtree(self.snapshot, ignore_errors=True)
        shutil.copytree(self.run_dir, self.snapshot)
        step = ckpt_io.load_for_resume(self.snapshot)[0].state["step"]
        self.kill = {"requested_at": round(self.kill_at, 2), "at": round(at, 2), "checkpoint_step": step,
                     "last_logged_step": max((r["step"] for r in self.rows[-1]), default=None)}
        click.echo(f"killed (SIGKILL) at {at:.0f} s; resuming from the checkpoint of step {step:,}")
        self.tail.after = step
        self.launch(resume=True)

    def resume_check(self):
        """Train --check-steps steps from a copy of the run directory the kill left, never killed, and compare."""
        if self.kill is None:
            return {"exact": None, "skipped": "no checkpoint had been written when the soak ended, so nothing was "
                                              "killed (a shorter --checkpoint-every after `--`, or a longer soak)"}
        step = self.kill["checkpoint_step"]
        target, check_dir = step + self.check_steps, os.path.join(self.out, "check")
        shutil.rmtree(check_dir, ignore_errors=True)
        shutil.copytree(self.snapshot, check_dir)
        click.echo(f"resume check: {self.check_steps} steps from the checkpoint of step {step:,}, never killed ...")
        reference = launch.Training(launch.train_command(self.corpus, check_dir, self.ranks,
                                                         self.options + ["--max-steps", str(target)], True))
        code = reference.wait()
        if code != 0:
            raise click.ClickException(f"the resume check's run failed (exit status {code}): "
                                       f"{reference.last_line() or 'no message'}")
        check = resume_verdict(launch.read_rows(os.path.join(check_dir, "log.jsonl")), self.rows[1], self.rows[0],
                               step, target)
        check["kernels"] = {"killed": self.sessions[0]["startup"]["kernels"],
                            "resumed": self.sessions[1]["startup"]["kernels"],
                            "reference": reference.startup()["kernels"]}
        return check

    def result(self, check):
        launches = [s["launched_at"] for s in self.sessions]
        span = [s for s in self.samples if s["t"] - launches[s["session"] - 1] >= self.settle]
        return {"rows": self.samples, "sessions": self.sessions, "kill": self.kill, "resume_check": check,
                "wall_seconds": round(self.wall, 2),
                "goals": goals(self.samples, launches, self.settle, self.wall, check),
                "machine_speed": {"cores": self.cores, "sgemm_spread": spread(s.get("sgemm_gflops") for s in span),
                                  "copy_spread": spread(s.get("copy_gbs") for s in span)} if self.yardstick else None}


def line(row):
    """An interval row for the terminal."""
    cps = "-" if row["chars_per_sec"] is None else f"{row['chars_per_sec']:,.0f}"
    rss = "-" if row["rss_mb"] is None else f"{row['rss_mb']:,.0f} MB"
    step = "-" if row["step"] is None else f"{row['step']:,}"
    speed = (f"  machine {row['sgemm_gflops']:,.0f} GFLOP/s, {row['copy_gbs']:.1f} GB/s"
             if row.get("sgemm_gflops") else "")
    shares = ", ".join(f"{p} {100 * row[f'{p}_share']:.1f}%" for p in ("eval", "checkpoint", "sample")
                       if row[f"{p}_share"])
    return (f"{row['t']:7.0f} s  session {row['session']}  step {step}  {cps} chars/s  RSS {rss}{speed}"
            + (f"  ({shares})" if shares else "") + (f"  [{row['event']}]" if row.get("event") else ""))


def model_options(model, layers, hidden_size, batch_size, seq_len, extra):
    """The options of `fastrnn train`: the model's, those given after `--`."""
    out = ["--model", model, "--num-layers", layers, "--hidden-size", hidden_size]
    for flag, value in (("--batch-size", batch_size), ("--seq-len", seq_len)):
        if value is not None:
            out += [flag, value]
    return [str(a) for a in out] + list(extra)


def corpus_file(path, out):
    """A prepared corpus: `path` itself, or `path` (a text file) prepared into OUT/corpus.h5."""
    import h5py

    if h5py.is_hdf5(path):
        return os.path.abspath(path)
    click.echo(f"preparing {path} ...")
    return common.prepare_corpus(path, os.path.join(out, "corpus.h5"))


def corpus_info(path):
    from fastrnn.corpus import open_corpus

    with open_corpus(path) as c:
        info = c.info()
    keep = ("path", "vocab_size", "dtype", "train_tokens", "val_tokens", "test_tokens")
    return dict({k: info[k] for k in keep}, bytes=os.path.getsize(path))


def commit():
    """The git commit of this checkout (None outside one)."""
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=common.ROOT, capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def print_goals(goals_):
    rows = [dict(goal=name, value=g["value"], threshold=g["threshold"],
                 result={True: "pass", False: "FAIL", None: "not evaluated"}[g["passed"]])
            for name, g in goals_.items()]
    click.echo(common.format_table(rows, [("goal", "goal", "s"), ("value", "value", lambda v: f"{v:.4g}"),
                                          ("threshold", "threshold", lambda v: f"{v:g}"),
                                          ("result", "result", "s")]))


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout (benchmarks/ is not part of the "
                 "installed package). TRAIN_OPTIONS after `--` go to `fastrnn train` as they are.")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False), required=True,
              help="A prepared corpus (.h5), or a text file, prepared into --out first.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=60.0, help="Length of the soak.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=60.0,
              help="Seconds between two rows.")
@click.option("--ranks", type=click.IntRange(min=1), default=2,
              help="MPI ranks (1: plain `fastrnn train`; more: under the mpiexec beside this Python).")
@options.train_shape()
@click.option("--kill-at", type=click.FloatRange(min=0, min_open=True), default=None,
              show_default="a moment of the middle third, drawn from --seed",
              help="Seconds into the soak to kill -9 the training (later if it has no checkpoint yet).")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of the kill moment.")
@click.option("--settle", type=click.FloatRange(min=0), default=300.0,
              help="Seconds after each launch before the rows the goals judge.")
@click.option("--check-steps", type=click.IntRange(min=1), default=100,
              help="Steps after the kill's checkpoint that the resume check compares.")
@click.option("--out", type=click.Path(file_okay=False), default=None, show_default="a temporary directory, removed",
              help="Directory for the run (run/), its copy at the kill (killed/) and the resume check (check/).")
@options.json_output("Write machine, settings, interval rows, sessions, the kill, the resume check and the goals "
                     "to this JSON file (benchmarks.report renders soak*.json as docs/soak.md).")
@click.option("--yardstick/--no-yardstick", default=True, show_default=True,
              help="Measure the machine's own speed with every row (sgemm GFLOP/s, copy GB/s), the training stopped "
                   "meanwhile.")
@click.argument("train_options", nargs=-1, type=click.UNPROCESSED)
@options.catch_user_errors
def main(corpus, minutes, interval, ranks, model, layers, hidden_size, batch_size, seq_len, kill_at, seed, settle,
         check_steps, out, yardstick, json_path, train_options):
    kill_at = kill_moment(minutes, seed) if kill_at is None else kill_at
    if kill_at >= minutes * 60:
        raise click.BadParameter(f"{kill_at:g} s is not inside the soak of {minutes * 60:g} s", param_hint="--kill-at")
    if ranks > 1 and not os.path.exists(launch.MPIEXEC):
        raise click.ClickException(f"no mpiexec beside {sys.executable} for --ranks {ranks}: pip install -e "
                                   f"'.[mpi]'")
    machine = common.machine_info()
    workdir = out or tempfile.mkdtemp(prefix="fastrnn-soak-")
    try:
        os.makedirs(workdir, exist_ok=True)
        corpus = corpus_file(corpus, workdir)
        train_opts = model_options(model, layers, hidden_size, batch_size, seq_len, train_options)
        soak = Soak(corpus, workdir, ranks, train_opts, minutes, interval, kill_at, settle, check_steps, yardstick)
        data = soak.result(soak.run())
        data.update(machine=machine, fastrnn=__import__("fastrnn").__version__, commit=commit(),
                    argv="python -m benchmarks.soak " + shlex.join(sys.argv[1:]),
                    corpus=corpus_info(corpus), command=data["sessions"][0]["command"],
                    settings=dict(minutes=minutes, interval=interval, ranks=ranks, settle=settle, seed=seed,
                                  kill_at=round(kill_at, 2), check_steps=check_steps, train_options=train_opts,
                                  yardstick=yardstick))
    finally:
        if out is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if data["resume_check"].get("skipped"):
        click.echo(f"resume check skipped: {data['resume_check']['skipped']}")
    print_goals(data["goals"])
    if json_path:
        common.write_json(json_path, data)
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    main()
