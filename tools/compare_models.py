"""Train rnn, gru and lstm with the same budget on one corpus and draw what the seeds ask to compare: the loss
curves, and the gradient magnitude through time of rnn vs lstm.

    python -m tools.compare_models [CORPUS.h5 or text file] --out docs/models [--steps 3000] [--hidden-size 256]
                                   [--models rnn,gru,lstm] [--num-layers 1] [--backend numba]

Every model gets the same budget: the same number of steps of the same minibatches (same batch size, sequence
length, optimizer, learning rate and seed), the same hidden size. It writes OUT/runs/<model>/ (ordinary run
directories: `fastrnn sample OUT/runs/lstm` works), OUT/losses.png (`fastrnn plot` of all runs),
OUT/gradients.png (`fastrnn plot-gradients` of rnn and lstm on the same text), OUT/summary.json, and prints a
markdown table: model, parameters, final validation loss (nats and bits per char), training time.
Default corpus: the bundled tiny Shakespeare. Runs from a checkout (tools/ is not part of the installed package).
"""

import json
import math
import os
import sys
import tempfile
from types import SimpleNamespace

import click
import numpy as np

from benchmarks import options
from fastrnn import cells
from fastrnn.api import load_model
from fastrnn.cli.types import SEED, Finite
from fastrnn.corpus import open_corpus, prepare
from fastrnn.errors import VocabError
from fastrnn.plots import gradient_through_time, plot_gradients, plot_losses
from fastrnn.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(ROOT, "fastrnn", "data", "tinyshakespeare.txt")
GRADIENT_TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet "
                 "is the sun.")


def corpus_path(path, work):
    if path.endswith(".h5"):
        return path
    out = os.path.join(work, "corpus.h5")
    prepare([path], out, force=True)
    return out


def gradient_text(corpus):
    """GRADIENT_TEXT if the corpus has all its characters, else the first 96 characters of the corpus."""
    with open_corpus(corpus) as c:
        try:
            c.vocab.encode(GRADIENT_TEXT)
            return GRADIENT_TEXT
        except VocabError:
            return c.vocab.decode(np.asarray(c.split("train")[:96], dtype=np.int32))


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout (tools/ is not part of the installed "
                 "package). CORPUS: a prepared CORPUS.h5 or a text file  [default: the bundled tiny Shakespeare]")
@click.argument("corpus", required=False, default=BUNDLED, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default="docs/models",
              help="Folder for runs/<model>/, losses.png, gradients.png and summary.json.")
@click.option("--models", type=options.CommaList(str, cells.names()), default="rnn,gru,lstm",
              help="Cells to train, comma-separated.")
@click.option("--steps", type=click.IntRange(min=1), default=3000, help="Training steps of every model.")
@click.option("--hidden-size", type=click.IntRange(min=1), default=256, help="Hidden size H of every model.")
@click.option("--num-layers", type=click.IntRange(min=1), default=1, help="Layers L of every model.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, help="Sequences per minibatch N.")
@click.option("--seq-len", type=click.IntRange(min=1), default=50, help="Time steps per minibatch T.")
@click.option("--lr", type=Finite(min=0, min_open=True), default=2e-3, help="Learning rate.")
@click.option("--eval-every", type=click.IntRange(min=0), default=250, help="Steps between validation passes.")
@click.option("--backend", type=click.Choice(["numba", "numpy"]), default="numba", help="Backend of every run.")
@click.option("--seed", type=SEED, default=0, help="Random seed (initialization and minibatch order).")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="Threads for each run (0: all cores).")
@options.catch_user_errors
def main(**kwargs):
    """The rows of the summary table (also in OUT/summary.json)."""
    return compare(SimpleNamespace(**kwargs))


def compare(args):
    """Train every model of args (the command's options as attributes), draw, write summary.json, print the table.
    Returns the rows."""
    models = list(args.models)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        corpus = corpus_path(args.corpus, work)
        os.makedirs(args.out, exist_ok=True)
        for name in models:
            run = os.path.join(args.out, "runs", name)
            options = dict(model=name, num_layers=args.num_layers, hidden_size=args.hidden_size,
                           batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, max_steps=args.steps,
                           eval_every=args.eval_every, checkpoint_every=0, log_every=50, backend=args.backend,
                           seed=args.seed, threads=args.threads)
            print(f"training {name} for {args.steps} steps ...", file=sys.stderr, flush=True)
            summary = train(corpus, run, options, force=True)
            model, _, _ = load_model(run)
            rows.append(dict(model=name, layers=args.num_layers, hidden=args.hidden_size,
                             parameters=int(model.layout.size), steps=summary["step"], val_loss=summary["val_loss"],
                             best_val=summary["best_val"], val_bpc=summary["val_loss"] / math.log(2),
                             train_loss=summary["loss"], seconds=summary["elapsed"]))
        plot_losses([(r["model"], os.path.join(args.out, "runs", r["model"])) for r in rows],
                    os.path.join(args.out, "losses.png"))
        pair = [m for m in ("rnn", "lstm") if m in models] or models[:2]
        grads = []
        loaded = []
        text = gradient_text(corpus)
        for name in pair:
            model, vocab, _ = load_model(os.path.join(args.out, "runs", name))
            loaded.append((f"{name} H={args.hidden_size}", model.P, vocab))
            norms = gradient_through_time(model.P, vocab, text)
            grads.append(dict(model=name, first=float(norms[0]), last=float(norms[-1]),
                              ratio_first_to_last=float(norms[0] / norms[-1])))
        plot_gradients(loaded, text, os.path.join(args.out, "gradients.png"))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(dict(options=dict(vars(args), models=",".join(models)), rows=rows, gradients=grads,
                       gradient_text=text), f, indent=1)

    print("| model | layers | H | parameters | steps | val loss (nats/char) | val bits/char | train time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['layers']} | {r['hidden']} | {r['parameters']:,} | {r['steps']} | "
              f"{r['val_loss']:.4f} | {r['val_bpc']:.3f} | {r['seconds']:.0f} s |")
    best = min(rows, key=lambda r: r["val_loss"])
    for r in rows:
        if r is not best:
            print(f"{best['model']} ends {r['val_loss'] - best['val_loss']:.4f} nats/char "
                  f"({100 * (1 - best['val_loss'] / r['val_loss']):.1f}%) below {r['model']}")
    for g in grads:
        print(f"{g['model']}: |dL/dh| {len(text) - 2} steps back is {g['ratio_first_to_last']:.3g}x "
              f"its value at the predicted character")
    return rows


if __name__ == "__main__":
    main()
