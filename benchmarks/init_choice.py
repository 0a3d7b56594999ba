"""Which initialisation learns best per cell: the val loss after a fixed number of steps, per init, corpus and seed.

    python -m benchmarks.init_choice [--cells rnn,lstm,gru] [--inits normal,xavier,orthogonal] [--steps 300]
                                     [--seeds 0,1,2] [--corpus FILE ...] [--json PATH]

Runs from a checkout (benchmarks/ is not part of the installed package); `--help` lists every option.

Each corpus (default: the bundled tiny Shakespeare and the first 3 MB of ../shared/data/gutenberg-novels.txt when
it is beside the checkout) is prepared once into a temporary directory. Every cell, init and seed then trains
in-process for --steps steps at the configuration of the issue that asked for it (H128, batch 32, seq 50, Adam lr
0.002, clip 5), and the val loss is measured once at the end on the first --eval-tokens val tokens. Losses at
equal steps are deterministic for a seed and thread count, so the machine's load does not change them. A row per
(cell, init, corpus) reports the mean and standard deviation over the seeds; the summary names, per cell, the init
with the lowest mean over corpora, which is what `--init auto` should choose.
"""

import os
import statistics
import tempfile

import click

from benchmarks import common

GUTENBERG, SHAKESPEARE = common.GUTENBERG, common.SHAKESPEARE


def _csv(kind):
    return lambda ctx, param, value: [kind(v) for v in value.split(",") if v.strip()]


def prepared(paths, prefix_bytes, tmp):
    """{name: CORPUS.h5} for each text file, its first `prefix_bytes` bytes (whole characters) prepared."""
    from fastrnn.corpus import prepare

    out = {}
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(prefix_bytes)
        src = os.path.join(tmp, name + ".txt")
        with open(src, "w", encoding="utf-8") as f:
            f.write(text)
        out[name] = os.path.join(tmp, name + ".h5")
        prepare([src], out[name])
    return out


def final_val(corpus, run_dir, cell, init, seed, steps, eval_tokens, threads):
    from fastrnn.train import train

    summary = train(corpus, run_dir, dict(model=cell, init=init, seed=seed, hidden_size=128, batch_size=32,
                                          seq_len=50, optimizer="adam", lr=2e-3, clip=5.0, max_steps=steps,
                                          eval_every=0, eval_tokens=eval_tokens, log_every=steps,
                                          checkpoint_every=0, threads=threads))
    return summary["val_loss"]


@click.command()
@click.option("--cells", default="rnn,lstm,gru", show_default=True, callback=_csv(str), help="Cells to measure.")
@click.option("--inits", default="normal,xavier,orthogonal", show_default=True, callback=_csv(str),
              help="Initialisations to compare (fastrnn train --init).")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Training steps per run.")
@click.option("--seeds", default="0,1,2", show_default=True, callback=_csv(int), help="Seeds per configuration.")
@click.option("--corpus", "corpora", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Text files (default: tiny Shakespeare, and the Gutenberg novels when beside the checkout).")
@click.option("--prefix-mb", type=click.FloatRange(min=0.01), default=3.0, show_default=True,
              help="Use the first this many MB of each corpus.")
@click.option("--eval-tokens", type=click.IntRange(min=0), default=50_000, show_default=True,
              help="Val tokens scored at the end (0: the whole val split).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads per run (losses depend on it only through float sums).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the results here.")
def main(cells, inits, steps, seeds, corpora, prefix_mb, eval_tokens, threads, json_path):
    corpora = list(corpora) or [SHAKESPEARE] + ([GUTENBERG] if os.path.exists(GUTENBERG) else [])
    rows, runs = [], []
    with tempfile.TemporaryDirectory(prefix="fastrnn-init-") as tmp:
        data = prepared(corpora, int(prefix_mb * 2**20), tmp)
        for cell in cells:
            for init in inits:
                for name, corpus in data.items():
                    vals = []
                    for seed in seeds:
                        run = os.path.join(tmp, f"{cell}-{init}-{name}-{seed}")
                        vals.append(final_val(corpus, run, cell, init, seed, steps, eval_tokens, threads))
                        runs.append(dict(cell=cell, init=init, corpus=name, seed=seed, val_loss=vals[-1]))
                    rows.append(dict(cell=cell, init=init, corpus=name, seeds=len(vals),
                                     val_mean=statistics.fmean(vals),
                                     val_sd=statistics.stdev(vals) if len(vals) > 1 else 0.0))
                    click.echo(f"{cell:5s} {init:10s} {name:20s} val {rows[-1]['val_mean']:.4f} "
                               f"+- {rows[-1]['val_sd']:.4f} ({len(vals)} seeds)", err=True)
    best = {}
    for cell in cells:
        means = {init: statistics.fmean(r["val_mean"] for r in rows if r["cell"] == cell and r["init"] == init)
                 for init in inits}
        best[cell] = min(means, key=means.get)
    click.echo(common.format_table(rows, [("cell", "cell", "s"), ("init", "init", "s"), ("corpus", "corpus", "s"),
                                           ("seeds", "seeds", "d"), ("val mean", "val_mean", ".4f"),
                                           ("sd", "val_sd", ".4f")]))
    click.echo("best init per cell (lowest mean val loss over corpora): "
               + ", ".join(f"{c}: {i}" for c, i in best.items()))
    if json_path:
        common.write_json(json_path, dict(benchmark="init_choice", machine=common.machine_info(),
                                          config=dict(hidden_size=128, batch_size=32, seq_len=50, optimizer="adam",
                                                      lr=2e-3, clip=5.0, steps=steps, eval_tokens=eval_tokens,
                                                      threads=threads, prefix_mb=prefix_mb),
                                          rows=rows, runs=runs, best=best))


if __name__ == "__main__":
    main()
