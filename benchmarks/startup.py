"""Start-up and checkpoint writes of `fastrnn train` on a large corpus: the time from the launch to the first
training step, and the time of each checkpoint write.

    python -m benchmarks.startup --corpus linux.h5 [--model lstm] [--layers 2] [--hidden-size 512]
                                 [--batch-size N] [--seq-len T] [--ranks 1] [--repeats 3] [--checkpoints 3]
                                 [--cold] [--json FILE] [-- TRAIN OPTIONS...]

Runs from a checkout (benchmarks/ is not part of the installed package); `--help` lists every option.

Each repeat launches `fastrnn train` with stderr a pipe (benchmarks.launch; `mpiexec -n RANKS` for --ranks > 1)
into a new run directory, for 10 x --checkpoints + 5 steps with a checkpoint every 10 steps, and reads train's own
lines and log.jsonl: the seconds from the launch to its `model` line (imports done, the corpus opened and its ids
checked in one pass, the kernels planned, the model made), to the start of the first step and to its end (the
chunks the streams start in CRC-checked, then the step: numba's cache loaded or the kernels compiled); the CPU
seconds of its processes by then (user + system: a busy machine stretches the wall time, not these); and the
seconds of each checkpoint write (the checkpoint_seconds of the progress row after it). --cold drops the corpus
file's pages from the OS page cache before each launch (posix_fadvise DONTNEED, for every reader of the file),
so that its pass over the ids reads the disk (or a virtual machine's host cache). --measure-plans gives each
launch an empty FASTRNN_CACHE_DIR, so that it times the kernel plans of its shape as the first run of that shape on
a machine does (fastrnn.kernels.dispatch). Goal: the first step ends within 10 s of the launch.
"""

import os
import resource
import statistics
import tempfile

import click

from benchmarks import common, launch, options
from benchmarks.soak import commit, corpus_info, model_options

EVERY = 10  # steps between checkpoints
GOAL = 10.0  # seconds from the launch to the end of the first step


def drop_cache(path):
    """Drop the pages of file `path` from the OS page cache (where the OS has posix_fadvise)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_launch(corpus, run_dir, ranks, train_opts, checkpoints, cold, plans_dir=None):
    """The row of one launch: start-up times, each checkpoint write, the checkpoint's size, wall and CPU seconds.
    plans_dir: an empty FASTRNN_CACHE_DIR for the launch (None: the user's)."""
    if cold:
        drop_cache(corpus)
    env = None if plans_dir is None else dict(os.environ, FASTRNN_CACHE_DIR=plans_dir)
    steps = EVERY * checkpoints + EVERY // 2
    ours = ["--max-steps", steps, "--checkpoint-every", EVERY, "--log-every", EVERY // 2, "--eval-every", 0,
            "--eval-tokens", 2000]  # the final evaluation: one minibatch
    cpu = children_cpu()
    training = launch.Training(launch.train_command(corpus, run_dir, ranks, [str(a) for a in ours] + train_opts), env)
    code = training.wait()
    wall, cpu = training.seconds(), children_cpu() - cpu
    if code != 0:
        raise click.ClickException(f"fastrnn train failed (exit status {code}): {training.last_line() or '?'}")
    rows = launch.read_rows(os.path.join(run_dir, "log.jsonl"))
    writes = [s for r in rows for s in r.get("checkpoint_seconds", ())]
    size = os.path.getsize(os.path.join(run_dir, "checkpoint.h5"))
    return dict(training.startup(), cold=cold, measure_plans=plans_dir is not None, steps=steps,
                checkpoint_seconds=writes, checkpoint_mb=size / 2**20, wall_seconds=wall, cpu_seconds=cpu)


COLUMNS = [("cold", "cold", lambda v: "yes" if v else "no"),
           ("plans timed", "measure_plans", lambda v: "yes" if v else "no"),
           ("to model line s", "to_start_line", ".2f"),
           ("to first step s", "to_first_step", ".2f"), ("first step done s", "to_first_step_done", ".2f"),
           ("first step s", "first_step_seconds", ".2f"), ("CPU s then", "cpu_seconds_to_first_step_done", ".2f"),
           ("checkpoint writes s", "checkpoint_seconds", lambda v: ", ".join(f"{s:.3f}" for s in v)),
           ("checkpoint MB", "checkpoint_mb", ".1f")]


def summary(rows):
    done = [r["to_first_step_done"] for r in rows if r["to_first_step_done"] is not None]
    writes = [s for r in rows for s in r["checkpoint_seconds"]]
    worst = max(done) if done else None
    return {"median_to_first_step_done": statistics.median(done) if done else None,
            "max_to_first_step_done": worst, "median_checkpoint_seconds": statistics.median(writes) if writes else None,
            "max_checkpoint_seconds": max(writes) if writes else None,
            "goal": {"value": worst, "threshold": GOAL, "passed": None if worst is None else worst <= GOAL,
                     "what": "seconds from the launch to the end of the first step, the slowest repeat"}}


def section(name, data):
    """The part of docs/benchmarks.md of a startup*.json result (benchmarks.report)."""
    from benchmarks.report import md_table, pass_fail

    s, c, g = data.get("settings") or {}, data.get("corpus") or {}, (data.get("summary") or {}).get("goal") or {}
    how = (f"`fastrnn train {' '.join(s.get('train_options') or [])}` on {os.path.basename(c.get('path', '-'))} "
           f"({c.get('train_tokens', 0):,} training tokens, {c.get('bytes', 0) / 2**30:.2f} GiB), {s.get('ranks', 1)} "
           f"rank(s), {len(data['rows'])} launch(es)" + (", each after the corpus was dropped from the page cache"
                                                        if s.get("cold") else "") + ".")
    worst = "-" if g.get("value") is None else f"{g['value']:.2f} s"
    return [f"### {name}", "", how, "", md_table(data["rows"], COLUMNS), "",
            f"Goal: the first step done within {g.get('threshold', GOAL):g} s of the launch: "
            f"{pass_fail(g.get('passed'))} (the slowest: {worst}).", ""]


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout (benchmarks/ is not part of the "
                 "installed package). TRAIN_OPTIONS after `--` go to `fastrnn train` as they are.")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False), required=True,
              help="A prepared corpus (.h5).")
