"""Time to quality: the validation bits/char each model reaches in a fixed wall-clock budget of training.

    python -m benchmarks.time_to_quality [--corpus FILE] [--budget 240] [--models rnn:1:512,lstm:1:512,...]
                                         [--backends numba,numpy] [--json PATH]

Runs from a checkout (benchmarks/ is not part of the installed package); `--help` lists every option.

The corpus (default: ../shared/data/gutenberg-novels.txt beside the checkout, else the bundled tiny Shakespeare) is
prepared once into a temporary directory. Each model (cell:layers:hidden) and backend then trains in its own
`fastrnn train` subprocess with `--max-time BUDGET` (the wall clock of the run: its start-up, training and the
final evaluation) and the same data, batch, sequence length, optimizer and seed (after a 2-step warm-up run that
fills numba's cache, so compilation is not charged to the budget); the validation loss is measured once, at the
end, on the first --eval-tokens tokens of the val split, within the budget. A row reports the val loss in nats/char and bits/char, the
steps and characters trained, and chars/s. The summary names the model and backend with the best val bits/char.
"""

import math
import os
import subprocess
import tempfile
import time

import click

from benchmarks import common, options
from fastrnn import cells

MODELS = "rnn:1:512,lstm:1:512,gru:1:512,lstm:2:256,rnn:1:128"
fastrnn_cmd = common.fastrnn_cmd


def parse_models(text):
    """'rnn:1:512,lstm:2:256' -> [('rnn', 1, 512), ('lstm', 2, 256)]."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3 or parts[0] not in cells.names():
            raise click.BadParameter(f"{item!r} is not CELL:LAYERS:HIDDEN (e.g. lstm:2:256)", param_hint="--models")
        try:
            layers, hidden = int(parts[1]), int(parts[2])
        except ValueError:
            raise click.BadParameter(f"{item!r}: LAYERS and HIDDEN must be integers", param_hint="--models")
        if layers < 1 or hidden < 1:
            raise click.BadParameter(f"{item!r}: LAYERS and HIDDEN must be >= 1", param_hint="--models")
        out.append((parts[0], layers, hidden))
    return out


def final_state(run_dir):
    """The training state of a finished run's checkpoint (step, elapsed seconds, best_val: with --eval-every 0 the
    one evaluation, at the end)."""
    from fastrnn import checkpoint

    return checkpoint.load(os.path.join(run_dir, checkpoint.CHECKPOINT_NAME)).state


def train_one(corpus_h5, run_dir, cell, layers, hidden, backend, budget, settings):
    """One budgeted run, after a 2-step warm-up run of the same model (which fills numba's cache and the dispatch
    measurements, so the budget is spent training); returns its row."""
    _train(corpus_h5, run_dir, cell, layers, hidden, backend, ["--max-steps", 2], settings)
    return _train(corpus_h5, run_dir, cell, layers, hidden, backend, ["--max-time", budget], settings, budget)


def _train(corpus_h5, run_dir, cell, layers, hidden, backend, limit, settings, budget=None):
    cmd = fastrnn_cmd("train", corpus_h5, "-o", run_dir, "--force", "--model", cell, "--num-layers", layers,
                      "--hidden-size", hidden, "--backend", backend, *limit,
                      "--batch-size", settings["batch_size"], "--seq-len", settings["seq_len"],
                      "--threads", settings["threads"], "--eval-every", 0, "--eval-tokens", settings["eval_tokens"],
                      "--log-every", 50, "--seed", settings["seed"], "--init", settings["init"], "--quiet")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise click.ClickException(f"{cell}:{layers}:{hidden} {backend}: fastrnn train failed "
                                   f"({proc.stderr.strip().splitlines()[-1:] or proc.returncode})")
    if budget is None:
        return None
    return result_row(final_state(run_dir), settings["batch_size"], settings["seq_len"],
                      dict(model=cell, layers=layers, hidden=hidden, backend=backend, budget_s=budget), wall)


def result_row(state, batch_size, seq_len, fields, wall):
    """A row from a finished run's checkpoint state: `fields`, then the best val loss in nats and bits per char
    (NaN where no evaluation ran), the steps and chars trained, chars/s (None where the budget left no time to
    train a step: nothing to divide), the training and wall seconds."""
    loss = state.best_val
    loss = float(loss) if isinstance(loss, (int, float)) and math.isfinite(loss) else float("nan")
    step = int(state.step or 0)
    chars = step * batch_size * seq_len
    train_seconds = float(state.elapsed or 0.0)
    return dict(fields, val_loss=loss, val_bpc=loss / math.log(2), steps=step, chars=chars,
                chars_per_sec=chars / train_seconds if step and train_seconds > 0 else None,
                train_seconds=train_seconds, wall_seconds=wall)


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout (benchmarks/ is not part of the "
                 "installed package).")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text corpus (default: ../shared/data/gutenberg-novels.txt if present, else tiny Shakespeare).")
@click.option("--budget", type=click.FloatRange(min=1), default=240.0, help="Seconds of training per run.")
@click.option("--models", default=MODELS, help="Models as CELL:LAYERS:HIDDEN, comma-separated.")
@click.option("--backends", type=options.CommaList(str, ("numba", "numpy")), default="numba,numpy",
              help="Backends, comma-separated.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Streams per minibatch N of every run.")
@click.option("--seq-len", type=click.IntRange(min=1), default=50, help="Time steps per minibatch T of every run.")
@click.option("--eval-tokens", type=click.IntRange(min=1), default=200_000,
              help="Val tokens scored at the end of each run.")
@click.option("--init", type=click.Choice(["auto", "normal", "xavier", "orthogonal"]), default="xavier",
              help="Weight initialisation of every run.")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Random seed of every run.")
@options.threads(2)
@options.json_output("Write machine, settings, rows and the best row to this JSON file.")
@options.catch_user_errors
def main(corpus, budget, models, backends, batch_size, seq_len, eval_tokens, init, seed, threads, json_path):
    models = parse_models(models)
    corpus = corpus or common.default_corpus()
    settings = dict(batch_size=batch_size, seq_len=seq_len, eval_tokens=eval_tokens, init=init, seed=seed,
                    threads=threads)
    machine = common.machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastrnn-ttq-") as tmp:
        corpus_h5 = common.prepare_corpus(corpus, os.path.join(tmp, "corpus.h5"))
        for cell, layers, hidden in models:
            for backend in backends:
                print(f"{cell}:{layers}:{hidden} {backend}: training {budget:g} s ...", flush=True)
                rows.append(train_one(corpus_h5, os.path.join(tmp, f"run-{cell}-{layers}-{hidden}-{backend}"),
                                      cell, layers, hidden, backend, budget, settings))
    finite = [r for r in rows if math.isfinite(r["val_bpc"])]
    best = min(finite, key=lambda r: r["val_bpc"]) if finite else None
    print(common.format_table(rows, [("model", "model", "s"), ("L", "layers", "d"), ("H", "hidden", "d"),
                                     ("backend", "backend", "s"), ("budget s", "budget_s", ".0f"),
                                     ("steps", "steps", ",d"), ("chars/s", "chars_per_sec", ",.0f"),
                                     ("val nats/char", "val_loss", ".4f"), ("val bpc", "val_bpc", ".4f")]))
    if best:
        print(f"best in {budget:g} s: {best['model']} L{best['layers']} H{best['hidden']} ({best['backend']}) "
              f"at {best['val_bpc']:.4f} bits/char")
    if json_path:
        common.write_json(json_path, dict(machine=machine, corpus=os.path.basename(corpus), budget_s=budget,
                                          settings=settings, rows=rows, best=best))
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