@options.train_shape()
@click.option("--ranks", type=click.IntRange(min=1), default=1,
              help="MPI ranks (1: plain `fastrnn train`; more: under the mpiexec beside this Python).")
@options.repeats(3, help="Launches, one after the other.")
@click.option("--checkpoints", type=click.IntRange(min=1), default=3, help="Checkpoint writes timed per launch.")
@click.option("--cold", is_flag=True, help="Drop the corpus file from the OS page cache before each launch.")
@click.option("--measure-plans", is_flag=True,
              help="An empty FASTRNN_CACHE_DIR for each launch: the kernel plans are timed, as on a first run.")
@options.json_output("Write machine, settings, one row per launch and the summary to this JSON file.")
@click.argument("train_options", nargs=-1, type=click.UNPROCESSED)
@options.catch_user_errors
def main(corpus, model, layers, hidden_size, batch_size, seq_len, ranks, repeats, checkpoints, cold, measure_plans,
         json_path, train_options):
    import h5py

    if not h5py.is_hdf5(corpus):
        raise click.ClickException(f"{corpus} is not a prepared corpus (fastrnn prepare TEXT --output CORPUS.h5)")
    if ranks > 1 and not os.path.exists(launch.MPIEXEC):
        raise click.ClickException(f"no mpiexec beside the Python running this for --ranks {ranks}: pip install "
                                   f"-e '.[mpi]'")
    machine = common.machine_info()
    train_opts = model_options(model, layers, hidden_size, batch_size, seq_len, train_options)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastrnn-startup-") as tmp:
        for i in range(repeats):
            plans = os.path.join(tmp, f"plans{i}") if measure_plans else None
            rows.append(one_launch(os.path.abspath(corpus), os.path.join(tmp, f"run{i}"), ranks, train_opts,
                                   checkpoints, cold, plans))
    click.echo(common.format_table(rows, COLUMNS))
    result = summary(rows)
    worst = result["max_to_first_step_done"]
    click.echo("no launch said its first step was done" if worst is None else
               f"first step done {worst:.2f} s after the launch at most (goal <= {GOAL:g} s): "
               f"{'pass' if result['goal']['passed'] else 'FAIL'}")
    if json_path:
        common.write_json(json_path, dict(machine=machine, fastrnn=__import__("fastrnn").__version__,
                                          commit=commit(), corpus=corpus_info(corpus), rows=rows, summary=result,
                                          settings=dict(ranks=ranks, repeats=repeats, checkpoints=checkpoints,
                                                        cold=cold, measure_plans=measure_plans,
                                                        train_options=train_opts)))
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    main()
